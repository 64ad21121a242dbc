// Stage `prune` (spec/stages/prune.md): decoding is the identity after checking the config.
import { FormatError } from '../errors.js';
import { isMap } from '../mp.js';

const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);
const CRITERIA = new Set(['magnitude', 'wanda', 'sparsegpt']);

function isNumber(v) {
  return typeof v === 'number';
}

const KEYS = new Set(['sparsity', 'threshold', 'scope', 'criterion']);

export function checkPruneConfig(config) {
  if (!isMap(config)) throw new FormatError('prune: config is not a map');
  // FORMAT.md 4.3: every key is one of the page's Configuration table
  for (const k of Object.keys(config)) {
    if (!KEYS.has(k)) throw new FormatError(`prune: stored config has no parameter ${JSON.stringify(k)}`);
  }
  const s = config.sparsity ?? null, t = config.threshold ?? null, scope = config.scope ?? 'tensor';
  if ((s === null) === (t === null)) throw new FormatError('prune: exactly one of sparsity and threshold must be set');
  if (s !== null && (!isNumber(s) || !(s >= 0 && s <= 1))) throw new FormatError(`prune: sparsity ${s} outside 0..1`);
  if (t !== null && (!isNumber(t) || !(t >= 0))) throw new FormatError(`prune: bad threshold ${t}`);
  if (scope !== 'tensor' && scope !== 'global') throw new FormatError(`prune: scope ${JSON.stringify(scope)}`);
  // `criterion` is absent in magnitude files; when present (even null) it must name a criterion
  const criterion = Object.hasOwn(config, 'criterion') ? config.criterion : 'magnitude';
  if (!CRITERIA.has(criterion)) throw new FormatError(`prune: criterion ${JSON.stringify(criterion)}`);
  if (criterion !== 'magnitude' && (t !== null || scope !== 'tensor')) {
    throw new FormatError(`prune: criterion ${criterion} takes a sparsity with scope tensor only`);
  }
}

export const prune = {
  id: 'prune',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'data', kind: 'dense' }],
  decode([input], _meta, config) {
    checkPruneConfig(config);
    if (!FLOATS.has(input.dtype)) throw new FormatError(`prune: input dtype ${input.dtype} is not a float dtype`);
    return input;
  },
};
