// huffman stage: encoder output decodes to the same symbols, lengths are optimal and limited, hostile tables fail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { huffmanDecode, huffmanEncode, limitedLengths } from '../src/stages/huffman.js';
import { FormatError } from '../src/index.js';

function lcg(seed) {
  let x = seed >>> 0;
  return () => { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; return x / 2 ** 32; };
}

// Unrestricted Huffman cost (sum of merged weights), the optimum a limit can only match or exceed.
function huffmanCost(freq) {
  const w = [...freq].filter((f) => f > 0).sort((a, b) => a - b);
  if (w.length === 1) return w[0];
  let cost = 0;
  while (w.length > 1) {
    const s = w.shift() + w.shift();
    cost += s;
    let i = 0;
    while (i < w.length && w[i] < s) i++;
    w.splice(i, 0, s);
  }
  return cost;
}

test('round trip over alphabets, skews, segment sizes and limits', () => {
  const rnd = lcg(1);
  for (const [A, n, maxBits, seg] of [[2, 1, 12, 4096], [32, 5000, 12, 4096], [256, 3000, 4, 100], [300, 2000, 9, 7],
    [65536, 500, 16, 64], [7, 100, 1, 1], [1, 9, 12, 4]]) {
    const sym = new Uint16Array(n);
    for (let i = 0; i < n; i++) sym[i] = Math.min(A - 1, Math.floor(-Math.log(1 - rnd()) * A / 8));
    const { outputs, meta } = huffmanEncode({ kind: 'symbols', alphabet: A, data: sym }, { max_bits: maxBits, segment_size: seg });
    const back = huffmanDecode(outputs[0].data, meta);
    assert.equal(back.alphabet, A);
    assert.deepEqual(Array.from(back.data), Array.from(sym), `A=${A} n=${n}`);
  }
});

test('package-merge: Kraft sum 1, limit respected, optimal when the limit does not bind', () => {
  const rnd = lcg(2);
  for (let trial = 0; trial < 30; trial++) {
    const n = 2 + Math.floor(rnd() * 60);
    const freq = Array.from({ length: n }, () => Math.floor(rnd() ** 4 * 1000) + 1);
    const free = limitedLengths(freq, 16);
    assert.equal(free.reduce((a, l, s) => a + l * freq[s], 0), huffmanCost(freq));
    const L = Math.max(6, Math.ceil(Math.log2(n)));
    const lim = limitedLengths(freq, L);
    assert.ok(Math.max(...lim) <= L);
    assert.equal(Array.from(lim).reduce((a, l) => a + 2 ** -l, 0), 1);
    assert.ok(lim.reduce((a, l, s) => a + l * freq[s], 0) >= huffmanCost(freq));
  }
});

test('hostile streams are FormatError', () => {
  const sym = Uint8Array.from([0, 1, 2, 2, 2, 1, 0, 3]);
  const { outputs, meta } = huffmanEncode({ kind: 'symbols', alphabet: 4, data: sym }, { segment_size: 3 });
  const good = outputs[0].data;
  const bad = (mut, m = meta) => {
    const d = good.slice();
    mut(d);
    assert.throws(() => huffmanDecode(d, m), FormatError);
  };
  bad((d) => { d[4] = 17; });                      // length above 16
  bad((d) => { d[4] = 3; });                       // Kraft sum not 1
  bad((d) => { d[0] = 9; });                       // T > A
  assert.throws(() => huffmanDecode(good.subarray(0, good.length - 1), meta), FormatError);   // truncated
  assert.throws(() => huffmanDecode(good, { count: 1e9, alphabet: 4 }), FormatError);          // too many symbols
  assert.throws(() => huffmanDecode(good, { count: 8, alphabet: 70000 }), FormatError);        // alphabet
  assert.throws(() => huffmanDecode(good, { count: 0, alphabet: 4 }), FormatError);            // N = 0, non-empty
  bad((d) => { d[d.length - 1] |= 0x80; });        // padding bit set (or invalid code)
});
