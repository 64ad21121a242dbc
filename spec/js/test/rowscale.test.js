// rowscale stage (spec/stages/rowscale.md): row r times 2^e_r, exact unless it overflows to infinity, NaN bits kept;
// the checks of its Decoding step 1 and its stored config are FormatErrors naming the stage.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rowscale, rowscaleDecode, scaleHalfBits } from '../src/stages/rowscale.js';
import { FormatError, LimitError } from '../src/index.js';

const dense = (dtype, shape, data) => ({ kind: 'dense', dtype, shape, data });
const syms = (alphabet, list) => ({ kind: 'symbols', alphabet, data: Uint8Array.from(list) });
const f32bits = (list) => new Float32Array(Uint32Array.from(list).buffer);
const bitsOf32 = (a) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function lcg(seed) {
  let x = seed >>> 0;
  return () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x; };
}

// -- references, written apart from the decoder -------------------------------------------------------------------

/** An F16 pattern as a float64 (exact). */
function f16ToNumber(h) {
  const s = h & 0x8000 ? -1 : 1, E = (h >>> 10) & 31, m = h & 1023;
  if (E === 31) return m ? NaN : s * Infinity;
  return E === 0 ? s * m * 2 ** -24 : s * (1024 + m) * 2 ** (E - 25);
}

/** A float64 rounded to the nearest F16 (ties to even; past the largest finite value, infinity). */
function numberToF16(x) {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // 65504 + half an ulp ties to the even 2^16: overflow
  const rne = (q) => { const f = Math.floor(q), d = q - f; return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f; };
  if (a < 2 ** -14) return sign | rne(a * 2 ** 24); // subnormal (1024 becomes the smallest normal, 0x0400)
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  let r = rne((a / 2 ** e - 1) * 1024);
  if (r === 1024) { e++; r = 0; }
  return sign | ((e + 15) << 10) | r;
}

// -- the worked example and the arithmetic ------------------------------------------------------------------------

test('the worked example of the spec page', () => {
  const out = rowscale.decode([dense('F32', [2, 2], Float32Array.from([1, -3, 0.25, 4])), syms(2, [0, 1])], {}, { shift: 1 });
  assert.equal(out.kind, 'dense');
  assert.equal(out.dtype, 'F32');
  assert.deepEqual(out.shape, [2, 2]);
  assert.deepEqual(Array.from(out.data), [1, -3, 0.5, 8]);
});

test('the input is not scaled in place (it may be a view of the file)', () => {
  const data = Float32Array.from([1, 2, 3, 4]);
  const out = rowscaleDecode(dense('F32', [2, 2], data), syms(4, [3, 1]), {});
  assert.deepEqual(Array.from(data), [1, 2, 3, 4]);
  assert.deepEqual(Array.from(out.data), [8, 16, 6, 8]);
});

test('rows are the slices of the first axis, in every rank', () => {
  const data = Float64Array.from({ length: 12 }, (_, i) => i + 1);
  const out = rowscaleDecode(dense('F64', [3, 2, 2], data), syms(16, [0, 15, 2]), {});
  assert.deepEqual(Array.from(out.data), [1, 2, 3, 4, 5 * 2 ** 15, 6 * 2 ** 15, 7 * 2 ** 15, 8 * 2 ** 15, 36, 40, 44, 48]);
  const flat = rowscaleDecode(dense('F16', [3], Uint16Array.from([0x3c00, 0x3c00, 0x3c00])), syms(3, [0, 1, 2]), {});
  assert.deepEqual(Array.from(flat.data), [0x3c00, 0x4000, 0x4400]); // 1, 2, 4
  const empty = rowscaleDecode(dense('BF16', [4, 0], new Uint16Array(0)), syms(2, [1, 0, 1, 1]), {});
  assert.deepEqual(empty.shape, [4, 0]);
  assert.equal(empty.data.length, 0);
  const none = rowscaleDecode(dense('F32', [0, 3], new Float32Array(0)), syms(1, []), {});
  assert.deepEqual(none.shape, [0, 3]);
});

test('F16: every pattern times every 2^e is the correctly rounded product (exact, or infinity)', () => {
  for (let e = 0; e < 16; e++) {
    for (let h = 0; h < 65536; h++) {
      const got = scaleHalfBits(h, e, 10);
      const x = f16ToNumber(h);
      if (x !== x) assert.equal(got, h, `NaN ${h.toString(16)} x 2^${e}`);
      else if (got !== numberToF16(x * 2 ** e)) assert.fail(`F16 ${h.toString(16)} x 2^${e}: got ${got.toString(16)}`);
    }
  }
});

test('BF16: every pattern times every 2^e is the top half of the float32 product', () => {
  const f = new Float32Array(2), u = new Uint32Array(f.buffer);
  for (let e = 0; e < 16; e++) {
    for (let h = 0; h < 65536; h++) {
      const got = scaleHalfBits(h, e, 7);
      u[0] = h << 16;
      if (f[0] !== f[0]) { assert.equal(got, h); continue; }
      f[1] = f[0] * 2 ** e;
      if (u[1] & 0xffff || got !== u[1] >>> 16) assert.fail(`BF16 ${h.toString(16)} x 2^${e}: got ${got.toString(16)}`);
    }
  }
});

