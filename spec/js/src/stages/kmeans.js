// Stage `kmeans` (spec/stages/kmeans.md): decoding is a codebook lookup copying raw element bytes; the encoder is a
// plain 1-D Lloyd k-means (linear init) keeping the invariants of the page's Encoding step 7.
import { FormatError, LimitError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { checkConfig, intIn, oneOf, orNull } from './config.js';
import { DTYPES, bitsView } from '../dtypes.js';

const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);

function checkMeta(meta) {
  if (!isMap(meta)) throw new FormatError('kmeans: meta is not a map');
  const { dtype, shape, codebook } = meta;
  if (!FLOATS.has(dtype)) throw new FormatError(`kmeans: dtype ${JSON.stringify(dtype)} is not F64, F32, F16 or BF16`);
  if (!Array.isArray(shape) || shape.length > 32) throw new FormatError('kmeans: shape missing or over 32 dimensions');
  let count = 1;
  for (const d of shape) {
    if (!isInt(d) || d < 0) throw new FormatError(`kmeans: bad dimension ${d}`);
    count *= d;
  }
  if (!(codebook instanceof Uint8Array)) throw new FormatError('kmeans: codebook missing or not bin');
  const s = DTYPES[dtype].size;
  if (codebook.length % s !== 0) throw new FormatError(`kmeans: codebook of ${codebook.length} bytes for itemsize ${s}`);
  const K = codebook.length / s;
  if (K < 1 || K > 65536) throw new FormatError(`kmeans: ${K} codebook entries (1..65536)`);
  return { dtype, shape, codebook, count, K };
}

const CONFIG = {
  bits: orNull(intIn(1, 16)),
  clusters: orNull(intIn(1, 65536)),
  init: oneOf('compander', 'linear', 'density', 'random', 'kmeans++'),
  max_iter: intIn(0, 2 ** 20),
  tol: (v) => typeof v === 'number' && v >= 0 && Number.isFinite(v),
  seed: intIn(0, Number.MAX_SAFE_INTEGER),
  method: oneOf('refine', 'lloyd', 'optimal'),
  weighting: oneOf('none', 'activation', 'fisher'),
};

export function checkKmeansConfig(config) {
  const c = checkConfig('kmeans', config, CONFIG);
  if (c.bits !== undefined && c.bits !== null && c.clusters !== undefined && c.clusters !== null) {
    throw new FormatError('kmeans: stored config gives both bits and clusters');
  }
}

export function kmeansDecode(indices, meta, ctx = {}) {
  const { dtype, shape, codebook, count, K } = checkMeta(meta);
  const idx = indices.data;
  if (idx.length !== count) throw new FormatError(`kmeans: ${idx.length} indices for ${count} elements`);
  for (let i = 0; i < idx.length; i++) if (idx[i] >= K) throw new FormatError(`kmeans: index ${idx[i]} at ${i} not below ${K}`);
  const bytes = count * DTYPES[dtype].size;
  if (ctx.outputLimit !== undefined && bytes > ctx.outputLimit) throw new LimitError(`kmeans: ${bytes} bytes of output over the decode bound ${ctx.outputLimit}`);
  const T = DTYPES[dtype].array;
  const book = new T(codebook.slice().buffer);           // aligned copy of the K values
  const out = new T(count);
  const src = bitsView(book), dst = bitsView(out);
  const bw = src.words, ow = dst.words;
  if (src.k === 1) {
    for (let i = 0; i < count; i++) ow[i] = bw[idx[i]];
  } else {
    for (let i = 0; i < count; i++) { const j = 2 * idx[i]; ow[2 * i] = bw[j]; ow[2 * i + 1] = bw[j + 1]; }
  }
  return { kind: 'dense', dtype, shape: shape.slice(), data: out };
}

