// Error classes of FORMAT.md section 9, with the same names as dcframe's, so that the golden invalid vectors can
// state which one a reader must raise.

export class DcfError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** Not a .dcf file, malformed msgpack or fields, an unsupported major version, a stage rejecting its input. */
export class FormatError extends DcfError {}

/** A checksum mismatch (a kind of FormatError). */
export class IntegrityError extends FormatError {}

/** A size, count or offset beyond a limit or beyond the file (a kind of FormatError). */
export class LimitError extends FormatError {}

/** A stage that is not implemented here, or of a newer version than implemented. */
export class MissingStageError extends DcfError {}
