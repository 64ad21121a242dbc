// Dtypes of FORMAT.md 4.1 and the typed arrays that hold them (F16/BF16 as their 16-bit patterns, BOOL as 0/1 bytes).
import { FormatError } from './errors.js';

export const DTYPES = {
  F64: { size: 8, array: Float64Array },
  F32: { size: 4, array: Float32Array },
  F16: { size: 2, array: Uint16Array },
  BF16: { size: 2, array: Uint16Array },
  I64: { size: 8, array: BigInt64Array },
  I32: { size: 4, array: Int32Array },
  I16: { size: 2, array: Int16Array },
  I8: { size: 1, array: Int8Array },
  U64: { size: 8, array: BigUint64Array },
  U32: { size: 4, array: Uint32Array },
  U16: { size: 2, array: Uint16Array },
  U8: { size: 1, array: Uint8Array },
  BOOL: { size: 1, array: Uint8Array },
};

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('dcf-js assumes a little-endian host');
}

export function dtypeInfo(dtype, who) {
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPES, dtype)) throw new FormatError(`${who}: unknown dtype ${JSON.stringify(dtype)}`);
  return DTYPES[dtype];
}

/** Validate a shape (array of non-negative safe integers, at most maxDims) and return its element count. */
export function checkShape(shape, who, maxDims = 32) {
  if (!Array.isArray(shape)) throw new FormatError(`${who}: shape is not an array`);
  if (shape.length > maxDims) throw new FormatError(`${who}: ${shape.length} dimensions (limit ${maxDims})`);
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new FormatError(`${who}: bad dimension ${d} in shape`);
    n *= d;
    if (n > 2 ** 52) throw new FormatError(`${who}: shape ${JSON.stringify(shape)} has too many elements`);
  }
  return n;
}

/** View little-endian bytes as a typed array of `dtype` (copies when the offset is not aligned). */
export function bytesToTyped(bytes, dtype) {
  const { size, array } = DTYPES[dtype];
  if (bytes.byteOffset % size === 0) return new array(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
  return new array(bytes.slice().buffer);
}

/** The little-endian bytes of a typed array, as a Uint8Array view. */
export function typedToBytes(arr) {
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

/**
 * An unsigned-integer view of a typed array's bits, so elements can be copied without going through a JS number
 * (which may canonicalize NaN payloads): returns {words, k} with k words per element (8-byte dtypes: two Uint32 words).
 */
export function bitsView(arr) {
  const b = arr.BYTES_PER_ELEMENT;
  const off = arr.byteOffset, len = arr.length;
  if (b === 1) return { words: new Uint8Array(arr.buffer, off, len), k: 1 };
  if (b === 2) return { words: new Uint16Array(arr.buffer, off, len), k: 1 };
  if (b === 4) return { words: new Uint32Array(arr.buffer, off, len), k: 1 };
  return { words: new Uint32Array(arr.buffer, off, len * 2), k: 2 };
}
