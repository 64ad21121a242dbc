// Stored stage configs (FORMAT.md 4.3): a reader validates every key of a stage's config against its page's
// Configuration table, even keys its decoder does not use; an unknown key or a bad value is a FormatError.
import { FormatError } from '../errors.js';
import { isInt, isMap } from '../mp.js';

/** An integer (not a boolean, not a float) in lo..hi. */
export const intIn = (lo, hi) => (v) => isInt(v) && v >= lo && v <= hi;
/** nil or a value the given check accepts. */
export const orNull = (check) => (v) => v === null || check(v);
/** One of the given strings. */
export const oneOf = (...names) => (v) => typeof v === 'string' && names.includes(v);

/** Check `config` (a map) against {key: check}; absent keys take their defaults. Returns the config. */
export function checkConfig(id, config, checks) {
  const c = config ?? {};
  if (!isMap(c)) throw new FormatError(`${id}: stored config is not a map`);
  for (const [k, v] of Object.entries(c)) {
    if (!Object.hasOwn(checks, k)) throw new FormatError(`${id}: stored config has no parameter ${JSON.stringify(k)}`);
    if (!checks[k](v)) throw new FormatError(`${id}: stored config ${k}=${JSON.stringify(v)} is not allowed`);
  }
  return c;
}
