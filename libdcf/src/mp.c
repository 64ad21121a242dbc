/* The msgpack subset of FORMAT.md section 2: a bounded two-pass parser (count and check, then fill a node array)
 * that rejects ext types, non-str or repeated map keys, integers beyond +-(2^53 - 1), nesting over 32 levels, more
 * than 64 + n/8 arrays and maps, invalid UTF-8 and an object that does not fill its bytes exactly. */
#include <stdlib.h>

#include "internal.h"

#define MAX_DEPTH 32

typedef struct {
    uint32_t node;  /* the container's node */
    uint64_t left;  /* items (keys and values) still to read */
    int is_map;
    int key_next;   /* the next item is a key */
} frame;

static uint64_t be(const uint8_t *p, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; i++) v = v << 8 | p[i];
    return v;
}

/* Is p[0..n) valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF)? */
static int utf8_ok(const uint8_t *p, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) { i++; continue; }
        int k;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; }
        else return 0;
        if (n - i < (uint64_t)k + 1) return 0;
        for (int j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += (uint64_t)k + 1;
    }
    return 1;
}

/* One pass over buf: check every rule; with nodes != NULL also fill them. Returns the node count via *count. */
static int walk(dcf_error *err, const char *what, const uint8_t *b, uint64_t n, mp_node *nodes, uint32_t *count) {
    frame stack[MAX_DEPTH];
    int depth = 0;
    uint64_t budget = 64 + n / 8, pos = 0;
    uint32_t k = 0;
    for (;;) {
        if (pos >= n) return dcf_fail(err, DCF_E_FORMAT, "%s: truncated msgpack at byte %llu", what, (unsigned long long)pos);
        frame *top = depth ? &stack[depth - 1] : NULL;
        int is_key = top && top->is_map && top->key_next;
        uint8_t t = b[pos];
        uint64_t left = n - pos;
        mp_node nd = {0};
        uint64_t items = 0;
        int container = 0;
        uint64_t size = 1; /* bytes of this scalar, or the container's header */
        if (t <= 0x7f) { nd.t = MP_INT; nd.v.i = t; }
        else if (t >= 0xe0) { nd.t = MP_INT; nd.v.i = (int8_t)t; }
        else if (t <= 0x8f) { container = 2; items = t & 0x0f; }
        else if (t <= 0x9f) { container = 1; items = t & 0x0f; }
        else if (t <= 0xbf) { nd.t = MP_STR; nd.n = t & 0x1f; size = 1 + nd.n; nd.off = (uint32_t)pos + 1; }
        else {
            static const uint8_t hdr[32] = {0, 0, 0, 0, 2, 3, 5, 0, 0, 0, 5, 9, 2, 3, 5, 9,
                                            2, 3, 5, 9, 0, 0, 0, 0, 0, 2, 3, 5, 3, 5, 3, 5};
            if (t == 0xc1) return dcf_fail(err, DCF_E_FORMAT, "%s: invalid msgpack byte 0xc1 at byte %llu", what, (unsigned long long)pos);
            if ((t >= 0xc7 && t <= 0xc9) || (t >= 0xd4 && t <= 0xd8))
                return dcf_fail(err, DCF_E_FORMAT, "%s: msgpack ext type at byte %llu is not allowed in a .dcf file", what, (unsigned long long)pos);
            if (t <= 0xc3) { nd.t = t == 0xc0 ? MP_NIL : MP_BOOL; nd.v.i = t == 0xc3; }
            else {
                size = hdr[t - 0xc0];
                if (left < size) return dcf_fail(err, DCF_E_FORMAT, "%s: truncated msgpack at byte %llu", what, (unsigned long long)pos);
                const uint8_t *p = b + pos + 1;
                switch (t) {
                case 0xc4: case 0xc5: case 0xc6: case 0xd9: case 0xda: case 0xdb: {
                    uint64_t len = be(p, (int)size - 1);
                    nd.t = t <= 0xc6 ? MP_BIN : MP_STR;
                    nd.n = (uint32_t)(len > n ? n : len);
                    nd.off = (uint32_t)(pos + size);
                    if (len > left - size) return dcf_fail(err, DCF_E_FORMAT, "%s: truncated msgpack at byte %llu", what, (unsigned long long)pos);
                    size += len;
                    break;
                }
                case 0xca: { uint32_t u = (uint32_t)be(p, 4); float f; memcpy(&f, &u, 4); nd.t = MP_FLOAT; nd.v.f = f; break; }
                case 0xcb: { uint64_t u = be(p, 8); memcpy(&nd.v.f, &u, 8); nd.t = MP_FLOAT; break; }
                case 0xcc: case 0xcd: case 0xce: case 0xcf: {
                    uint64_t u = be(p, (int)size - 1);
                    if (u > (uint64_t)MAX_SAFE_INT) return dcf_fail(err, DCF_E_FORMAT, "%s: msgpack integer at byte %llu outside +-(2^53 - 1)", what, (unsigned long long)pos);
                    nd.t = MP_INT; nd.v.i = (int64_t)u;
                    break;
                }
                case 0xd0: nd.t = MP_INT; nd.v.i = (int8_t)p[0]; break;
                case 0xd1: nd.t = MP_INT; nd.v.i = (int16_t)be(p, 2); break;
                case 0xd2: nd.t = MP_INT; nd.v.i = (int32_t)be(p, 4); break;
                case 0xd3: {
                    int64_t v = (int64_t)be(p, 8);
                    if (v > MAX_SAFE_INT || v < -MAX_SAFE_INT) return dcf_fail(err, DCF_E_FORMAT, "%s: msgpack integer at byte %llu outside +-(2^53 - 1)", what, (unsigned long long)pos);
                    nd.t = MP_INT; nd.v.i = v;
                    break;
                }
                default: /* 0xdc..0xdf */
                    container = t >= 0xde ? 2 : 1;
                    items = be(p, (int)size - 1);
                }
            }
        }
        if (is_key && (container || nd.t != MP_STR))
            return dcf_fail(err, DCF_E_FORMAT, "%s: map key at byte %llu is not a string", what, (unsigned long long)pos);
        if (!container && size > left) return dcf_fail(err, DCF_E_FORMAT, "%s: truncated msgpack at byte %llu", what, (unsigned long long)pos);
        if (nd.t == MP_STR && !container && !utf8_ok(b + nd.off, nd.n))
            return dcf_fail(err, DCF_E_FORMAT, "%s: string at byte %llu is not UTF-8", what, (unsigned long long)pos);
        uint32_t me = k++;
        if (container) {
            if (budget-- == 0) return dcf_fail(err, DCF_E_FORMAT, "%s: more than %llu arrays and maps in %llu bytes", what, (unsigned long long)(64 + n / 8), (unsigned long long)n);
            if (depth + 1 > MAX_DEPTH) return dcf_fail(err, DCF_E_FORMAT, "%s: arrays and maps nest deeper than %d levels at byte %llu", what, MAX_DEPTH, (unsigned long long)pos);
            if (items > left - size || size > left)
                return dcf_fail(err, DCF_E_FORMAT, "%s: container at byte %llu is truncated or declares more items than bytes left", what, (unsigned long long)pos);
            nd.t = container == 2 ? MP_MAP : MP_ARR;
            nd.n = (uint32_t)items;
        }
        if (nodes) nodes[me] = nd;
        pos += size;
        if (top) top->key_next = top->is_map ? !top->key_next : 0;
        if (container && items) {
            stack[depth].node = me;
            stack[depth].left = container == 2 ? 2 * items : items;
            stack[depth].is_map = container == 2;
            stack[depth].key_next = 1;
            depth++;
            continue;
        }
        if (nodes) nodes[me].next = k;
        while (depth) { /* a value is complete: close every container it completes */
            frame *f = &stack[depth - 1];
            if (--f->left > 0) break;
            if (nodes) nodes[f->node].next = k;
            depth--;
        }
        if (!depth) {
            if (pos != n) return dcf_fail(err, DCF_E_FORMAT, "%s: %llu bytes left after the object at byte %llu", what, (unsigned long long)(n - pos), (unsigned long long)pos);
            *count = k;
            return DCF_OK;
        }
    }
}

