// Reader of the .dcf container (spec/FORMAT.md): trailer, index, records, chunks, checksums, limits, and the decode of
// a tensor through its chain (section 4.4).
import { DcfError, FormatError, IntegrityError, LimitError, MissingStageError } from './errors.js';
import { crc32 } from './crc32.js';
import { isInt, isMap, unpack } from './mp.js';
import { checkShape, dtypeInfo } from './dtypes.js';
import { STAGES } from './stages/index.js';

export const MAGIC = Uint8Array.from([0x89, 0x44, 0x43, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]);
export const END_MAGIC = new TextEncoder().encode('DCFINDEX');
export const FORMAT_VERSION = [1, 0];

export const DEFAULT_LIMITS = Object.freeze({
  indexLength: 64 * 2 ** 20,
  recordLength: 64 * 2 ** 20,
  tensors: 2 ** 20,
  dims: 32,
  chunkLength: 2 ** 30,
});

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function checkStageDescriptor(d, i) {
  if (!isMap(d)) throw new FormatError(`chain stage ${i} is not a map`);
  if (typeof d.id !== 'string') throw new FormatError(`chain stage ${i}: id is not a string`);
  if (!isInt(d.version) || d.version < 1) throw new FormatError(`chain stage ${d.id}: version is not an int >= 1`);
  if (d.config !== undefined && !isMap(d.config)) throw new FormatError(`chain stage ${d.id}: config is not a map`);
  if (d.package !== undefined && typeof d.package !== 'string') throw new FormatError(`chain stage ${d.id}: package is not a string`);
}

/** An opened .dcf file: `names`, `metadata`, `chains`, and `read(name)` to decode one tensor. */
export class DcfReader {
  /** Parse the trailer and index of `bytes` (Uint8Array holding the whole file). */
  constructor(bytes, { limits = {}, stages = STAGES } = {}) {
    if (!(bytes instanceof Uint8Array)) throw new TypeError('DcfReader needs a Uint8Array');
    this.bytes = bytes;
    this.limits = { ...DEFAULT_LIMITS, ...limits };
    this.stages = stages;
    const n = bytes.length;
    if (n < 8 || !equalBytes(bytes.subarray(0, 8), MAGIC)) throw new FormatError('not a .dcf file (bad magic)');
    if (n < 8 + 24) throw new FormatError('not a .dcf file (too short for a trailer)');
    const trailer = bytes.subarray(n - 24);
    if (!equalBytes(trailer.subarray(16), END_MAGIC)) throw new FormatError('not a .dcf file (bad trailer magic)');
    const view = new DataView(trailer.buffer, trailer.byteOffset, 24);
    const indexOffset = view.getBigUint64(0, true);
    const indexLength = view.getUint32(8, true);
    const indexCrc = view.getUint32(12, true);
    if (indexLength > this.limits.indexLength) throw new LimitError(`index length ${indexLength} over the limit ${this.limits.indexLength}`);
    // Past the trailer is beyond the file (LimitError); inside it but not ending at the trailer, malformed (FORMAT.md 8.2).
    if (indexOffset + BigInt(indexLength) + 24n > BigInt(n)) {
      throw new LimitError(`index at ${indexOffset} of ${indexLength} bytes runs past the trailer (file is ${n} bytes)`);
    }
    if (indexOffset < 8n || indexOffset + BigInt(indexLength) + 24n !== BigInt(n)) {
      throw new FormatError(`index at ${indexOffset} of ${indexLength} bytes does not end at the trailer (file is ${n} bytes)`);
    }
    const io = Number(indexOffset);
    const indexBytes = bytes.subarray(io, io + indexLength);
    if (crc32(indexBytes) !== indexCrc) throw new IntegrityError('index checksum mismatch');
    const index = unpack(indexBytes, 'index');
    this._parseIndex(index, io, n);
  }

