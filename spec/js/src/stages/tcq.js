// Stage `tcq` (spec/stages/tcq.md): trellis-coded quantization with four states. Every run of R elements (C order)
// walks the trellis from state 0; states 0-1 take their next symbol from stream q0 (levels0, codebook0), states 2-3
// from q1, and the parity of the level read moves the run on. Decoding copies codebook bit patterns (no value goes
// through a JS number, so F16/BF16 patterns and NaN payloads are kept). dcf-js does not encode tcq.
import { FormatError, LimitError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { checkConfig, oneOf, orNull } from './config.js';
import { DTYPES, bitsView, checkShape } from '../dtypes.js';

const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);
const MAX_RUN = 4096; // elements per trellis run
const MAX_LEVELS = 65536; // levels (and codebook entries) per quantizer
// NEXT[σ][k & 1], flattened as NEXT[2σ + (k & 1)]: the run's state after a level k decoded in state σ.
const NEXT = Uint8Array.from([0, 2, 2, 0, 1, 3, 3, 1]);

const positive = (v) => typeof v === 'number' && v > 0 && Number.isFinite(v);

const CONFIG = {
  step: orNull(positive),
  rel_step: orNull(positive),
  rate_weight: (v) => typeof v === 'number' && v >= 0 && Number.isFinite(v),
  weighting: oneOf('none', 'activation', 'fisher', 'auto'),
};

export function checkTcqConfig(config) {
  const c = checkConfig('tcq', config, CONFIG);
  if (((c.step ?? null) === null) === ((c.rel_step ?? null) === null)) {
    throw new FormatError('tcq: stored config must give exactly one of step and rel_step');
  }
}

/**
 * Quantizer z's table from meta: levels`z` (1..65536 little-endian int32 values, strictly increasing) and
 * codebook`z` (as many values of `dtype`). Returns {count, parity: Uint8Array (level & 1), book: typed array (an
 * aligned copy)}. The byte lengths are checked before anything is read or allocated from them.
 */
function table(meta, z, dtype) {
  const levels = meta[`levels${z}`], codebook = meta[`codebook${z}`];
  if (!(levels instanceof Uint8Array) || !(codebook instanceof Uint8Array)) {
    throw new FormatError(`tcq: levels${z} and codebook${z} must be bin`);
  }
  if (levels.length % 4 !== 0 || levels.length === 0 || levels.length / 4 > MAX_LEVELS) {
    throw new FormatError(`tcq: levels${z} of ${levels.length} bytes is not 1 to ${MAX_LEVELS} int32 values`);
  }
  const count = levels.length / 4;
  const view = new DataView(levels.buffer, levels.byteOffset, levels.length); // any alignment, little-endian
  const parity = new Uint8Array(count);
  let prev = 0;
  for (let j = 0; j < count; j++) {
    const k = view.getInt32(4 * j, true);
    if (j > 0 && k <= prev) throw new FormatError(`tcq: levels${z} are not strictly increasing (${prev} then ${k} at ${j})`);
    parity[j] = k & 1; // k mod 2 as two's complement k & 1, negative k included
    prev = k;
  }
  const { size, array: T } = DTYPES[dtype];
  if (codebook.length !== count * size) {
    throw new FormatError(`tcq: codebook${z} of ${codebook.length} bytes does not hold ${count} values of ${dtype}`);
  }
  return { count, parity, book: new T(codebook.slice().buffer) };
}

/** Decoding steps 1-3 of the page: q0 and q1 are symbols streams, meta the application's meta. */
export function tcqDecode(q0, q1, meta, ctx = {}) {
  // Step 1: meta and streams, each against the others; unknown meta keys are ignored.
  if (!isMap(meta)) throw new FormatError('tcq: meta is not a map');
  const { dtype, shape, run } = meta;
  if (!FLOATS.has(dtype)) throw new FormatError(`tcq: dtype ${JSON.stringify(dtype)} is not F64, F32, F16 or BF16`);
  const n = checkShape(shape, 'tcq');
  if (!isInt(run) || run < 1 || run > MAX_RUN) throw new FormatError(`tcq: run ${JSON.stringify(run)} is not an integer from 1 to ${MAX_RUN}`);
  const tables = [table(meta, 0, dtype), table(meta, 1, dtype)];
  const q = [q0.data, q1.data];
  for (let z = 0; z < 2; z++) {
    const s = q[z], U = tables[z].count;
    for (let i = 0; i < s.length; i++) {
      if (s[i] >= U) throw new FormatError(`tcq: q${z} holds symbol ${s[i]} at ${i}, its quantizer has ${U} levels`);
    }
  }
  if (q[0].length + q[1].length !== n) {
    throw new FormatError(`tcq: shape ${JSON.stringify(shape)} holds ${n} values, the streams ${q[0].length} + ${q[1].length}`);
  }
  const bytes = n * DTYPES[dtype].size;
  if (ctx.outputLimit !== undefined && bytes > ctx.outputLimit) {
    throw new LimitError(`tcq: ${bytes} bytes of output over the decode bound ${ctx.outputLimit}`);
  }
  // Step 2: the decoding order, t = 0..R-1 and for each t the runs that have an element t, every run from state 0.
  const out = new DTYPES[dtype].array(n);
  const dst = bitsView(out);
  const ow = dst.words, k = dst.k; // k words per element (8-byte dtypes: 2)
  const books = tables.map((tb) => bitsView(tb.book).words);
  const parities = tables.map((tb) => tb.parity);
  const R = run;
  const M = Math.ceil(n / R); // runs (0 for an empty tensor)
  const last = n - (M - 1) * R; // elements of the last run
  const state = new Uint8Array(M);
  const pos = [0, 0];
  for (let t = 0; t < R && M > 0; t++) {
    const active = t < last ? M : M - 1; // the last run has no element t >= last
    for (let i = 0; i < active; i++) {
      const sigma = state[i];
      const z = sigma >> 1;
      const s = q[z];
      if (pos[z] === s.length) throw new FormatError(`tcq: the trellis needs more symbols from q${z} than it holds (${s.length})`);
      const j = s[pos[z]++];
      const e = i * R + t; // the element's C-order index
      const bw = books[z];
      if (k === 1) ow[e] = bw[j];
      else { ow[2 * e] = bw[2 * j]; ow[2 * e + 1] = bw[2 * j + 1]; }
      state[i] = NEXT[2 * sigma + parities[z][j]];
    }
  }
  // Step 3: the values sit at their C-order indices already; both streams are used up, as their lengths add to n.
  return { kind: 'dense', dtype, shape: shape.slice(), data: out };
}

export const tcq = {
  id: 'tcq',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'q0', kind: 'symbols' }, { name: 'q1', kind: 'symbols' }],
  decode([q0, q1], meta, config, ctx) {
    checkTcqConfig(config);
    return tcqDecode(q0, q1, meta, ctx);
  },
};
