// Stage `uniform` (spec/stages/uniform.md): the stored config is validated, then decoding is kmeans's codebook
// lookup (the same streams and meta), with errors naming this stage. dcf-js does not encode uniform.
import { FormatError } from '../errors.js';
import { checkConfig, oneOf, orNull } from './config.js';
import { kmeansDecode } from './kmeans.js';

const positive = (v) => typeof v === 'number' && v > 0 && Number.isFinite(v);

const CONFIG = {
  step: orNull(positive),
  rel_step: orNull(positive),
  dead_zone: (v) => typeof v === 'number' && v >= 0 && Number.isFinite(v),
  weighting: oneOf('none', 'activation', 'fisher'),
  method: oneOf('round', 'gptq', 'auto'),
};

export function checkUniformConfig(config) {
  const c = checkConfig('uniform', config, CONFIG);
  if (((c.step ?? null) === null) === ((c.rel_step ?? null) === null)) {
    throw new FormatError('uniform: stored config must give exactly one of step and rel_step');
  }
  if (['gptq', 'auto'].includes(c.method ?? 'round') && (c.weighting ?? 'none') !== 'none') {
    throw new FormatError(`uniform: stored config method ${c.method} with weighting ${JSON.stringify(c.weighting)}`);
  }
}

/** kmeans's decoder, its errors renamed: the same class, the message naming uniform. */
function uniformDecode(indices, meta, ctx) {
  try {
    return kmeansDecode(indices, meta, ctx);
  } catch (e) {
    if (e instanceof FormatError && e.message.startsWith('kmeans:')) e.message = `uniform:${e.message.slice(7)}`;
    throw e;
  }
}

export const uniform = {
  id: 'uniform',
  version: 1,
  takes: ['dense'],
  outputs: [{ name: 'indices', kind: 'symbols' }],
  decode([indices], meta, config, ctx) {
    checkUniformConfig(config);
    return uniformDecode(indices, meta, ctx);
  },
};