  _parseIndex(index, indexOffset, fileSize) {
    if (!isMap(index)) throw new FormatError('index is not a map');
    if (index.format !== 'dcf') throw new FormatError(`index format is ${JSON.stringify(index.format)}, not "dcf"`);
    const v = index.version;
    if (!Array.isArray(v) || v.length !== 2 || !isInt(v[0]) || !isInt(v[1])) throw new FormatError('index version is not [major, minor]');
    if (v[0] !== FORMAT_VERSION[0]) {
      throw new FormatError(`unsupported format version ${v[0]}.${v[1]}; this reader implements ${FORMAT_VERSION[0]}.${FORMAT_VERSION[1]}`);
    }
    this.version = v.slice();
    if (index.producer !== undefined && typeof index.producer !== 'string') throw new FormatError('index producer is not a string');
    this.producer = index.producer ?? null;
    const md = index.metadata ?? {};
    if (!isMap(md)) throw new FormatError('index metadata is not a map');
    for (const [k, val] of Object.entries(md)) if (typeof val !== 'string') throw new FormatError(`metadata ${k} is not a string`);
    this.metadata = md;
    if (!Array.isArray(index.chains)) throw new FormatError('index chains is not an array');
    index.chains.forEach((c, ci) => {
      if (!Array.isArray(c) || c.length === 0) throw new FormatError(`chain ${ci} is not a non-empty array`);
      c.forEach(checkStageDescriptor);
    });
    this.chains = index.chains;
    const tensors = index.tensors;
    if (!Array.isArray(tensors)) throw new FormatError('index tensors is not an array');
    if (tensors.length > this.limits.tensors) throw new LimitError(`${tensors.length} tensors (limit ${this.limits.tensors})`);
    this.entries = [];
    this._byName = new Map();
    let pos = 8;
    for (const e of tensors) {
      // Checked at open, in this order (FORMAT.md 8.2); the same order as dcframe's reader.
      if (!Array.isArray(e) || e.length !== 5 || typeof e[0] !== 'string' || !e.slice(1, 5).every((x) => isInt(x) && x >= 0)) {
        throw new FormatError('malformed tensor entry in the index');
      }
      const [name, offset, recordLength, totalLength, recordCrc] = e;
      if (this._byName.has(name)) throw new FormatError(`duplicate tensor name ${name}`);
      if (offset !== pos) throw new FormatError(`tensor ${name}: record at ${offset}, expected ${pos} (records must tile the file)`);
      if (recordLength > this.limits.recordLength) throw new LimitError(`tensor ${name}: record length ${recordLength} over the limit`);
      if (recordLength < 1 || recordLength > totalLength) throw new FormatError(`tensor ${name}: record length ${recordLength} vs total ${totalLength}`);
      if (offset + totalLength > fileSize) throw new LimitError(`tensor ${name}: ${totalLength} bytes at ${offset} run past the end of the file`);
      if (offset + totalLength > indexOffset) throw new FormatError(`tensor ${name}: extends beyond the index offset`);
      if (recordCrc > 0xffffffff) throw new FormatError(`tensor ${name}: record crc32 out of range`);
      const entry = { name, offset, recordLength, totalLength, recordCrc };
      this._byName.set(name, entry);
      this.entries.push(entry);
      pos = offset + totalLength;
    }
    if (pos !== indexOffset) throw new FormatError(`records end at ${pos} but the index starts at ${indexOffset}`);
    this.names = this.entries.map((x) => x.name);
  }

