/* libdcf internals: the msgpack tree, the handle, the per-tensor decode context and the lazy streams. */
#ifndef DCF_INTERNAL_H
#define DCF_INTERNAL_H

#include <stdarg.h>
#include <string.h>

#include "dcf.h"

#define MIB ((uint64_t)1 << 20)
#define MAX_SAFE_INT 9007199254740991LL /* 2^53 - 1 */
#define NONE UINT32_MAX                /* "no node" */

/* ---- msgpack (mp.c): a parsed object is a flat array of nodes in pre-order ---- */
enum { MP_NIL, MP_BOOL, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARR, MP_MAP };

typedef struct {
    uint8_t t;     /* MP_* */
    uint32_t n;    /* str/bin length, array/map item count */
    uint32_t next; /* index of the node after this one's subtree */
    uint32_t off;  /* str/bin: byte offset of the payload */
    union {
        int64_t i; /* int, bool */
        double f;
    } v;
} mp_node;

typedef struct {
    const uint8_t *buf;
    uint32_t len;
    mp_node *nodes;
    uint32_t count;
} mp_tree;

/* ---- the handle ---- */
typedef struct {
    uint32_t name;    /* str node in the index tree */
    uint64_t offset;  /* record start */
    uint64_t reclen;  /* record map length */
    uint64_t total;   /* record + chunks */
    uint32_t crc;
} dcf_entry;

struct dcf_file {
    dcf_allocator al;
    dcf_limits lim;
    const uint8_t *mem; /* whole file (memory mode), else NULL */
    uint64_t size;
    dcf_read_fn read;
    void *read_ctx;
    void *fp;           /* FILE* owned by dcf_open_path (when the file cannot be mapped) */
    void *map;          /* the file mapped by dcf_open_path (then mem == map), unmapped by dcf_close */
    uint8_t *index_buf; /* owned copy of the index (reader mode) */
    mp_tree index;
    uint32_t chains;    /* the chains array node */
    uint32_t nchains;
    dcf_entry *entries;
    size_t ntensors;
    char **names;       /* NUL-terminated copies of the names, for dcf_info */
    uint32_t crc[8][256];
};

/* ---- decoding one tensor ---- */
enum { K_BYTES, K_SYMBOLS, K_DENSE };

typedef struct dec dec;
typedef struct stream stream;

struct stream {
    int kind;
    const uint8_t *name;
    uint32_t name_len;
    const char *stage; /* the stage that produces it ("stored" for stored streams) */
    /* bytes */
    uint64_t size;
    const uint8_t *data;                        /* contiguous bytes, if available */
    int (*fill)(dec *d, stream *s, uint8_t *dst); /* produce all `size` bytes into dst */
    uint32_t chunks_node;                       /* stored streams: the chunk length array */
    uint64_t chunk_pos;                         /* stored streams: offset of the first chunk header in the region */
    /* stored streams: bytes [off, off + n) read on demand (used where `data` is NULL: read callback mode, or
     * several chunks) */
    int (*read_at)(dec *d, stream *s, uint64_t off, uint8_t *dst, size_t n);
    uint32_t at_node;                           /* read_at's place: a chunk length node, */
    uint64_t at_off, at_pos;                    /* its first byte in the stream, its header in the region */
    /* symbols */
    uint64_t count;
    uint64_t alphabet;
    /* dense */
    dcf_dtype dtype;
    uint32_t ndim;
    const mp_tree *shape_tree; /* shape array node in a tree; NONE: 1-D of `count` elements */
    uint32_t shape_node;
    /* symbols and dense: the elements are pulled in order */
    uint64_t pos;                                       /* elements produced so far */
    int (*pull)(dec *d, stream *s, void *dst, size_t n); /* the next n elements: symbols of sym_width(alphabet)
                                                            bytes each (native order), or dtype items */
    void *st;                                           /* the stage's state */
    stream *in[2];
};

struct dec {
    dcf_file *f;
    dcf_error *err;
    const char *name;
    uint64_t bound;     /* the decode bound B of FORMAT.md 8 */
    uint64_t work;      /* working memory in use */
    const uint8_t *region; /* the tensor's record and chunks (read callback mode: its record only) */
    uint64_t region_off;   /* the region's offset in the file */
    mp_tree rec;
    stream *made;       /* the streams the stages gave, in creation order */
    size_t nmade;
    void **allocs;      /* everything allocated for this tensor, freed at the end */
    size_t nallocs, cap_allocs;
};

