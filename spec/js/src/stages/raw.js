// Stage `raw` (spec/stages/raw.md): dense -> little-endian bytes, symbols -> w-byte unsigned integers.
import { FormatError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { DTYPES, bytesToTyped, checkShape, dtypeInfo, typedToBytes } from '../dtypes.js';
import { checkConfig } from './config.js';

function symbolWidth(alphabet) {
  return alphabet <= 256 ? 1 : alphabet <= 65536 ? 2 : 4;
}

export const raw = {
  id: 'raw',
  version: 1,
  takes: ['dense', 'symbols'],
  outputs: [{ name: 'data', kind: 'bytes' }],

  decode([input], meta, config) {
    checkConfig('raw', config, {});
    const bytes = input.data;
    if (!isMap(meta)) throw new FormatError('raw: meta is not a map');
    if (Object.hasOwn(meta, 'dtype')) {
      const { size } = dtypeInfo(meta.dtype, 'raw');
      const n = checkShape(meta.shape, 'raw');
      if (bytes.length !== n * size) {
        throw new FormatError(`raw: ${bytes.length} bytes for ${n} elements of ${meta.dtype}`);
      }
      if (meta.dtype === 'BOOL') {
        for (let i = 0; i < n; i++) if (bytes[i] > 1) throw new FormatError(`raw: BOOL byte ${bytes[i]} at ${i} (only 0 and 1 are booleans)`);
      }
      return { kind: 'dense', dtype: meta.dtype, shape: meta.shape.slice(), data: bytesToTyped(bytes, meta.dtype) };
    }
    const a = meta.alphabet;
    if (!isInt(a) || a < 1 || a > 2 ** 32) throw new FormatError(`raw: alphabet ${a} outside 1..2^32`);
    const w = symbolWidth(a);
    if (bytes.length % w !== 0) throw new FormatError(`raw: ${bytes.length} bytes is not a multiple of width ${w}`);
    const n = bytes.length / w;
    const out = new Uint32Array(n);
    if (w === 1) out.set(bytes);
    else if (w === 2) out.set(bytes.byteOffset % 2 === 0 ? new Uint16Array(bytes.buffer, bytes.byteOffset, n) : new Uint16Array(bytes.slice().buffer));
    else out.set(bytes.byteOffset % 4 === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, n) : new Uint32Array(bytes.slice().buffer));
    if (a < 2 ** 32) {
      for (let i = 0; i < n; i++) if (out[i] >= a) throw new FormatError(`raw: symbol ${out[i]} at ${i} not below alphabet ${a}`);
    }
    return { kind: 'symbols', alphabet: a, data: out };
  },

  encode(input) {
    if (input.kind === 'dense') {
      const { size } = DTYPES[input.dtype];
      const b = typedToBytes(input.data);
      if (b.length !== checkShape(input.shape, 'raw') * size) throw new FormatError('raw: data length does not match shape');
      return { outputs: [{ kind: 'bytes', data: b }], meta: { dtype: input.dtype, shape: input.shape.slice() } };
    }
    const a = input.alphabet;
    const w = symbolWidth(a);
    const T = w === 1 ? Uint8Array : w === 2 ? Uint16Array : Uint32Array;
    const out = T.from(input.data);
    return { outputs: [{ kind: 'bytes', data: typedToBytes(out) }], meta: { alphabet: a } };
  },
};
