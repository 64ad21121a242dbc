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

/** Decode exactly one msgpack object filling `bytes`; `what` names it in errors. */
export function unpack(bytes, what) {
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
