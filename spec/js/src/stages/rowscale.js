// Stage `rowscale` (spec/stages/rowscale.md): row r of `values` (its slice at index r of the first axis) times
// 2^e_r, e_r the r-th symbol of `exponents`. Since 2^e >= 1 is a power of two, the product is exact unless it
// overflows to +/-infinity; zeros and infinities keep their bits, and NaN elements are never written back (a
// Float32Array or Float64Array store could canonicalize their payload). dcf-js does not encode rowscale.
import { FormatError, LimitError } from '../errors.js';
import { isMap } from '../mp.js';
import { checkConfig, intIn, oneOf } from './config.js';

const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);
const MAX_ALPHABET = 16; // exponents 0..15

/**
 * The 16-bit pattern `h` of a binary float with `mbits` mantissa bits (F16: 10, BF16: 7, both with the sign in bit
 * 15) times 2^e, exactly (IEEE 754 multiplication by a power of two: exact unless it overflows, then +/-infinity).
 * Infinities and NaNs come back unchanged, so do zeros.
 */
export function scaleHalfBits(h, e, mbits) {
  const emax = (0x7fff >>> mbits); // all-ones exponent field: infinities and NaNs
  const mmask = (1 << mbits) - 1;
  const sign = h & 0x8000;
  let E = (h >>> mbits) & emax;
  let m = h & mmask;
  if (E === emax || e === 0) return h;
  if (E === 0) {
    if (m === 0) return h; // +/-0
    while (e > 0 && m <= mmask) { m <<= 1; e--; } // a subnormal: double the significand until it is normal
    if (m <= mmask) return sign | m; // still subnormal (e used up)
    E = 1;
    m &= mmask;
  }
  E += e;
  if (E >= emax) return sign | (emax << mbits); // overflow: +/-infinity
  return sign | (E << mbits) | m;
}

function scaleRows(data, dtype, exps, rows, rowLen) {
  if (dtype === 'F16' || dtype === 'BF16') {
    const mbits = dtype === 'F16' ? 10 : 7;
    for (let r = 0; r < rows; r++) {
      const e = exps[r];
      if (e === 0) continue;
      for (let i = r * rowLen, end = i + rowLen; i < end; i++) data[i] = scaleHalfBits(data[i], e, mbits);
    }
    return;
  }
  // F32, F64: the product in float64 is exact (an F32 or F64 value times 2^15 never leaves float64's range, except
  // an F64 overflow, which is then infinity as IEEE 754 gives), and the store into a Float32Array rounds it to
  // nearest: the exact value when it is finite in float32, else +/-infinity.
  for (let r = 0; r < rows; r++) {
    const e = exps[r];
    if (e === 0) continue;
    const f = 2 ** e;
    for (let i = r * rowLen, end = i + rowLen; i < end; i++) {
      const v = data[i];
      if (v === v) data[i] = v * f; // NaN (v !== v) is left as it lies, payload and all
    }
  }
}

export function rowscaleDecode(values, exponents, meta, ctx = {}) {
  if (!isMap(meta) || Object.keys(meta).length !== 0) throw new FormatError('rowscale: its meta must be empty');
  const { dtype, shape } = values;
  if (!FLOATS.has(dtype) || shape.length < 1) {
    throw new FormatError(`rowscale: values must be a float tensor of rank >= 1, got ${dtype} of shape ${JSON.stringify(shape)}`);
  }
  const A = exponents.alphabet, exps = exponents.data;
  if (A > MAX_ALPHABET) throw new FormatError(`rowscale: exponents must be symbols of an alphabet of at most ${MAX_ALPHABET}, got alphabet ${A}`);
  const rows = shape[0];
  if (exps.length !== rows) throw new FormatError(`rowscale: ${exps.length} exponents for a tensor of ${rows} rows`);
  for (let r = 0; r < rows; r++) {
    if (exps[r] >= A) throw new FormatError(`rowscale: exponent ${exps[r]} of row ${r} is outside the alphabet of ${A}`);
  }
  const src = values.data;
  if (ctx.outputLimit !== undefined && src.byteLength > ctx.outputLimit) {
    throw new LimitError(`rowscale: ${src.byteLength} bytes of output over the decode bound ${ctx.outputLimit}`);
  }
  // A copy of the bytes (the input may be a view of the file's bytes: never scaled in place), so no NaN goes
  // through a JS number.
  const out = new src.constructor(src.length);
  new Uint8Array(out.buffer).set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
  const rowLen = rows === 0 ? 0 : out.length / rows;
  scaleRows(out, dtype, exps, rows, rowLen);
  return { kind: 'dense', dtype, shape: shape.slice(), data: out };
}

export const rowscale = {
  id: 'rowscale',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'values', kind: 'dense' }, { name: 'exponents', kind: 'symbols' }],
  decode([values, exponents], meta, config, ctx) {
    checkConfig('rowscale', config, { shift: intIn(1, 15), by: oneOf('unseen', 'output') });
    return rowscaleDecode(values, exponents, meta, ctx);
  },
};
