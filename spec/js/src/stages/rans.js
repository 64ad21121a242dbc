// Stage `rans` (spec/stages/rans.md): static order-0 rANS, K interleaved 32-bit lanes, 16-bit words.
// dcf-js decodes rans; it does not encode it.
import { FormatError, LimitError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { checkConfig, intIn } from './config.js';

const L = 65536; // lowest state: the encoder's initial one and the decoder's final one
const MAX_STEPS = 65536;

function readMeta(meta) {
  if (!isMap(meta)) throw new FormatError('rans: meta is not a map');
  const N = meta.count, A = meta.alphabet;
  if (!isInt(N) || N < 0) throw new FormatError(`rans: bad count ${N}`);
  if (!isInt(A) || A < 1 || A > 65536) throw new FormatError(`rans: alphabet ${A} outside 1..2^16`);
  return { N, A };
}

/** A reader of shortest-form LEB128 varints of at most 3 bytes. */
function varints(data, pos) {
  const r = { pos };
  r.next = (what) => {
    let v = 0;
    for (let k = 0; k < 3; k++) {
      if (r.pos >= data.length) throw new FormatError(`rans: ${what}: the stream ends inside a varint`);
      const b = data[r.pos++];
      v += (b & 127) * 2 ** (7 * k);
      if (b < 128) {
        if (k > 0 && b === 0) throw new FormatError(`rans: ${what}: a varint not in shortest form`);
        return v;
      }
    }
    throw new FormatError(`rans: ${what}: a varint longer than 3 bytes`);
  };
  return r;
}

/** A reader of Exp-Golomb codes, LSB-first from byte `start` (at most 16 bits after the leading 1). */
function golomb(data, start) {
  let p = 8 * start;
  const end = 8 * data.length;
  const bit = () => {
    if (p >= end) throw new FormatError('rans: frequency table: the stream ends inside its codes');
    const b = (data[p >>> 3] >>> (p & 7)) & 1;
    p++;
    return b;
  };
  return {
    next(order) {
      let z = 0;
      while (bit() === 0) {
        z++;
        if (z + order > 16) throw new FormatError('rans: frequency table: a code longer than allowed');
      }
      let w = 1;
      for (let i = 0; i < z + order; i++) w = w * 2 + bit();
      return w - 2 ** order;
    },
    finish() { // the padding bits up to the next byte MUST be zero
      while (p & 7) if (bit() !== 0) throw new FormatError('rans: frequency table: the padding bits are not zero');
      return p >>> 3;
    },
  };
}

export function ransDecode(data, meta, ctx = {}) {
  const { N, A } = readMeta(meta);
  const Out = A <= 256 ? Uint8Array : Uint16Array;
  // The decode bound is checked where the count is declared, before the stream is read (FORMAT.md 8).
  if (ctx.outputLimit !== undefined && N * Out.BYTES_PER_ELEMENT > ctx.outputLimit) {
    throw new LimitError(`rans: ${N} symbols of ${Out.BYTES_PER_ELEMENT} bytes over the decode bound ${ctx.outputLimit}`);
  }
  if (N === 0) {
    if (data.length !== 0) throw new FormatError('rans: non-empty stream for 0 symbols');
    return { kind: 'symbols', alphabet: A, data: new Out(0) };
  }
  if (data.length < 1) throw new FormatError('rans: empty stream for a non-zero count');
  const n = data[0];
  if (n < 1 || n > 16) throw new FormatError(`rans: scale bits ${n} outside 1..16`);
  const total = 2 ** n;
  const rd = varints(data, 1);
  const D = rd.next('symbol count');
  if (D < 1 || D > Math.min(A, total, N)) throw new FormatError(`rans: ${D} distinct symbols for ${N} symbols, alphabet ${A}, total 2^${n}`);
  if (rd.pos >= data.length || data[rd.pos] > 15) throw new FormatError('rans: no Exp-Golomb order, or one above 15');
  const order = data[rd.pos];
  const bits = golomb(data, rd.pos + 1);
  const sym = new Uint32Array(D), f = new Uint32Array(D), cum = new Uint32Array(D);
  let s = -1, sum = 0;
  for (let i = 0; i < D; i++) {
    s += 1 + bits.next(0);
    sym[i] = Math.min(s, 2 ** 31);
    f[i] = bits.next(order) + 1;
    cum[i] = Math.min(sum, 2 ** 31);
    sum += f[i];
  }
  rd.pos = bits.finish();
  if (s >= A) throw new FormatError(`rans: frequency table names symbol ${s}, the alphabet is ${A}`);
  if (sum !== total) throw new FormatError(`rans: frequencies sum to ${sum}, not 2^${n}`);
  const K = rd.next('lane count');
  if (K < 1 || K > N || Math.ceil(N / K) > MAX_STEPS) throw new FormatError(`rans: ${K} lanes for ${N} symbols`);
  const left = data.length - rd.pos;
  if (left < 4 * K || (left - 4 * K) % 2) throw new FormatError(`rans: ${left} bytes do not hold ${K} states and 16-bit words`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const x = new Float64Array(K);
  for (let j = 0; j < K; j++) {
    x[j] = dv.getUint32(rd.pos + 4 * j, true);
    if (x[j] < L) throw new FormatError(`rans: lane ${j} state ${x[j]} is below 2^16`);
  }
  const wordsAt = rd.pos + 4 * K;
  const W = (left - 4 * K) / 2;
  const slotIdx = new Uint32Array(total);
  for (let i = 0; i < D; i++) slotIdx.fill(i, cum[i], cum[i] + f[i]);
  const out = new Out(N);
  let next = 0;
  for (let i = 0; i < N; i++) {
    const j = i % K;
    let xj = x[j];
    const slot = xj % total; // states stay below 2^32: exact in doubles
    const k = slotIdx[slot];
    out[i] = sym[k];
    xj = f[k] * Math.floor(xj / total) + slot - cum[k];
    if (xj < L) {
      if (next >= W) throw new FormatError(`rans: the lanes need more than the stream's ${W} words (truncated)`);
      xj = xj * 65536 + dv.getUint16(wordsAt + 2 * next, true);
      next++;
    }
    x[j] = xj;
  }
  if (next !== W) throw new FormatError(`rans: ${W - next} of ${W} words left unread`);
  for (let j = 0; j < K; j++) {
    if (x[j] !== L) throw new FormatError('rans: a lane does not end in the encoder\'s initial state 2^16 (damaged stream)');
  }
  return { kind: 'symbols', alphabet: A, data: out };
}

export const rans = {
  id: 'rans',
  version: 1,
  takes: ['symbols'],
  outputs: [{ name: 'data', kind: 'bytes' }],
  decode([input], meta, config, ctx) {
    checkConfig('rans', config, { scale_bits: intIn(1, 16), lanes: intIn(1, 2 ** 20) });
    return ransDecode(input.data, meta, ctx);
  },
};
