// Writer of the .dcf container (spec/FORMAT.md): encodes tensors through chains and lays out records, chunks, index
// and trailer. Deterministic: the same tensors and chains give the same bytes.
import { FormatError } from './errors.js';
import { crc32 } from './crc32.js';
import { pack } from './mp.js';
import { DTYPES, checkShape } from './dtypes.js';
import { STAGES } from './stages/index.js';
import { END_MAGIC, FORMAT_VERSION, MAGIC } from './reader.js';

export const PRODUCER = 'dcf-js 0.1.0';

function binHeader(n) {
  if (n < 256) return Uint8Array.of(0xc4, n);
  if (n < 65536) return Uint8Array.of(0xc5, n >> 8, n & 255);
  return Uint8Array.of(0xc6, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

function descriptor(st, config) {
  return { id: st.id, version: st.version, config: config ?? {}, package: 'dcframe' };
}

/**
 * Encode a dense stream through `chain` (array of {id, config}), inserting `raw` where FORMAT.md 5 says so.
 * Returns {descriptors, steps, streams: [[name, Uint8Array]...]}.
 */
export function encodeChain(tensor, chain, stages = STAGES) {
  let streams = [['data', { kind: 'dense', dtype: tensor.dtype, shape: tensor.shape.slice(), data: tensor.data }]];
  const descriptors = [];
  const steps = [];
  const apply = (st, config) => {
    const apps = [];
    const next = [];
    for (const [name, s] of streams) {
      if (!st.takes.includes(s.kind)) { next.push([name, s]); continue; }
      const { outputs, meta } = st.encode(s, config ?? {});
      const names = st.outputs.map((o, k) => {
        if (st.outputs.length === 1) return name;
        const taken = next.some(([n]) => n === o.name) || streams.some(([n]) => n === o.name && n !== name);
        return taken ? `${name}.${o.name}` : o.name;
      });
      outputs.forEach((o, k) => next.push([names[k], o]));
      apps.push([name, names, meta]);
    }
    if (apps.length === 0) throw new FormatError(`stage ${st.id} finds no stream it takes`);
    streams = next;
    descriptors.push(descriptor(st, config));
    steps.push(apps);
  };
  for (const { id, config } of chain) {
    const st = stages[id];
    if (!st || !st.encode) throw new FormatError(`dcf-js cannot encode with stage ${id}`);
    if (st.takes.length === 1 && st.takes[0] === 'bytes' && !streams.some(([, s]) => s.kind === 'bytes')) apply(stages.raw, {});
    apply(st, config);
  }
  if (streams.some(([, s]) => s.kind !== 'bytes')) apply(stages.raw, {});
  return { descriptors, steps, streams: streams.map(([n, s]) => [n, s.data]) };
}

/** Builds a .dcf file in memory: add(name, tensor, chain) for each tensor, then finish() gives the bytes. */
export class DcfWriter {
  constructor({ chunkSize = 16 * 2 ** 20, producer = PRODUCER, metadata = {} } = {}) {
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1 || chunkSize > 2 ** 30) throw new RangeError('chunkSize outside 1..2^30');
    this.chunkSize = chunkSize;
    this.producer = producer;
    this.metadata = metadata;
    this.parts = [MAGIC];
    this.pos = MAGIC.length;
    this.chains = [];
    this.chainKeys = new Map();
    this.entries = [];
  }

  /** Encode `tensor` ({dtype, shape, data: typed array}) through `chain` (default: raw) and append it. */
  add(name, tensor, chain = []) {
    if (this.entries.some((e) => e[0] === name)) throw new FormatError(`duplicate tensor name ${name}`);
    if (!Object.hasOwn(DTYPES, tensor.dtype)) throw new FormatError(`unknown dtype ${tensor.dtype}`);
    const n = checkShape(tensor.shape, name);
    if (tensor.data.length !== n || !(tensor.data instanceof DTYPES[tensor.dtype].array)) {
      throw new FormatError(`tensor ${name}: data must be a ${DTYPES[tensor.dtype].array.name} of ${n} elements`);
    }
    const { descriptors, steps, streams } = encodeChain(tensor, chain);
    const key = JSON.stringify(descriptors);
    let ci = this.chainKeys.get(key);
    if (ci === undefined) {
      ci = this.chains.length;
      this.chains.push(descriptors);
      this.chainKeys.set(key, ci);
    }
    const chunkParts = [];
    const streamEntries = streams.map(([sname, bytes]) => {
      const lens = [];
      for (let o = 0; o < bytes.length; o += this.chunkSize) {
        const c = bytes.subarray(o, Math.min(bytes.length, o + this.chunkSize));
        lens.push(c.length);
        chunkParts.push(binHeader(c.length), c);
      }
      return [sname, bytes.length, crc32(bytes), lens];
    });
    const rec = pack({ name, dtype: tensor.dtype, shape: tensor.shape.slice(), chain: ci, steps, streams: streamEntries });
    const total = rec.length + chunkParts.reduce((a, p) => a + p.length, 0);
    this.entries.push([name, this.pos, rec.length, total, crc32(rec)]);
    this.parts.push(rec, ...chunkParts);
    this.pos += total;
    return this;
  }

  /** The whole file. */
  finish() {
    const index = pack({
      format: 'dcf', version: FORMAT_VERSION.slice(), producer: this.producer, metadata: this.metadata,
      chains: this.chains, tensors: this.entries,
    });
    const trailer = new Uint8Array(24);
    const v = new DataView(trailer.buffer);
    v.setBigUint64(0, BigInt(this.pos), true);
    v.setUint32(8, index.length, true);
    v.setUint32(12, crc32(index), true);
    trailer.set(END_MAGIC, 16);
    const parts = [...this.parts, index, trailer];
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }
}
