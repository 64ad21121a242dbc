// Stage `huffman` (spec/stages/huffman.md): canonical length-limited Huffman code, segmented LSB-first payload.
import { FormatError, LimitError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { checkConfig, intIn } from './config.js';

export const MAX_SEGMENT = 2 ** 16;

function u32(d, o) {
  return (d[o] | (d[o + 1] << 8) | (d[o + 2] << 16) | (d[o + 3] << 24)) >>> 0;
}

function bitreverse(v, n) {
  let r = 0;
  for (let i = 0; i < n; i++) { r = (r << 1) | (v & 1); v >>>= 1; }
  return r;
}

/** Canonical codes from lengths (huffman.md Encoding 6): returns Int32Array code per symbol (-1 if unused). */
function canonical(lengths) {
  const used = [];
  for (let s = 0; s < lengths.length; s++) if (lengths[s] > 0) used.push(s);
  used.sort((a, b) => lengths[a] - lengths[b] || a - b);
  const codes = new Int32Array(lengths.length).fill(-1);
  let code = 0, prev = used.length ? lengths[used[0]] : 0;
  for (const s of used) {
    code <<= lengths[s] - prev;
    codes[s] = code;
    code += 1;
    prev = lengths[s];
  }
  return { used, codes };
}

function readMeta(meta) {
  if (!isMap(meta)) throw new FormatError('huffman: meta is not a map');
  const N = meta.count, A = meta.alphabet;
  if (!isInt(N) || N < 0) throw new FormatError(`huffman: bad count ${N}`);
  if (!isInt(A) || A < 1 || A > 65536) throw new FormatError(`huffman: alphabet ${A} outside 1..2^16`);
  return { N, A };
}

export function huffmanDecode(data, meta, ctx = {}) {
  const { N, A } = readMeta(meta);
  const Out = A <= 256 ? Uint8Array : Uint16Array;
  // The decode bound is checked where the count is declared, before the stream is read (FORMAT.md 8).
  if (ctx.outputLimit !== undefined && N * Out.BYTES_PER_ELEMENT > ctx.outputLimit) {
    throw new LimitError(`huffman: ${N} symbols of ${Out.BYTES_PER_ELEMENT} bytes over the decode bound ${ctx.outputLimit}`);
  }
  if (N === 0) {
    if (data.length !== 0) throw new FormatError('huffman: non-empty stream for 0 symbols');
    return { kind: 'symbols', alphabet: A, data: new Out(0) };
  }
  if (data.length < 4) throw new FormatError('huffman: stream too short for the table size');
  const T = u32(data, 0);
  if (T < 1 || T > A) throw new FormatError(`huffman: table of ${T} entries for alphabet ${A}`);
  if (data.length < 8 + T) throw new FormatError('huffman: stream too short for the table');
  const lengths = data.subarray(4, 4 + T);
  let minlen = 17, maxlen = 0, nused = 0, kraft = 0;
  for (let s = 0; s < T; s++) {
    const l = lengths[s];
    if (l === 0) continue;
    if (l > 16) throw new FormatError(`huffman: code length ${l} above 16`);
    nused++;
    kraft += 2 ** (16 - l);
    if (l < minlen) minlen = l;
    if (l > maxlen) maxlen = l;
  }
  if (nused === 0) throw new FormatError('huffman: table has no used symbol');
  if (nused === 1 ? maxlen !== 1 : kraft !== 65536) throw new FormatError('huffman: code lengths do not form a complete prefix code');
  const S = u32(data, 4 + T);
  if (S < 1 || S > MAX_SEGMENT) throw new FormatError(`huffman: segment size ${S} outside 1..2^16`);
  const K = Math.ceil(N / S);
  const rest = data.length - 8 - T;
  if (4 * K > rest) throw new FormatError(`huffman: stream too short for ${K} segment offsets`);
  const P = rest - 4 * K;
  if (N * minlen > 8 * P) throw new FormatError(`huffman: ${N} symbols cannot fit in ${P} payload bytes`);
  const endsAt = 8 + T;
  const ends = new Float64Array(K);
  let start = 0;
  for (let k = 0; k < K; k++) {
    const e = u32(data, endsAt + 4 * k);
    const nk = k < K - 1 ? S : N - S * (K - 1);
    const size = e - start;
    if (size < Math.ceil((nk * minlen) / 8) || size > Math.ceil((nk * maxlen) / 8)) {
      throw new FormatError(`huffman: segment ${k} of ${size} bytes cannot hold ${nk} codes`);
    }
    ends[k] = e;
    start = e;
  }
  if (ends[K - 1] !== P) throw new FormatError(`huffman: last segment ends at ${ends[K - 1]}, payload is ${P} bytes`);

  // Decode table of 2^maxlen entries, indexed by the next maxlen stream bits (LSB-first): (symbol << 5) | length.
  const { used, codes } = canonical(lengths);
  const size = 1 << maxlen;
  const table = new Uint32Array(size);
  for (const s of used) {
    const l = lengths[s];
    const r = bitreverse(codes[s], l);
    const entry = (s << 5) | l;
    for (let v = r; v < size; v += 1 << l) table[v] = entry;
  }
  // Payload with 3 zero bytes after it: bits past the payload read as zero.
  const pstart = endsAt + 4 * K;
  const buf = new Uint8Array(P + 4);
  buf.set(data.subarray(pstart, pstart + P));
  const mask = size - 1;
  const out = new Out(N);
  let o = 0;
  start = 0;
  for (let k = 0; k < K; k++) {
    const nk = k < K - 1 ? S : N - S * (K - 1);
    const end = ends[k];
    let p = 8 * start;
    for (let i = 0; i < nk; i++) {
      const b = p >>> 3;
      const v = ((buf[b] | (buf[b + 1] << 8) | (buf[b + 2] << 16)) >>> (p & 7)) & mask;
      const e = table[v];
      const l = e & 31;
      if (l === 0) throw new FormatError(`huffman: invalid code in segment ${k}`);
      out[o++] = e >>> 5;
      p += l;
    }
    if (!(p > 8 * (end - 1) && p <= 8 * end)) throw new FormatError(`huffman: segment ${k} codes do not end in its last byte`);
    if ((buf[end - 1] >> (p - 8 * (end - 1))) !== 0) throw new FormatError(`huffman: segment ${k} padding bits are not zero`);
    start = end;
  }
  return { kind: 'symbols', alphabet: A, data: out };
}

/** Optimal code lengths limited to L bits (package-merge) for the used symbols; `freq` is indexed by symbol. */
export function limitedLengths(freq, L) {
  const syms = [];
  for (let s = 0; s < freq.length; s++) if (freq[s] > 0) syms.push(s);
  const lengths = new Uint8Array(freq.length);
  const n = syms.length;
  if (n === 1) { lengths[syms[0]] = 1; return lengths; }
  syms.sort((a, b) => freq[a] - freq[b] || a - b);
  // Nodes: leaves 0..n-1, then packages; weight, left child, right child.
  const cap = n + 2 * n * L;
  const weight = new Float64Array(cap), left = new Int32Array(cap).fill(-1), right = new Int32Array(cap).fill(-1);
  for (let i = 0; i < n; i++) weight[i] = freq[syms[i]];
  let count = n;
  let cur = Array.from({ length: n }, (_, i) => i);
  for (let level = 1; level < L; level++) {
    const pk = [];
    for (let i = 0; i + 1 < cur.length; i += 2) {
      weight[count] = weight[cur[i]] + weight[cur[i + 1]];
      left[count] = cur[i];
      right[count] = cur[i + 1];
      pk.push(count++);
    }
    const merged = [];
    let a = 0, b = 0;
    while (a < n || b < pk.length) {
      if (b >= pk.length || (a < n && weight[a] <= weight[pk[b]])) merged.push(a++);
      else merged.push(pk[b++]);
    }
    cur = merged;
  }
  const depth = new Uint8Array(n);
  const stack = cur.slice(0, 2 * n - 2);
  while (stack.length) {
    const x = stack.pop();
    if (x < n) depth[x]++;
    else { stack.push(left[x], right[x]); }
  }
  for (let i = 0; i < n; i++) lengths[syms[i]] = depth[i];
  return lengths;
}

export function huffmanEncode(input, config) {
  const A = input.alphabet;
  const maxBits = isMap(config) && config.max_bits !== undefined ? config.max_bits : 12;
  const S = isMap(config) && config.segment_size !== undefined ? config.segment_size : 4096;
  if (!isInt(maxBits) || maxBits < 1 || maxBits > 16) throw new FormatError(`huffman: max_bits ${maxBits} outside 1..16`);
  if (!isInt(S) || S < 1 || S > MAX_SEGMENT) throw new FormatError(`huffman: segment_size ${S} outside 1..2^16`);
  if (!isInt(A) || A < 1 || A > 65536) throw new FormatError(`huffman: alphabet ${A} outside 1..2^16`);
  const sym = input.data;
  const N = sym.length;
  const meta = { count: N, alphabet: A };
  if (N === 0) return { outputs: [{ kind: 'bytes', data: new Uint8Array(0) }], meta };
  const freq = new Float64Array(A);
  for (let i = 0; i < N; i++) {
    const s = sym[i];
    if (!(s < A)) throw new FormatError(`huffman: symbol ${s} not below alphabet ${A}`);
    freq[s]++;
  }
  let D = 0, T = 0;
  for (let s = 0; s < A; s++) if (freq[s] > 0) { D++; T = s + 1; }
  const L = Math.max(maxBits, Math.ceil(Math.log2(D)));
  const lengths = limitedLengths(freq, L);
  const { codes } = canonical(lengths);
  const rev = new Uint32Array(A);
  for (let s = 0; s < T; s++) if (lengths[s]) rev[s] = bitreverse(codes[s], lengths[s]);
  const K = Math.ceil(N / S);
  let bits = 0;
  for (let s = 0; s < T; s++) bits += freq[s] * lengths[s];
  const payload = new Uint8Array(Math.ceil(bits / 8) + K + 4);
  const ends = new Uint32Array(K);
  let o = 0;
  for (let k = 0; k < K; k++) {
    let acc = 0, nacc = 0;
    const stop = Math.min(N, (k + 1) * S);
    for (let i = k * S; i < stop; i++) {
      const s = sym[i];
      acc |= rev[s] << nacc;
      nacc += lengths[s];
      while (nacc >= 8) { payload[o++] = acc & 255; acc >>>= 8; nacc -= 8; }
    }
    if (nacc > 0) payload[o++] = acc & 255;
    ends[k] = o;
  }
  const out = new Uint8Array(8 + T + 4 * K + o);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, T, true);
  out.set(lengths.subarray(0, T), 4);
  dv.setUint32(4 + T, S, true);
  for (let k = 0; k < K; k++) dv.setUint32(8 + T + 4 * k, ends[k], true);
  out.set(payload.subarray(0, o), 8 + T + 4 * K);
  return { outputs: [{ kind: 'bytes', data: out }], meta };
}

export const huffman = {
  id: 'huffman',
  version: 1,
  takes: ['symbols'],
  outputs: [{ name: 'data', kind: 'bytes' }],
  decode([input], meta, config, ctx) {
    checkConfig('huffman', config, { max_bits: intIn(1, 16), segment_size: intIn(1, MAX_SEGMENT) });
    return huffmanDecode(input.data, meta, ctx);
  },
  encode(input, config) {
    return huffmanEncode(input, config);
  },
};
