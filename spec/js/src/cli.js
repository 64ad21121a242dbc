#!/usr/bin/env node
// Command line used by the Python cross-tests and by hand:
//   node src/cli.js decode FILE.dcf OUTDIR      decoded tensors as OUTDIR/<i>.bin + OUTDIR/manifest.json
//   node src/cli.js encode SPEC.json OUT.dcf    write tensors listed in SPEC.json (see encodeFromSpec)
//   node src/cli.js vectors INDEX.json          check every golden vector, print one JSON result per vector
//   node src/cli.js time FILE.dcf NAME [REPS]   best wall time of decoding one tensor (ms), as JSON
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { DcfReader, DcfWriter, DTYPES, DcfError, STAGES, MissingStageError } from './index.js';

function bytesOf(t) {
  return Buffer.from(t.buffer, t.byteOffset, t.byteLength);
}

function decode(file, outdir) {
  mkdirSync(outdir, { recursive: true });
  const reader = new DcfReader(new Uint8Array(readFileSync(file)));
  const tensors = reader.names.map((name, i) => {
    try {
      const t = reader.read(name);
      writeFileSync(join(outdir, `${i}.bin`), bytesOf(t.data));
      return { name, dtype: t.dtype, shape: t.shape, file: `${i}.bin`, array: t.data.constructor.name };
    } catch (e) {
      if (!(e instanceof DcfError)) throw e;
      return { name, error: e.name, message: e.message };
    }
  });
  const manifest = { producer: reader.producer, metadata: reader.metadata, tensors };
  writeFileSync(join(outdir, 'manifest.json'), JSON.stringify(manifest, null, 1));
}

// SPEC.json: {"chunkSize"?, "metadata"?, "tensors": [{"name", "dtype", "shape", "file" (raw LE bytes, relative to
// SPEC.json), "chain": [{"id", "config"}]}]}
function encodeFromSpec(specFile, out) {
  const spec = JSON.parse(readFileSync(specFile, 'utf8'));
  const base = dirname(resolve(specFile));
  const w = new DcfWriter({ chunkSize: spec.chunkSize ?? 16 * 2 ** 20, metadata: spec.metadata ?? {} });
  for (const t of spec.tensors) {
    const raw = readFileSync(join(base, t.file));
    const T = DTYPES[t.dtype].array;
    const data = new T(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
    w.add(t.name, { dtype: t.dtype, shape: t.shape, data }, t.chain ?? []);
  }
  writeFileSync(out, w.finish());
}

function vectors(indexFile) {
  const root = dirname(resolve(indexFile));
  const index = JSON.parse(readFileSync(indexFile, 'utf8'));
  const unsupported = new Set(Object.values(STAGES).filter((s) => s.unsupported).map((s) => s.id));
  const results = [];
  for (const v of index.valid) {
    const res = { file: v.file, kind: 'valid', tensors: [] };
    try {
      const reader = new DcfReader(new Uint8Array(readFileSync(join(root, v.file))));
      const expected = readFileSync(join(root, v.expected));
      for (const t of v.tensors) {
        try {
          const got = reader.read(t.name);
          const want = expected.subarray(t.offset, t.offset + t.length);
          const same = got.dtype === t.dtype && JSON.stringify(got.shape) === JSON.stringify(t.shape) &&
            bytesOf(got.data).equals(want);
          res.tensors.push({ name: t.name, ok: same });
        } catch (e) {
          const allowed = e instanceof MissingStageError && [...unsupported].some((id) => e.message.includes(`'${id}'`));
          res.tensors.push({ name: t.name, ok: false, unsupported: allowed, error: e.name, message: e.message });
        }
      }
    } catch (e) {
      res.error = e.name;
      res.message = e.message;
    }
    results.push(res);
  }
  for (const v of index.invalid) {
    const res = { file: v.file, kind: 'invalid', expected: v.error };
    try {
      const reader = new DcfReader(new Uint8Array(readFileSync(join(root, v.file))));
      if (v.tensor !== null) reader.read(v.tensor);
      res.error = null;
    } catch (e) {
      res.error = e.name;
      res.message = e.message;
    }
    results.push(res);
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}

function time(file, name, reps = 3) {
  const bytes = new Uint8Array(readFileSync(file));
  let best = Infinity;
  let t = null;
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    t = new DcfReader(bytes).read(name);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const sha256 = createHash('sha256').update(bytesOf(t.data)).digest('hex');
  process.stdout.write(JSON.stringify({ name, elements: t.data.length, best_ms: best, reps, sha256 }) + '\n');
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'decode') decode(args[0], args[1]);
else if (cmd === 'encode') encodeFromSpec(args[0], args[1]);
else if (cmd === 'vectors') vectors(args[0]);
else if (cmd === 'time') time(args[0], args[1], Number(args[2] ?? 3));
else {
  process.stderr.write('usage: cli.js decode FILE OUTDIR | encode SPEC.json OUT | vectors INDEX.json | time FILE NAME [REPS]\n');
  process.exit(2);
}
