// The golden vectors of spec/vectors: every valid one decodes bit-exactly, every invalid one raises its error class.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as dcf from '../src/index.js';

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'vectors');
const index = JSON.parse(readFileSync(join(VECTORS, 'index.json'), 'utf8'));
const UNSUPPORTED = new Set(Object.values(dcf.STAGES).filter((s) => s.unsupported).map((s) => s.id));

function bytesOf(typed) {
  return Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);
}

for (const v of index.valid) {
  test(`valid ${v.file}`, () => {
    const reader = new dcf.DcfReader(new Uint8Array(readFileSync(join(VECTORS, v.file))));
    const expected = readFileSync(join(VECTORS, v.expected));
    assert.deepEqual(reader.names, v.tensors.map((t) => t.name));
    for (const t of v.tensors) {
      const rec = reader.entries.find((e) => e.name === t.name);
      const chainIds = reader.chains[reader._load(rec).rec.chain].map((d) => d.id);
      const unsupported = chainIds.filter((id) => UNSUPPORTED.has(id));
      if (unsupported.length) {
        assert.throws(() => reader.read(t.name), (e) => e instanceof dcf.MissingStageError && e.message.includes(unsupported[0]));
        continue;
      }
      const got = reader.read(t.name);
      assert.equal(got.dtype, t.dtype, `${t.name} dtype`);
      assert.deepEqual(got.shape, t.shape, `${t.name} shape`);
      assert.ok(got.data instanceof dcf.DTYPES[t.dtype].array, `${t.name} typed array class`);
      const want = expected.subarray(t.offset, t.offset + t.length);
      assert.ok(bytesOf(got.data).equals(want), `${t.name}: decoded bytes differ from ${v.expected}`);
    }
  });
}

for (const v of index.invalid) {
  test(`invalid ${v.file} -> ${v.error}`, () => {
    const bytes = new Uint8Array(readFileSync(join(VECTORS, v.file)));
    let err = null;
    let expected = v.error;
    try {
      const reader = new dcf.DcfReader(bytes);
      const rec = v.tensor === null ? null : reader.entries.find((e) => e.name === v.tensor);
      const chain = rec ? reader.chains[reader._load(rec).rec.chain] ?? [] : [];
      if (chain.some((d) => UNSUPPORTED.has(d.id))) expected = 'MissingStageError'; // generic.md: MAY be unsupported
      assert.notEqual(v.tensor, null, 'the file opened, but the vector says opening must fail');
      reader.read(v.tensor);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof dcf.DcfError, `expected ${expected}, got ${err}`);
    assert.equal(err.name, expected, `expected ${expected}, got ${err.name}: ${err.message}`);
  });
}