static int key_cmp(const void *a, const void *b, const mp_tree *t) {
    const mp_node *x = N(t, *(const uint32_t *)a), *y = N(t, *(const uint32_t *)b);
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return memcmp(t->buf + x->off, t->buf + y->off, x->n);
}

/* Heap sort of key nodes (qsort has no context argument in C99). */
static void sift(uint32_t *k, size_t root, size_t n, const mp_tree *t) {
    for (;;) {
        size_t c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && key_cmp(&k[c], &k[c + 1], t) < 0) c++;
        if (key_cmp(&k[root], &k[c], t) >= 0) return;
        uint32_t tmp = k[root]; k[root] = k[c]; k[c] = tmp;
        root = c;
    }
}

static void sort_keys(uint32_t *k, size_t n, const mp_tree *t) {
    for (size_t i = n / 2; i-- > 0;) sift(k, i, n, t);
    for (size_t end = n; end-- > 1;) {
        uint32_t tmp = k[0]; k[0] = k[end]; k[end] = tmp;
        sift(k, 0, end, t);
    }
}

/* No map repeats a key: small maps pairwise, large ones sorted. */
static int check_keys(dcf_file *f, dcf_error *err, const char *what, const mp_tree *t) {
    for (uint32_t i = 0; i < t->count; i++) {
        const mp_node *m = N(t, i);
        if (m->t != MP_MAP || m->n < 2) continue;
        uint32_t *keys = NULL, small[16];
        if (m->n <= 16) keys = small;
        else if (!(keys = f->al.alloc(f->al.ctx, (size_t)m->n * sizeof *keys)))
            return dcf_fail(err, DCF_E_NOMEM, "%s: out of memory checking a map of %u keys", what, m->n);
        uint32_t k = i + 1;
        for (uint32_t j = 0; j < m->n; j++) { keys[j] = k; k = mp_after(t, mp_after(t, k)); }
        int dup = -1;
        if (m->n <= 16) {
            for (uint32_t a = 0; a < m->n && dup < 0; a++)
                for (uint32_t b = a + 1; b < m->n; b++)
                    if (!key_cmp(&keys[a], &keys[b], t)) { dup = (int)a; break; }
        } else {
            sort_keys(keys, m->n, t);
            for (uint32_t a = 0; a + 1 < m->n; a++)
                if (!key_cmp(&keys[a], &keys[a + 1], t)) { dup = (int)a; break; }
        }
        uint32_t dk = dup >= 0 ? keys[dup] : 0;
        if (keys != small) f->al.free(f->al.ctx, keys);
        if (dup >= 0)
            return dcf_fail(err, DCF_E_FORMAT, "%s: a map repeats the key \"%.*s\"", what, (int)(N(t, dk)->n > 60 ? 60 : N(t, dk)->n),
                            (const char *)t->buf + N(t, dk)->off);
    }
    return DCF_OK;
}

