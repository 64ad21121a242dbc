// prune stage: its stored config is checked key by key (FORMAT.md 4.3), as Python and libdcf do.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkPruneConfig } from '../src/stages/prune.js';
import { FormatError } from '../src/index.js';

test('an unknown key in a stored prune config is a FormatError', () => {
  assert.throws(() => checkPruneConfig({ sparsity: 0.5, threshold: null, scope: 'tensor', extra: 1 }),
    (e) => e instanceof FormatError && /no parameter "extra"/.test(e.message));
});

test('the configs of spec/stages/prune.md are accepted', () => {
  checkPruneConfig({ sparsity: 0.92, threshold: null, scope: 'tensor' });
  checkPruneConfig({ sparsity: null, threshold: 0.0213623046875, scope: 'global' });
  checkPruneConfig({ sparsity: 0.5, threshold: null, scope: 'tensor', criterion: 'wanda' });
});
