// dcf-js: read and write .dcf files (dcframe's container) in Node.js, implemented from spec/FORMAT.md.
export { DcfError, FormatError, IntegrityError, LimitError, MissingStageError } from './errors.js';
export { DcfReader, readDcf, DEFAULT_LIMITS, MAGIC, END_MAGIC, FORMAT_VERSION } from './reader.js';
export { DcfWriter, encodeChain, PRODUCER } from './writer.js';
export { STAGES } from './stages/index.js';
export { DTYPES } from './dtypes.js';
export { crc32 } from './crc32.js';
