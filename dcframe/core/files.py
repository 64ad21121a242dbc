"""Safe output files: atomic writes beside the target, refusal of special files and of overwriting an input,
cleanup of temporaries that killed runs left behind. Shared by the container writer and the model writers."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dcframe.core.errors import ModelIOError


def _short(text: str, limit: int = 200) -> str:
    """Text from a file, cut to `limit` characters for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Temporary outputs are named .{output name}.dcftmp-{pid}-{random}.tmp beside the output: a run that finds one
# whose process is gone and that is older than itself removes it (a SIGKILLed run cannot clean up after itself).
TEMP_TAG = "dcftmp"
_TEMP_NAME = re.compile(r"^\..+\." + TEMP_TAG + r"-(\d+)-\w+\.tmp$")
_STARTED = time.time()  # this process (module import) began no later than this


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def check_output_path(path: str | os.PathLike) -> int | None:
    """Refuse (ModelIOError) an output that exists and is not a regular file, which a rename would replace;
    return an existing file's permission bits, to keep them, or None if there is no such file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelIOError(f"cannot write {path}: it is {_file_kind(st.st_mode)}; dcframe only writes regular "
                           f"files (it would replace it)")
    return stat.S_IMODE(st.st_mode)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if both paths exist and name one file (through symlinks and hard links too)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def refuse_overwriting_input(output: str | os.PathLike, source: str | os.PathLike) -> None:
    """A command must not write over the file it reads."""
    if same_file(output, source):
        raise ModelIOError(f"{output}: the output is the input file {source}; choose another output")


def _process_gone(pid: int) -> bool:
    """True only if no process `pid` exists (POSIX); anywhere else, or if unsure, False."""
    if os.name != "posix" or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, under another user
        return False
    return False


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete dcframe temporaries in `directory` left by processes that are gone and older than this one (files,
    and the staging folders of folder outputs)."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or not _process_gone(int(match[1])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_mtime >= _STARTED or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def make_temporary(path: Path) -> tuple[int, Path, int]:
    """Open a temporary file beside `path` for an atomic write: (descriptor, its path, the mode to give it).

    Checks the output first (a regular file or nothing), and clears stale temporaries of earlier, killed runs.
    """
    directory = path.parent if str(path.parent) else Path(".")
    mode = check_output_path(path)
    remove_stale_temporaries(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_TAG}-{os.getpid()}-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    return fd, Path(tmp), (0o666 & ~_umask()) if mode is None else mode


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path`; flush, fsync and rename it into place only if the block succeeds.

    On any failure (an exception, Ctrl-C, a full disk) the temporary file is removed and `path` is left as it was.
    An existing output keeps its permissions; a new one gets the usual ones (0666 less the umask).
    """
    path = Path(path)
    fd, tmp, mode = make_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelIOError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(tmp.parent)