// float64 -> dtype, round to nearest even, as the raw value stored in a typed array of the dtype.
const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function roundBF16(v) {
  f32[0] = v;                       // to float32 first (the page: BF16 from float32)
  const b = u32[0];
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
function bf16ToFloat(h) {
  u32[0] = h << 16;
  return f32[0];
}

function toFloat64(input) {
  const { dtype, data } = input;
  if (dtype === 'F64') return data;
  if (dtype === 'F32') return Float64Array.from(data);
  if (dtype === 'BF16') return Float64Array.from(data, bf16ToFloat);
  throw new FormatError(`kmeans: dcf-js does not encode ${dtype} (F64, F32 and BF16 only)`);
}

function isNegZero(v) {
  return v === 0 && 1 / v < 0;
}

export function kmeansEncode(input, config) {
  const { dtype, shape } = input;
  if (!FLOATS.has(dtype)) throw new FormatError(`kmeans: dtype ${dtype} is not a float dtype`);
  const c = isMap(config) ? config : {};
  const k = c.clusters ?? 2 ** (c.bits ?? 8);
  const maxIter = c.max_iter ?? 300;
  if (!isInt(k) || k < 1 || k > 65536) throw new FormatError(`kmeans: ${k} clusters outside 1..65536`);
  const x = toFloat64(input);
  const n = x.length;
  const T = DTYPES[dtype].array;
  const round = dtype === 'F64' ? (v) => v : dtype === 'F32' ? Math.fround : roundBF16;
  const widen = dtype === 'BF16' ? bf16ToFloat : (v) => v;
  const meta = (book) => ({ dtype, shape: shape.slice(), codebook: new Uint8Array(book.buffer, book.byteOffset, book.byteLength) });
  if (n === 0) return { outputs: [{ kind: 'symbols', alphabet: 1, data: new Uint16Array(0) }], meta: meta(new T(1)) };
  for (let i = 0; i < n; i++) if (!Number.isFinite(x[i])) throw new FormatError('kmeans: NaN or infinite value');
  const xs = Float64Array.from(x).sort();
  // Distinct values (-0.0 before +0.0 as distinct entries when both occur).
  const distinct = [];
  for (let i = 0; i < n; i++) if (i === 0 || xs[i] !== xs[i - 1]) distinct.push(xs[i]);
  const hasNeg0 = x.some(isNegZero), hasPos0 = x.some((v) => v === 0 && !isNegZero(v));
  let cents;
  if (distinct.length + (hasNeg0 && hasPos0 ? 1 : 0) <= k) {
    cents = [];
    for (const v of distinct) {
      if (v === 0) { if (hasNeg0) cents.push(-0); if (hasPos0) cents.push(0); } else cents.push(v);
    }
    const book = new T(cents.length);
    cents.forEach((v, j) => { book[j] = dtype === 'BF16' ? roundBF16(v) : v; });
    const sym = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      const v = x[i];
      let lo = 0, hi = cents.length - 1;
      while (lo < hi) {                       // first entry >= v, then -0/+0 by sign
        const mid = (lo + hi) >> 1;
        if (cents[mid] < v) lo = mid + 1; else hi = mid;
      }
      if (v === 0 && hasNeg0 && hasPos0 && !isNegZero(v)) lo++;
      sym[i] = lo;
    }
    return { outputs: [{ kind: 'symbols', alphabet: cents.length, data: sym }], meta: meta(book) };
  }
  // Lloyd on the sorted values with prefix sums; linear init; an empty cluster keeps its centroid.
  const lo = xs[0], hi = xs[n - 1];
  cents = Float64Array.from({ length: k }, (_, j) => (k === 1 ? lo : lo + ((hi - lo) * j) / (k - 1)));
  const prefix = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) prefix[i + 1] = prefix[i] + xs[i];
  const firstAtLeast = (v) => { let a = 0, b = n; while (a < b) { const m = (a + b) >> 1; if (xs[m] < v) a = m + 1; else b = m; } return a; };
  let bounds = null;
  for (let it = 0; it < maxIter; it++) {
    cents.sort();
    const nb = new Int32Array(k + 1);
    nb[k] = n;
    for (let j = 1; j < k; j++) nb[j] = firstAtLeast((cents[j - 1] + cents[j]) / 2);
    if (bounds && nb.every((b, j) => b === bounds[j])) break;
    bounds = nb;
    for (let j = 0; j < k; j++) if (nb[j + 1] > nb[j]) cents[j] = (prefix[nb[j + 1]] - prefix[nb[j]]) / (nb[j + 1] - nb[j]);
  }
  // Round to the dtype, sort, dedupe, assign to the nearest (midpoint -> upper), drop unused entries.
  const rounded = [...new Set(Array.from(cents, (v) => widen(round(v))))].sort((a, b) => a - b);
  const mids = rounded.slice(1).map((v, j) => (rounded[j] + v) / 2);
  const raw = new Uint32Array(n);
  const used = new Uint8Array(rounded.length);
  for (let i = 0; i < n; i++) {
    let a = 0, b = mids.length;
    while (a < b) { const m = (a + b) >> 1; if (mids[m] <= x[i]) a = m + 1; else b = m; }
    raw[i] = a;
    used[a] = 1;
  }
  const renum = new Int32Array(rounded.length);
  const kept = [];
  for (let j = 0; j < rounded.length; j++) if (used[j]) { renum[j] = kept.length; kept.push(rounded[j]); }
  const book = new T(kept.length);
  kept.forEach((v, j) => { book[j] = dtype === 'BF16' ? roundBF16(v) : v; });
  const sym = new Uint16Array(n);
  for (let i = 0; i < n; i++) sym[i] = renum[raw[i]];
  return { outputs: [{ kind: 'symbols', alphabet: kept.length, data: sym }], meta: meta(book) };
}

export const kmeans = {
  id: 'kmeans',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'indices', kind: 'symbols' }],
  decode([indices], meta, config, ctx) {
    checkKmeansConfig(config);
    return kmeansDecode(indices, meta, ctx);
  },
  encode(input, config) {
    return kmeansEncode(input, config);
  },
};
