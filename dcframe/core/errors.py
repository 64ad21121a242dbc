"""The one exception hierarchy of dcframe: every error a user can cause is a DcfError."""

from __future__ import annotations


class DcfError(Exception):
    """Base of every error dcframe raises on purpose; its message says what, where and what to do."""


class FormatError(DcfError):
    """A file is not a valid .dcf container (or not a readable model file)."""


class IntegrityError(FormatError):
    """A checksum did not match: the file was damaged after it was written."""


class LimitError(FormatError):
    """A size, count or length read from a file exceeds a limit or the file itself."""


class MissingStageError(DcfError):
    """A container or pipeline names a stage that is not installed (or not allowed)."""


class PipelineError(DcfError):
    """A pipeline string or chain is malformed or its stages do not fit together."""


class ConfigError(DcfError):
    """A stage was given a parameter it does not accept, or a value out of range."""


class ModelIOError(DcfError):
    """A model file could not be read or written."""
