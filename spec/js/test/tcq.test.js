// tcq stage (spec/stages/tcq.md): the trellis walk over every run in decoding order, codebook bit patterns copied
// as they are; the checks of its Decoding step 1, a read past a stream's end and its stored config are FormatErrors
// naming the stage, an output over the decode bound a LimitError.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tcq, tcqDecode, checkTcqConfig } from '../src/stages/tcq.js';
import { DTYPES, FormatError, LimitError } from '../src/index.js';

const syms = (alphabet, list) => ({ kind: 'symbols', alphabet, data: Uint32Array.from(list) });
const bin = (typed) => new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
const int32s = (list) => bin(Int32Array.from(list));
const CONFIG = { step: 1, rel_step: null, rate_weight: 0, weighting: 'none' };

function lcg(seed) {
  let x = seed >>> 0;
  return () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x; };
}

// -- the worked example -------------------------------------------------------------------------------------------

const example = () => ({
  meta: {
    dtype: 'F32', shape: [4], run: 4,
    levels0: int32s([1]), codebook0: bin(Float32Array.from([1.0])),
    levels1: int32s([0, 1]), codebook1: bin(Float32Array.from([-0.2, 0.75])),
  },
  q0: syms(1, [0]),
  q1: syms(2, [1, 0, 1]),
});

test('the worked example of the spec page', () => {
  const { meta, q0, q1 } = example();
  const out = tcq.decode([q0, q1], meta, { step: 1, rate_weight: 0 });
  assert.equal(out.kind, 'dense');
  assert.equal(out.dtype, 'F32');
  assert.deepEqual(out.shape, [4]);
  assert.ok(out.data instanceof Float32Array);
  assert.deepEqual(Array.from(out.data), [1.0, 0.75, Math.fround(-0.2), 0.75]);
});

// -- the decoding order and the trellis, against a reference written the other way round ---------------------------

/**
 * Streams for given levels per element (C order), built run by run: each run's states from 0, its quantizers, then
 * every element's symbol placed in decoding order by sorting the elements by (t, run). Returns {meta, q0, q1}.
 */
function encodeLevels(levels, shape, run, dtype, bookOf) {
  const n = levels.length;
  const NEXT = [[0, 2], [2, 0], [1, 3], [3, 1]];
  const quantizer = new Array(n);
  for (let start = 0; start < n; start += run) {
    let s = 0;
    for (let e = start; e < Math.min(start + run, n); e++) {
      quantizer[e] = s >> 1;
      s = NEXT[s][((levels[e] % 2) + 2) % 2];
    }
  }
  const order = [...Array(n).keys()].sort((a, b) => (a % run) - (b % run) || Math.floor(a / run) - Math.floor(b / run));
  const meta = { dtype, shape, run, extra_key_ignored: [1, 2] };
  const streams = [];
  for (let z = 0; z < 2; z++) {
    const used = [...new Set(order.filter((e) => quantizer[e] === z).map((e) => levels[e]))].sort((a, b) => a - b);
    if (used.length === 0) used.push(0);
    meta[`levels${z}`] = int32s(used);
    meta[`codebook${z}`] = bin(DTYPES[dtype].array.from(used.map((k) => bookOf(z, k))));
    streams.push(syms(used.length, order.filter((e) => quantizer[e] === z).map((e) => used.indexOf(levels[e]))));
  }
  return { meta, q0: streams[0], q1: streams[1] };
}

test('many runs (the last one short), negative and odd levels: every element gets its own quantizer\'s value', () => {
  const next = lcg(11);
  const value = (z, k) => k * 4 + z; // distinct per (quantizer, level), exact in every dtype used here
  for (const [shape, run] of [[[5], 2], [[3, 7], 7], [[2, 3, 5], 4], [[4099], 4096], [[10], 1], [[3], 4096], [[], 1], [[0, 3], 3]]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const levels = Array.from({ length: n }, () => (next() % 13) - 6);
    const { meta, q0, q1 } = encodeLevels(levels, shape, run, 'F64', value);
    const out = tcq.decode([q0, q1], meta, CONFIG);
    assert.deepEqual(out.shape, shape);
    // which quantizer each element used is recomputed here run by run, independently of the decoder
    const NEXT = [[0, 2], [2, 0], [1, 3], [3, 1]];
    const want = [];
    for (let start = 0; start < n; start += run) {
      let s = 0;
      for (let e = start; e < Math.min(start + run, n); e++) { want.push(value(s >> 1, levels[e])); s = NEXT[s][levels[e] & 1]; }
    }
    assert.deepEqual(Array.from(out.data), want, `shape ${JSON.stringify(shape)}, run ${run}`);
  }
});