test('F32: random patterns (subnormals and near-overflow ones included) against an exponent-field reference', () => {
  const next = lcg(7);
  const ref = (b, e) => { // the same rule as F16's, on float32's fields, written out
    const sign = b & 0x80000000, E0 = (b >>> 23) & 255;
    let m = b & 0x7fffff, E = E0;
    if (E === 255 || (E === 0 && m === 0)) return b >>> 0;
    if (E === 0) {
      while (e > 0 && m < 0x800000) { m *= 2; e--; }
      if (m < 0x800000) return (sign | m) >>> 0;
      E = 1;
      m -= 0x800000;
    }
    E += e;
    return (E >= 255 ? sign | 0x7f800000 : sign | (E << 23) | m) >>> 0;
  };
  const n = 20000, patterns = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const r = next();
    const kind = i % 4; // plain, subnormal, near overflow (exponent field 240..254), anything
    patterns[i] = kind === 1 ? r & 0x807fffff : kind === 2 ? ((r & 0x807fffff) | ((240 + (r >>> 28) % 15) << 23)) >>> 0 : r;
  }
  const exps = Uint8Array.from({ length: n }, (_, i) => i % 16);
  const out = rowscaleDecode(dense('F32', [n, 1], new Float32Array(patterns.buffer.slice(0))), { kind: 'symbols', alphabet: 16, data: exps }, {});
  const got = bitsOf32(out.data);
  for (let i = 0; i < n; i++) {
    if (got[i] !== ref(patterns[i], exps[i])) assert.fail(`F32 ${patterns[i].toString(16)} x 2^${exps[i]}: got ${got[i].toString(16)}`);
  }
});

test('overflow to +/-infinity in F16, BF16, F32 and F64; the largest products that fit stay finite', () => {
  const half = rowscaleDecode(dense('F16', [2, 4], Uint16Array.from([0x7bff, 0xfbff, 0x4000, 0x3c00, 0x7bff, 0x3c00, 0xbc00, 0x0001])),
    syms(16, [1, 15]), {});
  // 65504 x 2, -65504 x 2, 2 x 2 | 65504 x 2^15, 1 x 2^15 = 32768, -1 x 2^15, 2^-24 x 2^15 = 2^-9
  assert.deepEqual(Array.from(half.data), [0x7c00, 0xfc00, 0x4400, 0x4000, 0x7c00, 0x7800, 0xf800, 0x1800]);
  assert.equal(scaleHalfBits(0x4000, 15, 10), 0x7c00); // 2 x 2^15 = 65536: past 65504
  const bf = rowscaleDecode(dense('BF16', [2, 3], Uint16Array.from([0x7f7f, 0xff7f, 0x3f80, 0x7f00, 0x7e80, 0x0001])),
    syms(16, [1, 2]), {});
  // max x 2, -max x 2, 1 x 2 | 2^127 x 4, 2^126 x 4, smallest subnormal x 4
  assert.deepEqual(Array.from(bf.data), [0x7f80, 0xff80, 0x4000, 0x7f80, 0x7f80, 0x0004]);
  const FLT_MAX = f32bits([0x7f7fffff])[0];
  const f = rowscaleDecode(dense('F32', [2, 3], Float32Array.from([FLT_MAX, -FLT_MAX, 2 ** 126, 2 ** 127, 2 ** 100, -(2 ** 113)])),
    syms(16, [1, 15]), {});
  assert.deepEqual(Array.from(f.data), [Infinity, -Infinity, 2 ** 127, Infinity, 2 ** 115, -Infinity]);
  const d = rowscaleDecode(dense('F64', [1, 3], Float64Array.from([Number.MAX_VALUE, -(2 ** 1020), 2 ** 1000])), syms(16, [4]), {});
  assert.deepEqual(Array.from(d.data), [Infinity, -Infinity, 2 ** 1004]);
});

test('zeros keep their sign, infinities stay infinite, subnormals scale exactly', () => {
  const f = rowscaleDecode(dense('F32', [1, 4], f32bits([0x80000000, 0, 0xff800000, 0x00000001])), syms(4, [3]), {});
  assert.deepEqual(bitsOf32(f.data), [0x80000000, 0, 0xff800000, 0x00000008]);
  const h = rowscaleDecode(dense('F16', [1, 5], Uint16Array.from([0x8000, 0x0000, 0x7c00, 0x0001, 0x83ff])), syms(16, [10]), {});
  // 2^-24 x 2^10 = 2^-14, the smallest normal; -(1023 x 2^-24) x 2^10 = -(1 + 1023/1024) x 2^-5
  assert.deepEqual(Array.from(h.data), [0x8000, 0x0000, 0x7c00, 0x0400, 0xabfe]);
});

