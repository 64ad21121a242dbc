// Stage `sparse` (spec/stages/sparse.md): relative-index positions (fillers = symbol 0) + the stored values.
import { FormatError, LimitError } from '../errors.js';
import { isInt, isMap } from '../mp.js';
import { DTYPES, bitsView } from '../dtypes.js';
import { checkConfig, intIn } from './config.js';

function indexBits(config) {
  checkConfig('sparse', config, { index_bits: intIn(1, 16) });
  const b = isMap(config) && config.index_bits !== undefined ? config.index_bits : 5;
  if (!isInt(b) || b < 1 || b > 16) throw new FormatError(`sparse: index_bits ${b} outside 1..16`);
  return b;
}

function checkShape(shape) {
  if (!Array.isArray(shape) || shape.length > 32) throw new FormatError('sparse: meta shape missing or over 32 dimensions');
  let n = 1;
  for (const d of shape) {
    if (!isInt(d) || d < 0) throw new FormatError(`sparse: bad dimension ${d}`);
    n *= d;
    if (n > 2 ** 40) throw new FormatError('sparse: shape product above 2^40');
  }
  return n;
}

export const sparse = {
  id: 'sparse',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'positions', kind: 'symbols' }, { name: 'values', kind: 'dense' }],

  decode([positions, values], meta, config, ctx = {}) {
    const M = 2 ** indexBits(config) - 1;
    if (!isMap(meta)) throw new FormatError('sparse: meta is not a map');
    const shape = meta.shape;
    const n = checkShape(shape);
    if (positions.alphabet !== M + 1) throw new FormatError(`sparse: positions alphabet ${positions.alphabet}, expected ${M + 1}`);
    if (values.shape.length !== 1) throw new FormatError(`sparse: values stream has ${values.shape.length} dimensions, expected 1`);
    const pos = positions.data;
    const c = values.data.length;
    let nz = 0;
    for (let i = 0; i < pos.length; i++) {
      const s = pos[i];
      if (s > M) throw new FormatError(`sparse: position symbol ${s} above ${M}`);
      if (s !== 0) nz++;
    }
    if (nz !== c) throw new FormatError(`sparse: ${nz} stored positions but ${c} values`);
    if (pos.length > 0 && pos[pos.length - 1] === 0) throw new FormatError('sparse: positions end with a filler');
    // The last placed position is the sum of all symbols (fillers count M): check it before allocating.
    let q = -1;
    for (let i = 0; i < pos.length; i++) q += pos[i] === 0 ? M : pos[i];
    if (q >= n) throw new FormatError(`sparse: stored position ${q} beyond ${n} elements`);
    const bytes = n * DTYPES[values.dtype].size;
    if (ctx.outputLimit !== undefined && bytes > ctx.outputLimit) throw new LimitError(`sparse: ${bytes} bytes of output over the decode bound ${ctx.outputLimit}`);
    const out = new DTYPES[values.dtype].array(n);
    const src = bitsView(values.data), dst = bitsView(out);
    const sw = src.words, dw = dst.words;
    q = -1;
    let j = 0;
    if (src.k === 1) {
      for (let i = 0; i < pos.length; i++) {
        const s = pos[i];
        if (s === 0) q += M;
        else { q += s; dw[q] = sw[j++]; }
      }
    } else {
      for (let i = 0; i < pos.length; i++) {
        const s = pos[i];
        if (s === 0) q += M;
        else { q += s; dw[2 * q] = sw[2 * j]; dw[2 * q + 1] = sw[2 * j + 1]; j++; }
      }
    }
    return { kind: 'dense', dtype: values.dtype, shape: shape.slice(), data: out };
  },
};
