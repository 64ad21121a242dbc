// The msgpack subset of FORMAT.md section 2, on top of @msgpack/msgpack.
import { Decoder, Encoder } from '@msgpack/msgpack';
import { FormatError } from './errors.js';

const rejectExt = {
  encode() { return null; },
  decode(_data, type) { throw new FormatError(`msgpack ext type ${type} is not allowed in a .dcf file`); },
};

const decoder = new Decoder({
  useBigInt64: true,
  extensionCodec: rejectExt,
  mapKeyConverter(key) {
    if (typeof key !== 'string') throw new FormatError(`msgpack map key of type ${typeof key}; keys must be strings`);
    return key;
  },
});

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// Integers arrive as number, or as bigint when encoded as (u)int64: bring them back to number if they are within
// +-(2^53 - 1), else reject (section 2).
function normalize(v) {
  if (typeof v === 'bigint') {
    if (v > MAX_SAFE || v < -MAX_SAFE) throw new FormatError(`msgpack integer ${v} outside +-(2^53 - 1)`);
    return Number(v);
  }
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = normalize(v[i]);
    return v;
  }
  if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
    for (const k of Object.keys(v)) v[k] = normalize(v[k]);
    return v;
  }
  return v;
}

export const MAX_DEPTH = 32; // arrays and maps nested in one object, the outermost counting as 1 (FORMAT.md 2)

const utf8 = new TextDecoder('utf-8', { fatal: true });

const LENGTH_BYTES = { 0xc4: 1, 0xd9: 1, 0xc5: 2, 0xda: 2, 0xc6: 4, 0xdb: 4, 0xdc: 2, 0xde: 2, 0xdd: 4, 0xdf: 4 };

// The big-endian length field of the str, bin, array or map header at `pos` (type byte `t`), or -1 if truncated.
function lengthField(b, pos, t) {
  const k = LENGTH_BYTES[t];
  if (pos + 1 + k > b.length) return -1;
  let v = 0;
  for (let i = 1; i <= k; i++) v = v * 256 + b[pos + i];
  return v;
}

// Byte length of the header and payload of the scalar at `pos` whose type byte is `t` (Infinity if truncated).
function scalarSize(b, pos, t) {
  if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) return 1;
  if (t >= 0xa0 && t <= 0xbf) return 1 + (t & 0x1f);
  const fixed = { 0xcc: 2, 0xd0: 2, 0xcd: 3, 0xd1: 3, 0xca: 5, 0xce: 5, 0xd2: 5, 0xcb: 9, 0xcf: 9, 0xd3: 9 }[t];
  if (fixed) return fixed;
  const len = lengthField(b, pos, t);
  return len < 0 ? Infinity : 1 + LENGTH_BYTES[t] + len;
}

// [item count, is map, header length] of the array or map at `pos` (count -1 if truncated), or null for a scalar.
function containerHeader(b, pos, t) {
  if (t >= 0x80 && t <= 0x8f) return [t & 0x0f, true, 1];
  if (t >= 0x90 && t <= 0x9f) return [t & 0x0f, false, 1];
  if (t >= 0xdc && t <= 0xdf) return [lengthField(b, pos, t), t >= 0xde, 1 + LENGTH_BYTES[t]];
  return null;
}

const STR_START = { 0xd9: 2, 0xda: 3, 0xdb: 5 };

/**
 * Walk one msgpack object before decoding it (FORMAT.md 2 and 8.1), without building anything: string map keys
 * only, no key twice in a map, at most MAX_DEPTH levels, at most 64 + n/8 arrays and maps in n bytes, no ext type,
 * and the object fills `b` exactly. Throws FormatError naming the rule and the byte offset.
 */
export function scan(b) {
  const n = b.length;
  let budget = 64 + Math.floor(n / 8);
  const stack = [];
  let pos = 0;
  for (;;) {
    if (pos >= n) throw new FormatError(`truncated msgpack at byte ${pos}`);
    const top = stack[stack.length - 1];
    const isKey = top !== undefined && top.keys !== null && top.idx % 2 === 0;
    const t = b[pos];
    const header = containerHeader(b, pos, t);
    if (isKey && !((t >= 0xa0 && t <= 0xbf) || STR_START[t])) throw new FormatError(`map key at byte ${pos} is not a string`);
    if (header) {
      const [count, isMap] = header;
      if (--budget < 0) throw new FormatError(`more than ${64 + Math.floor(n / 8)} arrays and maps in ${n} bytes`);
      if (stack.length + 1 > MAX_DEPTH) throw new FormatError(`arrays and maps nest deeper than ${MAX_DEPTH} levels at byte ${pos}`);
      if (count < 0 || count > n - pos) throw new FormatError(`container at byte ${pos} is truncated or declares more items than bytes left`);
      pos += header[2];
      if (count > 0) {
        stack.push({ left: isMap ? 2 * count : count, idx: 0, keys: isMap ? new Set() : null });
        continue;
      }
    } else {
      if ((t >= 0xc7 && t <= 0xc9) || (t >= 0xd4 && t <= 0xd8)) throw new FormatError(`msgpack ext type at byte ${pos} is not allowed in a .dcf file`);
      if (t === 0xc1) throw new FormatError(`invalid msgpack byte 0xc1 at byte ${pos}`);
      const size = scalarSize(b, pos, t);
      if (size > n - pos) throw new FormatError(`truncated msgpack at byte ${pos}`);
      if (isKey) {
        const start = t >= 0xa0 && t <= 0xbf ? 1 : STR_START[t];
        let key;
        try {
          key = utf8.decode(b.subarray(pos + start, pos + size));
        } catch {
          throw new FormatError(`map key at byte ${pos} is not UTF-8`);
        }
        if (top.keys.has(key)) throw new FormatError(`a map repeats the key ${JSON.stringify(key)} at byte ${pos}`);
        top.keys.add(key);
      }
      pos += size;
    }
    // a value is complete: close every container it completes
    for (;;) {
      const f = stack[stack.length - 1];
      if (f === undefined) {
        if (pos !== n) throw new FormatError(`${n - pos} bytes left after the object at byte ${pos}`);
        return;
      }
      f.idx++;
      if (--f.left > 0) break;
      stack.pop();
    }
  }
}

/** Decode exactly one msgpack object filling `bytes`; `what` names it in errors. */
export function unpack(bytes, what) {
  try {
    scan(bytes);
  } catch (e) {
    throw new FormatError(`${what}: ${e.message}`);
  }
  let v;
  try {
    v = decoder.decode(bytes);
  } catch (e) {
    if (e instanceof FormatError) throw new FormatError(`${what}: ${e.message}`);
    throw new FormatError(`${what}: malformed msgpack (${e.message})`);
  }
  return normalize(v);
}

const encoder = new Encoder({ ignoreUndefined: true, forceFloat32: false, sortKeys: false });

/** Encode a value with the shortest msgpack encodings (integers as int, other numbers as float 64). */
export function pack(value) {
  return encoder.encode(value);
}

/** Is `v` a msgpack map decoded as a plain object? */
export function isMap(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** Is `v` an integer (msgpack int) within the safe range? */
export function isInt(v) {
  return typeof v === 'number' && Number.isSafeInteger(v);
}