int mp_parse(dcf_file *f, dcf_error *err, const char *what, const uint8_t *buf, uint64_t len, mp_tree *tree) {
    uint32_t count = 0;
    memset(tree, 0, sizeof *tree);
    if (len >= UINT32_MAX) return dcf_fail(err, DCF_E_LIMIT, "%s: %llu bytes of msgpack", what, (unsigned long long)len);
    int rc = walk(err, what, buf, len, NULL, &count);
    if (rc) return rc;
    tree->buf = buf;
    tree->len = (uint32_t)len;
    tree->nodes = f->al.alloc(f->al.ctx, (size_t)count * sizeof(mp_node));
    if (!tree->nodes) return dcf_fail(err, DCF_E_NOMEM, "%s: out of memory for %u msgpack items", what, count);
    tree->count = count;
    if ((rc = walk(err, what, buf, len, tree->nodes, &count)) || (rc = check_keys(f, err, what, tree))) mp_free(f, tree);
    return rc;
}

void mp_free(dcf_file *f, mp_tree *tree) {
    if (tree->nodes) f->al.free(f->al.ctx, tree->nodes);
    tree->nodes = NULL;
    tree->count = 0;
}

int mp_str_is(const mp_tree *t, uint32_t node, const char *s) {
    size_t n = strlen(s);
    return node != NONE && t->nodes[node].t == MP_STR && t->nodes[node].n == n && !memcmp(t->buf + t->nodes[node].off, s, n);
}

uint32_t mp_get(const mp_tree *t, uint32_t map, const char *key) {
    if (map == NONE || t->nodes[map].t != MP_MAP) return NONE;
    uint32_t k = map + 1;
    for (uint32_t j = 0; j < t->nodes[map].n; j++) {
        uint32_t v = mp_after(t, k);
        if (mp_str_is(t, k, key)) return v;
        k = mp_after(t, v);
    }
    return NONE;
}