  /** Parse and check one tensor's record and chunks; returns {record, streams: Map name -> bytes}. */
  _load(entry) {
    const { name, offset, recordLength, totalLength, recordCrc } = entry;
    const recBytes = this.bytes.subarray(offset, offset + recordLength);
    if (crc32(recBytes) !== recordCrc) throw new IntegrityError(`tensor ${name}: record checksum mismatch`);
    const rec = unpack(recBytes, `tensor ${name}: record`);
    if (!isMap(rec)) throw new FormatError(`tensor ${name}: record is not a map`);
    if (rec.name !== name) throw new FormatError(`tensor ${name}: record names ${JSON.stringify(rec.name)}`);
    const { size: itemSize } = dtypeInfo(rec.dtype, `tensor ${name}`);
    if (Array.isArray(rec.shape) && rec.shape.length > this.limits.dims) {
      throw new LimitError(`tensor ${name}: ${rec.shape.length} dimensions (limit ${this.limits.dims})`);
    }
    // Declared size: product(shape) x itemsize, computed without overflow, against min(2^40, max(2^30, 2^20 x file)).
    if (!Array.isArray(rec.shape) || !rec.shape.every((d) => isInt(d) && d >= 0)) throw new FormatError(`tensor ${name}: bad shape`);
    const bound = Math.min(2 ** 40, Math.max(2 ** 30, 2 ** 20 * this.bytes.length));
    let declared = BigInt(itemSize);
    for (const d of rec.shape) declared *= BigInt(d);
    if (declared > BigInt(bound)) throw new LimitError(`tensor ${name}: declared size ${declared} bytes over the limit ${bound}`);
    const nel = checkShape(rec.shape, `tensor ${name}`, this.limits.dims);
    if (!isInt(rec.chain) || rec.chain < 0 || rec.chain >= this.chains.length) throw new FormatError(`tensor ${name}: chain index ${rec.chain} out of range`);
    const chain = this.chains[rec.chain];
    if (!Array.isArray(rec.steps) || rec.steps.length !== chain.length || !rec.steps.every((a) => Array.isArray(a) && a.length > 0)) {
      throw new FormatError(`tensor ${name}: steps do not match its chain (one non-empty array of applications per stage)`);
    }
    if (!Array.isArray(rec.streams)) throw new FormatError(`tensor ${name}: streams is not an array`);
    const end = offset + totalLength;
    let pos = offset + recordLength;
    const b = this.bytes;
    const streams = new Map();
    for (const s of rec.streams) {
      if (!Array.isArray(s) || s.length < 4 || typeof s[0] !== 'string' || !isInt(s[1]) || s[1] < 0 || !isInt(s[2]) ||
          s[2] < 0 || s[2] > 0xffffffff || !Array.isArray(s[3])) {
        throw new FormatError(`tensor ${name}: malformed stream entry`);
      }
      const [sname, size, scrc, chunks] = s;
      if (streams.has(sname)) throw new FormatError(`tensor ${name}: duplicate stream ${sname}`);
      let sum = 0;
      for (const c of chunks) {
        if (!isInt(c) || c < 1) throw new FormatError(`tensor ${name}: stream ${sname} has a chunk length ${c}`);
        if (c > this.limits.chunkLength) throw new LimitError(`tensor ${name}: stream ${sname} has a chunk of ${c} bytes (limit ${this.limits.chunkLength})`);
        sum += c;
      }
      if (sum !== size) throw new FormatError(`tensor ${name}: stream ${sname} chunks add up to ${sum}, size is ${size}`);
      if (size > end - pos) throw new FormatError(`tensor ${name}: stream ${sname} of ${size} bytes extends beyond the tensor`);
      const data = chunks.length === 1 ? null : new Uint8Array(size);
      let got = 0;
      let single = null;
      for (const c of chunks) {
        const hlen = c < 256 ? 2 : c < 65536 ? 3 : 5;
        if (pos + hlen + c > end) throw new FormatError(`tensor ${name}: chunk of stream ${sname} extends beyond the tensor`);
        const h = b[pos];
        let len;
        if (hlen === 2) len = h === 0xc4 ? b[pos + 1] : -1;
        else if (hlen === 3) len = h === 0xc5 ? (b[pos + 1] << 8) | b[pos + 2] : -1;
        else len = h === 0xc6 ? ((b[pos + 1] << 24) >>> 0) + ((b[pos + 2] << 16) | (b[pos + 3] << 8) | b[pos + 4]) : -1;
        if (len !== c) throw new FormatError(`tensor ${name}: chunk header of stream ${sname} at ${pos} is not the shortest bin header for ${c} bytes`);
        const chunk = b.subarray(pos + hlen, pos + hlen + c);
        if (data) data.set(chunk, got);
        else single = chunk;
        got += c;
        pos += hlen + c;
      }
      const bytes = data ?? single ?? new Uint8Array(0);
      if (crc32(bytes) !== scrc) throw new IntegrityError(`tensor ${name}: stream ${sname} checksum mismatch`);
      streams.set(sname, bytes);
    }
    if (pos !== end) throw new FormatError(`tensor ${name}: record and chunks take ${pos - offset} bytes, total_length is ${totalLength}`);
    // Bound on every intermediate stream of the decode (FORMAT.md 8): 8 x max(declared, stored bytes) + 1 MiB.
    const storedBytes = [...streams.values()].reduce((a, x) => a + x.length, 0);
    const outputLimit = 8 * Math.max(Number(declared), storedBytes) + 2 ** 20;
    return { rec, chain, streams, nel, outputLimit };
  }

