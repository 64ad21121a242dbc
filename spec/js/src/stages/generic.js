// Stages `zlib`, `zstd`, `lzma`, `bz2` (spec/stages/generic.md). lzma and bz2 are declared unsupported here.
import * as zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { FormatError, LimitError, MissingStageError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { checkConfig, intIn } from './config.js';

function metaSize(id, meta, ctx = {}) {
  if (!isMap(meta) || !isInt(meta.size) || meta.size < 0) throw new FormatError(`${id}: missing or bad size in meta`);
  if (ctx.outputLimit !== undefined && meta.size > ctx.outputLimit) throw new LimitError(`${id}: size ${meta.size} over the decode bound ${ctx.outputLimit}`);
  return meta.size;
}

export const zlibStage = {
  id: 'zlib',
  version: 1,
  takes: ['bytes'],
  outputs: [{ name: 'data', kind: 'bytes' }],
  decode([input], meta, config, ctx) {
    checkConfig('zlib', config, { level: intIn(0, 9) });
    const size = metaSize('zlib', meta, ctx);
    let res;
    try {
      res = zlib.inflateSync(input.data, { maxOutputLength: Math.max(size + 1, 1), info: true });
    } catch (e) {
      if (e && e.code === 'ERR_BUFFER_TOO_LARGE') throw new FormatError(`zlib: output longer than size ${size}`);
      throw new FormatError(`zlib: corrupt stream (${e.message})`);
    }
    const out = res.buffer;
    if (out.length !== size) throw new FormatError(`zlib: output is ${out.length} bytes, meta says ${size}`);
    if (res.engine.bytesWritten !== input.data.length) {
      throw new FormatError(`zlib: ${input.data.length - res.engine.bytesWritten} bytes of trailing data`);
    }
    return { kind: 'bytes', data: new Uint8Array(out.buffer, out.byteOffset, out.length) };
  },
  encode(input, config) {
    const level = config && isInt(config.level) ? config.level : 9;
    const b = zlib.deflateSync(input.data, { level });
    return { outputs: [{ kind: 'bytes', data: new Uint8Array(b.buffer, b.byteOffset, b.length) }], meta: { size: input.data.length } };
  },
};

// Read a zstd frame header (RFC 8878 3.1.1.1): the window size the decoder would allocate and the content size.
function zstdHeader(d) {
  if (d.length < 6 || d[0] !== 0x28 || d[1] !== 0xb5 || d[2] !== 0x2f || d[3] !== 0xfd) {
    throw new FormatError('zstd: not a Zstandard frame (bad magic)');
  }
  const fhd = d[4];
  const fcsFlag = fhd >> 6, single = (fhd >> 5) & 1, dictFlag = fhd & 3;
  if (fhd & 8) throw new FormatError('zstd: reserved bit set in frame header');
  let p = 5;
  let window = null;
  if (!single) {
    const wd = d[p++];
    const base = 2 ** (10 + (wd >> 3));
    window = base + (base / 8) * (wd & 7);
  }
  p += [0, 1, 2, 4][dictFlag];
  if (dictFlag) throw new FormatError('zstd: frames needing a dictionary are not supported');
  const fcsBytes = fcsFlag === 0 ? single : 1 << fcsFlag;
  if (p + fcsBytes > d.length) throw new FormatError('zstd: truncated frame header');
  let fcs = null;
  if (fcsBytes) {
    fcs = 0;
    for (let i = fcsBytes - 1; i >= 0; i--) fcs = fcs * 256 + d[p + i];
    if (fcsBytes === 2) fcs += 256;
  }
  return { window: single ? fcs : window, contentSize: fcs, checksum: (fhd >> 2) & 1, headerSize: p + fcsBytes };
}

// The byte length of the one frame at the start of `d` (RFC 8878 3.1.1): its header, every block up to the last
// (3-byte header: last flag, type, size), then the 4-byte checksum if the header asks for one. A stream that ends
// inside the frame is truncated; bytes after it (another frame, skippable or not) are trailing data.
function zstdFrameLength(d, h) {
  let p = h.headerSize;
  for (;;) {
    if (p + 3 > d.length) throw new FormatError('zstd: stream is truncated (it ends inside the frame)');
    const bh = d[p] | (d[p + 1] << 8) | (d[p + 2] << 16);
    const type = (bh >> 1) & 3, bsize = bh >>> 3;
    if (type === 3) throw new FormatError('zstd: reserved block type');
    p += 3 + (type === 1 ? 1 : bsize);
    if (bh & 1) break;
  }
  p += 4 * h.checksum;
  if (p > d.length) throw new FormatError('zstd: stream is truncated (it ends inside the frame)');
  return p;
}

export const zstdStage = {
  id: 'zstd',
  version: 1,
  takes: ['bytes'],
  outputs: [{ name: 'data', kind: 'bytes' }],
  decode([input], meta, config, ctx) {
    checkConfig('zstd', config, { level: intIn(-7, 22) });
    const size = metaSize('zstd', meta, ctx);
    const h = zstdHeader(input.data);
    const length = zstdFrameLength(input.data, h);
    if (length !== input.data.length) throw new FormatError(`zstd: ${input.data.length - length} bytes follow the end of the frame`);
    if (h.contentSize !== null && h.contentSize !== size) {
      throw new FormatError(`zstd: frame content size ${h.contentSize} differs from meta size ${size}`);
    }
    // fzstd allocates the window; bound it by what the output can need (generic.md, Validation).
    if (h.window > Math.max(size, 1 << 20)) throw new FormatError(`zstd: window of ${h.window} bytes for ${size} bytes of output`);
    const out = new Uint8Array(size);
    let n = 0;
    const dec = new ZstdDecompress((chunk) => {
      if (n + chunk.length > size) throw new FormatError(`zstd: output longer than size ${size}`);
      out.set(chunk, n);
      n += chunk.length;
    });
    try {
      dec.push(input.data, true);
    } catch (e) {
      if (e instanceof FormatError) throw e;
      throw new FormatError(`zstd: corrupt stream (${e.message})`);
    }
    if (n !== size) throw new FormatError(`zstd: output is ${n} bytes, meta says ${size}`);
    return { kind: 'bytes', data: out };
  },
};

function unsupported(id) {
  return {
    id,
    version: 1,
    takes: ['bytes'],
    outputs: [{ name: 'data', kind: 'bytes' }],
    unsupported: true,
    decode() { throw new MissingStageError(`stage '${id}' is not supported by dcf-js (no ${id} decoder in JavaScript); recompress the tensor with zstd or zlib`); },
  };
}

export const lzmaStage = unsupported('lzma');
export const bz2Stage = unsupported('bz2');
