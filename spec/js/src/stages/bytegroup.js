// Stage `bytegroup` (spec/stages/bytegroup.md): byte planes back into elements; floats rotated right by one bit.
import { FormatError, LimitError } from '../errors.js';
import { isMap } from '../mp.js';
import { bytesToTyped, checkShape, dtypeInfo } from '../dtypes.js';
import { checkConfig } from './config.js';

const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);

/** Rotate every w-byte little-endian word of `bytes` right by one bit, in place (w = 2, 4 or 8). */
function rotateRight(bytes, w) {
  const n = bytes.length / w;
  if (w === 2) {
    const u = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    for (let i = 0; i < n; i++) u[i] = (u[i] >>> 1) | ((u[i] & 1) << 15);
  } else if (w === 4) {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, n);
    for (let i = 0; i < n; i++) u[i] = (u[i] >>> 1) | (u[i] << 31);
  } else {
    const u = new Uint32Array(bytes.buffer, bytes.byteOffset, 2 * n);
    for (let i = 0; i < 2 * n; i += 2) {
      const lo = u[i], hi = u[i + 1];
      u[i] = (lo >>> 1) | (hi << 31);
      u[i + 1] = (hi >>> 1) | (lo << 31);
    }
  }
}

export const bytegroup = {
  id: 'bytegroup',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'exponent', kind: 'symbols' }, { name: 'mantissa', kind: 'bytes' }],

  decode([exponent, mantissa], meta, config, ctx = {}) {
    checkConfig('bytegroup', config, {});
    if (!isMap(meta)) throw new FormatError('bytegroup: meta is not a map');
    const { size: w } = dtypeInfo(meta.dtype, 'bytegroup');
    const n = checkShape(meta.shape, 'bytegroup');
    if (exponent.alphabet !== 256) throw new FormatError(`bytegroup: exponent alphabet ${exponent.alphabet}, must be 256`);
    const top = exponent.data, low = mantissa.data;
    if (top.length !== n) throw new FormatError(`bytegroup: exponent plane has ${top.length} symbols, shape needs ${n}`);
    if (low.length !== (w - 1) * n) throw new FormatError(`bytegroup: mantissa planes have ${low.length} bytes, shape needs ${(w - 1) * n}`);
    if (ctx.outputLimit !== undefined && n * w > ctx.outputLimit) throw new LimitError(`bytegroup: ${n * w} bytes of output over the decode bound ${ctx.outputLimit}`);
    const most = meta.dtype === 'BOOL' ? 1 : 255;
    for (let i = 0; i < n; i++) if (top[i] > most) throw new FormatError(`bytegroup: exponent symbol ${top[i]} is not a byte of a ${meta.dtype} tensor`);
    const out = new Uint8Array(n * w);
    for (let i = 0; i < n; i++) out[i * w + w - 1] = top[i];
    for (let p = 1; p < w; p++) {
      const byte = w - 1 - p, base = (p - 1) * n;
      for (let i = 0; i < n; i++) out[i * w + byte] = low[base + i];
    }
    if (w > 1 && FLOATS.has(meta.dtype)) rotateRight(out, w);
    return { kind: 'dense', dtype: meta.dtype, shape: meta.shape.slice(), data: bytesToTyped(out, meta.dtype) };
  },
};