  /** Decode tensor `name` into {name, dtype, shape, data: typed array}. Errors are the classes of errors.js. */
  read(name) {
    const entry = this._byName.get(name);
    if (!entry) throw new Error(`no tensor named ${name}`);
    const { rec, chain, streams: stored, outputLimit } = this._load(entry);
    const who = `tensor ${name}`;
    // Check every stage exists first, so a missing stage is reported as such (FORMAT.md 6).
    const impls = chain.map((d) => {
      const st = this.stages[d.id];
      if (!st || !Object.hasOwn(this.stages, d.id)) {
        throw new MissingStageError(`${who}: stage '${d.id}' is not available; it is provided by package '${d.package ?? '?'}'`);
      }
      if (d.version > st.version) {
        throw new MissingStageError(`${who}: stage '${d.id}' version ${d.version} is newer than this reader's ${st.version} (package '${d.package ?? '?'}')`);
      }
      if (st.unsupported) st.decode();
      return st;
    });
    const streams = new Map();
    for (const [k, v] of stored) streams.set(k, { kind: 'bytes', data: v });
    for (let i = chain.length - 1; i >= 0; i--) {
      const st = impls[i];
      const apps = rec.steps[i];
      if (!Array.isArray(apps)) throw new FormatError(`${who}: steps[${i}] is not an array`);
      for (let j = apps.length - 1; j >= 0; j--) {
        const app = apps[j];
        if (!Array.isArray(app) || app.length < 3 || typeof app[0] !== 'string' || !Array.isArray(app[1]) || !isMap(app[2])) {
          throw new FormatError(`${who}: malformed application in steps[${i}]`);
        }
        const [input, outputs, meta] = app;
        if (outputs.length !== st.outputs.length) throw new FormatError(`${who}: ${st.id} application has ${outputs.length} outputs, expected ${st.outputs.length}`);
        const ins = outputs.map((o, k) => {
          if (typeof o !== 'string' || !streams.has(o)) throw new FormatError(`${who}: ${st.id} needs stream ${JSON.stringify(o)}, which is absent`);
          const s = streams.get(o);
          if (s.kind !== st.outputs[k].kind) throw new FormatError(`${who}: ${st.id} needs stream ${o} to be ${st.outputs[k].kind}, it is ${s.kind}`);
          return s;
        });
        for (const o of outputs) streams.delete(o);
        if (streams.has(input)) throw new FormatError(`${who}: ${st.id} would overwrite stream ${input}`);
        let out;
        try {
          out = st.decode(ins, meta, chain[i].config ?? {}, { outputLimit });
        } catch (e) {
          if (e instanceof DcfError) {
            e.message = `${who}: ${e.message}`;
            throw e;
          }
          throw new FormatError(`${who}: ${st.id}: ${e.message}`);
        }
        streams.set(input, out);
      }
    }
    if (streams.size !== 1 || !streams.has('data')) throw new FormatError(`${who}: decoding left streams ${[...streams.keys()].join(', ')}, expected only data`);
    const t = streams.get('data');
    if (t.kind !== 'dense' || t.dtype !== rec.dtype || t.shape.length !== rec.shape.length || t.shape.some((d, k) => d !== rec.shape[k])) {
      throw new FormatError(`${who}: decoded ${t.kind} ${t.dtype} ${JSON.stringify(t.shape)} differs from the record's ${rec.dtype} ${JSON.stringify(rec.shape)}`);
    }
    return { name, dtype: t.dtype, shape: t.shape, data: t.data };
  }

  /** Decode every tensor; a damaged one gives {name, error} instead of stopping the others (FORMAT.md 7). */
  readAll() {
    return this.names.map((n) => {
      try {
        return this.read(n);
      } catch (error) {
        return { name: n, error };
      }
    });
  }
}

/** Convenience: open `bytes` and decode every tensor, throwing the first error. */
export function readDcf(bytes, options) {
  const r = new DcfReader(bytes, options);
  return r.names.map((n) => r.read(n));
}