/* errors (container.c) */
int dcf_fail(dcf_error *err, int code, const char *fmt, ...);
int dfail(dec *d, int code, const char *fmt, ...);
/* allocation for one tensor: `work` counts against max_work, data against the decode bound (container.c) */
void *dec_alloc(dec *d, uint64_t size, int work, const char *stage);
uint32_t dcf_crc32(const dcf_file *f, uint32_t crc, const uint8_t *p, size_t n);
/* a contiguous view of a bytes stream (materialized if needed) */
int bytes_view(dec *d, stream *s, const uint8_t **out);
/* bytes [off, off + n) of a bytes stream (off + n <= size): from its view, or read on demand (read_at) */
int bytes_read(dec *d, stream *s, uint64_t off, uint8_t *dst, size_t n);

/* msgpack (mp.c) */
int mp_parse(dcf_file *f, dcf_error *err, const char *what, const uint8_t *buf, uint64_t len, mp_tree *tree);
void mp_free(dcf_file *f, mp_tree *tree);
uint32_t mp_get(const mp_tree *t, uint32_t map, const char *key); /* value node or NONE */
int mp_str_is(const mp_tree *t, uint32_t node, const char *s);
static inline const mp_node *N(const mp_tree *t, uint32_t i) { return &t->nodes[i]; }
static inline int mp_is_int(const mp_tree *t, uint32_t i) { return i != NONE && t->nodes[i].t == MP_INT; }
static inline int mp_is_num(const mp_tree *t, uint32_t i) {
    return i != NONE && (t->nodes[i].t == MP_INT || t->nodes[i].t == MP_FLOAT);
}
static inline double mp_num(const mp_tree *t, uint32_t i) {
    return t->nodes[i].t == MP_INT ? (double)t->nodes[i].v.i : t->nodes[i].v.f;
}
static inline uint32_t mp_first(uint32_t i) { return i + 1; }
static inline uint32_t mp_after(const mp_tree *t, uint32_t i) { return t->nodes[i].next; }

/* dtypes (container.c) */
int dtype_parse(const mp_tree *t, uint32_t node, dcf_dtype *out);
int dtype_is_float(dcf_dtype d);
/* a shape array (<= 32 non-negative ints): element count into *n; 0 on success, 1 if malformed, 2 if > 2^52 */
int shape_check(const mp_tree *t, uint32_t node, uint64_t *n);

/* stages (stages.c, huffman.c, rans.c) */
typedef struct {
    const char *id;
    int version;
    int takes; /* bit mask of 1 << K_* */
    int nout;
    int out_kind[2];
    int (*check_config)(dec *d, const mp_tree *t, uint32_t config); /* config may be NONE */
    /* config is a node of the index tree `ct` (or NONE), meta a map node of the record tree d->rec */
    int (*decode)(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out);
    const char *unsupported; /* non-NULL: why this build cannot decode it (check_config and decode are then
                                never called, and may be NULL) */
} stage_def;

const stage_def *stage_find(const mp_tree *t, uint32_t id_node);
int huffman_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out);
int rans_decode(dec *d, const mp_tree *ct, uint32_t config, uint32_t meta, stream **ins, stream *out);
int check_count_alphabet(dec *d, const char *stage, uint32_t meta, uint64_t *count, uint64_t *alphabet);
int huffman_check_config(dec *d, const mp_tree *ct, uint32_t config);
int rans_check_config(dec *d, const mp_tree *ct, uint32_t config);
int rans_simd(void); /* the rANS decoder's vector path: 0 none, 1 AVX2, 2 AVX-512 (rans.c) */
/* a stored config against a table of parameters (stages.c) */
typedef struct {
    const char *key;
    int type; /* P_INT, P_NUM, P_STR */
    double lo, hi;
    int nullable, finite, open_lo;
    const char *const *names; /* P_STR: NULL-terminated */
} param;
enum { P_INT, P_NUM, P_STR };
int check_params(dec *d, const char *stage, const mp_tree *ct, uint32_t config, const param *ps, int np);
#define BLOCK 4096 /* elements per pull of a stage's input */

/* The bytes per element of a symbols stream: the spec's width (1 byte for alphabets up to 256, 2 up to 2^16; raw
 * symbols of larger alphabets 4), so a decoder writes no more than the symbols take. */
static inline int sym_width(uint64_t alphabet) { return alphabet <= 256 ? 1 : alphabet <= 65536 ? 2 : 4; }

/* Symbol i of a block of width-w symbols. */
static inline uint32_t sym_get(const void *p, int w, size_t i) {
    return w == 1 ? ((const uint8_t *)p)[i] : w == 2 ? ((const uint16_t *)p)[i] : ((const uint32_t *)p)[i];
}

static inline uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