test('codebook bit patterns are copied as they are: F16, BF16 (NaN payloads too), F64, F32', () => {
  for (const dtype of ['F16', 'BF16']) { // NaN patterns with payloads (F16 0x7c01, BF16 0xfe35) and -subnormals
    const half = {
      dtype, shape: [2, 3], run: 3,
      levels0: int32s([-3, 2]), codebook0: bin(Uint16Array.from([0x7c01, 0x8001])),
      levels1: int32s([1]), codebook1: bin(Uint16Array.from([0xfe35])),
    };
    // row 0: -3 (Q0, 0 -> 2), 1 (Q1, 2 -> 3), 1 (Q1); row 1: 2 (Q0, 0 -> 0), 2 (Q0), -3 (Q0)
    // decoding order: t=0 runs 0, 1 (q0, q0); t=1 (q1, q0); t=2 (q1, q0)
    const got = tcqDecode(syms(2, [0, 1, 1, 0]), syms(1, [0, 0]), half);
    assert.ok(got.data instanceof Uint16Array);
    assert.deepEqual(Array.from(got.data), [0x7c01, 0xfe35, 0xfe35, 0x8001, 0x8001, 0x7c01], dtype);
  }
  const words = Uint32Array.from([0x00000001, 0x7ff00000, 0x89abcdef, 0xfff76543]);
  const f64 = tcqDecode(syms(1, [0]), syms(1, [0]), {
    dtype: 'F64', shape: [2], run: 2,
    levels0: int32s([7]), codebook0: bin(new Float64Array(words.buffer.slice(0, 8))),
    levels1: int32s([0]), codebook1: bin(new Float64Array(words.buffer.slice(8, 16))),
  });
  assert.deepEqual(Array.from(new Uint32Array(f64.data.buffer)), Array.from(words));
  const f32 = tcqDecode(syms(1, [0]), syms(1, []), {
    dtype: 'F32', shape: [1], run: 1,
    levels0: int32s([0]), codebook0: bin(Uint32Array.from([0xffc12345])),
    levels1: int32s([0]), codebook1: bin(Uint32Array.from([0])),
  });
  assert.deepEqual(Array.from(new Uint32Array(f32.data.buffer)), [0xffc12345]);
});

test('meta bins at any byte offset (views into the file) decode the same', () => {
  const { meta, q0, q1 } = example();
  const shifted = (b) => { const buf = new Uint8Array(b.length + 1); buf.set(b, 1); return buf.subarray(1); };
  for (const k of ['levels0', 'codebook0', 'levels1', 'codebook1']) meta[k] = shifted(meta[k]);
  assert.deepEqual(Array.from(tcqDecode(q0, q1, meta).data), [1.0, 0.75, Math.fround(-0.2), 0.75]);
});

test('an empty tensor and a scalar', () => {
  const empty = tcqDecode(syms(1, []), syms(1, []), {
    dtype: 'F32', shape: [0, 3], run: 1,
    levels0: int32s([0]), codebook0: bin(new Float32Array(1)), levels1: int32s([0]), codebook1: bin(new Float32Array(1)),
  });
  assert.deepEqual(empty.shape, [0, 3]);
  assert.equal(empty.data.length, 0);
  const scalar = tcqDecode(syms(1, [0]), syms(1, []), {
    dtype: 'BF16', shape: [], run: 4096,
    levels0: int32s([-1]), codebook0: bin(Uint16Array.from([0xbf80])), levels1: int32s([0]), codebook1: bin(new Uint16Array(1)),
  });
  assert.deepEqual(scalar.shape, []);
  assert.deepEqual(Array.from(scalar.data), [0xbf80]);
});

// -- validation ---------------------------------------------------------------------------------------------------

const rejects = (fn, re, cls = FormatError) => assert.throws(fn, (e) => e instanceof cls && e.name === cls.name && /^tcq: /.test(e.message) && re.test(e.message));
const withMeta = (change) => { const x = example(); Object.assign(x.meta, change); return x; };
const decodes = ({ meta, q0, q1 }, config = CONFIG, ctx = {}) => tcq.decode([q0, q1], meta, config, ctx);

test('a dtype other than F64, F32, F16, BF16 is a FormatError', () => {
  for (const dtype of ['I32', 'U16', 'BOOL', 'f32', null, undefined]) rejects(() => decodes(withMeta({ dtype })), /dtype .* is not F64, F32, F16 or BF16/);
  rejects(() => tcqDecode(syms(1, [0]), syms(2, [1, 0, 1]), 'meta'), /meta is not a map/);
});

test('a bad shape is a FormatError', () => {
  for (const shape of [undefined, 4, [-1], [2.5], ['4'], new Array(33).fill(1)]) rejects(() => decodes(withMeta({ shape })), /shape|dimension/);
});

test('a run outside 1..4096 is a FormatError', () => {
  for (const run of [0, 4097, -1, 2.5, '4', true, null, undefined]) rejects(() => decodes(withMeta({ run })), /run .* is not an integer from 1 to 4096/);
  for (const run of [4, 5, 4096]) decodes(withMeta({ run })); // any run >= 4 keeps the example's 4 elements one run
});