test('NaN elements keep their bit patterns, payload and sign, in every dtype', () => {
  const f32 = rowscaleDecode(dense('F32', [1, 4], f32bits([0x7f800001, 0xffc12345, 0x7fbfffff, 0x3f800000])), syms(8, [5]), {});
  assert.deepEqual(bitsOf32(f32.data), [0x7f800001, 0xffc12345, 0x7fbfffff, 0x42000000]);
  const words = Uint32Array.from([0x00000001, 0x7ff00000, 0x89abcdef, 0xfff76543, 0, 0x3ff00000]);
  const f64 = rowscaleDecode(dense('F64', [1, 3], new Float64Array(words.buffer)), syms(8, [7]), {});
  assert.deepEqual(Array.from(new Uint32Array(f64.data.buffer)), [0x00000001, 0x7ff00000, 0x89abcdef, 0xfff76543, 0, 0x40600000]);
  const h = rowscaleDecode(dense('F16', [1, 3], Uint16Array.from([0x7c01, 0xfe00, 0x7fff])), syms(16, [15]), {});
  assert.deepEqual(Array.from(h.data), [0x7c01, 0xfe00, 0x7fff]);
  const b = rowscaleDecode(dense('BF16', [1, 3], Uint16Array.from([0x7f81, 0xffc1, 0x7fff])), syms(16, [15]), {});
  assert.deepEqual(Array.from(b.data), [0x7f81, 0xffc1, 0x7fff]);
});

// -- validation ---------------------------------------------------------------------------------------------------

const rejects = (fn, re, cls = FormatError) => assert.throws(fn, (e) => e instanceof cls && e.name === cls.name && /^rowscale: /.test(e.message) && re.test(e.message));
const good = () => [dense('F32', [2, 2], Float32Array.from([1, 2, 3, 4])), syms(2, [0, 1])];

test('a non-empty meta is a FormatError', () => {
  rejects(() => rowscale.decode(good(), { dtype: 'F32' }, {}), /meta must be empty/);
  rejects(() => rowscale.decode(good(), { '': null }, {}), /meta must be empty/);
});

test('values that are not a float tensor of rank >= 1 are a FormatError', () => {
  rejects(() => rowscale.decode([dense('I32', [2, 2], Int32Array.from([1, 2, 3, 4])), syms(2, [0, 1])], {}, {}), /float tensor of rank >= 1, got I32/);
  rejects(() => rowscale.decode([dense('U16', [2], Uint16Array.from([1, 2])), syms(2, [0, 1])], {}, {}), /float tensor/);
  rejects(() => rowscale.decode([dense('F32', [], Float32Array.from([1])), syms(2, [0])], {}, {}), /rank >= 1, got F32 of shape \[\]/);
});

test('an alphabet over 16 is a FormatError', () => {
  rejects(() => rowscale.decode([good()[0], syms(17, [0, 1])], {}, {}), /at most 16, got alphabet 17/);
  rowscale.decode([good()[0], syms(16, [0, 15])], {}, {}); // 16 is allowed
});

test('a count of exponents other than the rows is a FormatError', () => {
  rejects(() => rowscale.decode([good()[0], syms(2, [0])], {}, {}), /1 exponents for a tensor of 2 rows/);
  rejects(() => rowscale.decode([good()[0], syms(2, [0, 1, 1])], {}, {}), /3 exponents for a tensor of 2 rows/);
  rejects(() => rowscale.decode([dense('F32', [0, 2], new Float32Array(0)), syms(2, [0])], {}, {}), /1 exponents for a tensor of 0 rows/);
});

test('an exponent outside the alphabet is a FormatError', () => {
  rejects(() => rowscale.decode([good()[0], syms(1, [0, 1])], {}, {}), /exponent 1 of row 1 is outside the alphabet of 1/);
  rejects(() => rowscale.decode([good()[0], { kind: 'symbols', alphabet: 16, data: Uint32Array.from([16, 0]) }], {}, {}), /exponent 16 of row 0/);
  // a row of no elements is checked too
  rejects(() => rowscale.decode([dense('F32', [2, 0], new Float32Array(0)), syms(3, [0, 3])], {}, {}), /exponent 3 of row 1/);
});

test('the stored config is checked against the Configuration table (FORMAT.md 4.3)', () => {
  for (const shift of [1, 2, 15]) rowscale.decode(good(), {}, { shift });
  for (const shift of [0, 16, -1, 1.5, true, null, '2']) rejects(() => rowscale.decode(good(), {}, { shift }), /stored config shift=/);
  rejects(() => rowscale.decode(good(), {}, { shift: 1, scale: 2 }), /no parameter "scale"/);
});

test('an output over the decode bound is a LimitError', () => {
  rejects(() => rowscale.decode(good(), {}, {}, { outputLimit: 15 }), /16 bytes of output over the decode bound 15/, LimitError);
  rowscale.decode(good(), {}, {}, { outputLimit: 16 });
});