test('levels that are not 1..65536 strictly increasing int32 values are a FormatError', () => {
  rejects(() => decodes(withMeta({ levels1: int32s([1, 0]) })), /levels1 are not strictly increasing/);
  rejects(() => decodes(withMeta({ levels1: int32s([1, 1]) })), /levels1 are not strictly increasing/);
  rejects(() => decodes(withMeta({ levels0: new Uint8Array(0), codebook0: new Uint8Array(0) })), /levels0 of 0 bytes/);
  rejects(() => decodes(withMeta({ levels0: new Uint8Array(5) })), /levels0 of 5 bytes/);
  rejects(() => decodes(withMeta({ levels0: new Uint8Array(4 * 65537), codebook0: new Uint8Array(4 * 65537) })), /levels0 of 262148 bytes is not 1 to 65536/);
  rejects(() => decodes(withMeta({ levels0: [1] })), /levels0 and codebook0 must be bin/);
  rejects(() => decodes(withMeta({ codebook1: undefined })), /levels1 and codebook1 must be bin/);
  decodes(withMeta({ levels1: int32s([-(2 ** 31), 2 ** 31 - 1]) })); // the int32 extremes: parities 0 and 1
});

test('a codebook of another length is a FormatError', () => {
  rejects(() => decodes(withMeta({ codebook0: new Uint8Array(0) })), /codebook0 of 0 bytes does not hold 1 values/);
  rejects(() => decodes(withMeta({ codebook1: bin(Float32Array.from([1, 2, 3])) })), /codebook1 of 12 bytes does not hold 2 values/);
  rejects(() => decodes(withMeta({ codebook1: bin(Float64Array.from([1, 2])) })), /codebook1 of 16 bytes/);
});

test('a symbol not below its quantizer\'s level count is a FormatError', () => {
  const x = example();
  rejects(() => decodes({ ...x, q1: syms(3, [1, 2, 1]) }), /q1 holds symbol 2 at 1, its quantizer has 2 levels/);
  rejects(() => decodes({ ...x, q0: syms(2, [1]) }), /q0 holds symbol 1 at 0, its quantizer has 1 levels/);
});

test('stream lengths that do not add up to n are a FormatError', () => {
  const x = example();
  rejects(() => decodes({ ...x, q1: syms(2, [1, 0]) }), /holds 4 values, the streams 1 \+ 2/);
  rejects(() => decodes({ ...x, q1: syms(2, [1, 0, 1, 1]) }), /holds 4 values, the streams 1 \+ 4/);
  rejects(() => decodes(withMeta({ shape: [0] })), /holds 0 values, the streams 1 \+ 3/);
});

test('a path that needs more symbols from one stream than it holds is a FormatError', () => {
  // Q0's level even: the run stays in state 0 and asks q0 for a second symbol, which it does not have
  rejects(() => decodes(withMeta({ levels0: int32s([2]) })), /needs more symbols from q0 than it holds/);
  // q1's first level even: state 2 -> 1 -> back on Q0, whose only symbol is gone
  rejects(() => decodes(withMeta({ levels1: int32s([0, 2]) })), /needs more symbols from q0 than it holds/);
  // too many symbols in q0, one short in q1 (the lengths still add up to n)
  const x = example();
  rejects(() => decodes({ ...x, q0: syms(1, [0, 0]), q1: syms(2, [1, 0]) }), /needs more symbols from q1 than it holds/);
});

test('the stored config is checked against the Configuration table (FORMAT.md 4.3)', () => {
  const ok = [{ step: 0.01 }, { rel_step: 0.3 }, { step: 1, rate_weight: 0 }, { step: 2, rel_step: null, rate_weight: 0.1, weighting: 'none' },
    { rel_step: 0.3, weighting: 'auto' }, { step: 0.5, weighting: 'activation' }, { step: 0.5, weighting: 'fisher' }];
  for (const c of ok) checkTcqConfig(c);
  rejects(() => checkTcqConfig({}), /exactly one of step and rel_step/);
  rejects(() => checkTcqConfig({ step: null, rel_step: null }), /exactly one of step and rel_step/);
  rejects(() => checkTcqConfig({ step: 1, rel_step: 0.3 }), /exactly one of step and rel_step/);
  for (const step of [0, -1, Infinity, NaN, '1', true]) rejects(() => checkTcqConfig({ step }), /stored config step=/);
  for (const rel_step of [0, -0.3, Infinity, '0.3']) rejects(() => checkTcqConfig({ rel_step }), /stored config rel_step=/);
  for (const rate_weight of [-0.5, Infinity, NaN, null, '0', false]) rejects(() => checkTcqConfig({ step: 1, rate_weight }), /stored config rate_weight=/);
  for (const weighting of ['rows', 'None', null, 1]) rejects(() => checkTcqConfig({ step: 1, weighting }), /stored config weighting=/);
  rejects(() => checkTcqConfig({ step: 1, run: 4 }), /no parameter "run"/);
  rejects(() => checkTcqConfig([]), /stored config is not a map/);
  const { meta, q0, q1 } = example();
  rejects(() => tcq.decode([q0, q1], meta, { step: 1, rel_step: 1 }), /exactly one of step and rel_step/);
});

test('an output over the decode bound is a LimitError', () => {
  rejects(() => decodes(example(), CONFIG, { outputLimit: 15 }), /16 bytes of output over the decode bound 15/, LimitError);
  decodes(example(), CONFIG, { outputLimit: 16 });
});
