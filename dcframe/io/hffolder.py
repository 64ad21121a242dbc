"""Hugging Face model folders in and out, without transformers: a model.safetensors or shards with their index, and
the folder's small non-weight files (config, tokenizer, generation config).

`read_folder(dir)` checks the folder (the index against the shards, the other files against the limits of
FORMAT.md 3.3) and gives a mapping of the checkpoint's tensors with the `Layout` a container stores;
`write_folder(dir, container)` recreates the folder from a container. Pickled weights are never read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcframe.core.container import (
    INDEX_SUFFIX,
    MAX_FILES,
    MAX_FILES_BYTES,
    SHARD_SUFFIX,
    Container,
    Layout,
    _check_writable,
    file_name_problem,
)
from dcframe.core.dtypes import numpy_dtype
from dcframe.core.errors import DcfError, FormatError, ModelIOError
from dcframe.core.files import TEMP_TAG, _short, _sync_dir, _umask, remove_stale_temporaries
from dcframe.core.streams import Dense
from dcframe.io.modelio import LazyTensors, _no_duplicates, read_model, write_model_stream

SINGLE = "model.safetensors"
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.save/pickle weights: never read
MAX_INDEX_JSON = 64 << 20
CONVERT = ("convert it to safetensors first, e.g. with transformers: AutoModel.from_pretrained(dir)"
           ".save_pretrained(dir, safe_serialization=True)")


class ModelFolder(Mapping[str, Dense]):
    """The tensors of a Hugging Face folder, shard by shard, each loaded lazily from its shard.

    `layout` is what a container stores about the files; `skipped` names what the folder holds but is not stored
    (subfolders, pickled weights beside the safetensors ones).
    """

    def __init__(self, path: Path, shards: list[LazyTensors], layout: Layout, skipped: list[str]) -> None:
        self.path, self.shards, self.layout, self.skipped = path, shards, layout, skipped
        self.reopenable = True

    def __getitem__(self, name: str) -> Dense:
        return self.shards[self.layout.shard_of[name]][name]

    def __iter__(self) -> Iterator[str]:
        for shard in self.shards:
            yield from shard

    def __len__(self) -> int:
        return len(self.layout.shard_of)

    def nbytes(self, name: str) -> int:
        """The bytes of one tensor's data, from its shard's header."""
        return self.shards[self.layout.shard_of[name]].nbytes(name)

    def source(self, name: str) -> tuple[str, int, int] | None:
        """Where a worker process re-opens this tensor: its shard."""
        return self.shards[self.layout.shard_of[name]].source(name)


def is_folder(path: str | os.PathLike) -> bool:
    """True if `path` is a directory (a model folder to read or write)."""
    return os.path.isdir(path)


def read_folder(path: str | os.PathLike) -> ModelFolder:
    """Open a Hugging Face folder: its weights (one model.safetensors, or the shards its index lists) and its small
    files. Every problem is one ModelIOError naming the file."""
    path = Path(path)
    files, dirs = _entries(path)
    pickles = sorted(n for n in files if n.lower().endswith(PICKLES) or n.lower().endswith(".bin.index.json"))
    index_file, shard_names, weight_map, index_metadata = _weights(path, files, pickles)
    shards = [read_model(path / name) for name in shard_names]
    shard_of = _shard_of(path, index_file, shard_names, shards, weight_map)
    used = {*shard_names, *([index_file] if index_file else [])}
    small = _small_files(path, [n for n in files if n not in used and n not in pickles])
    skipped = [f"{n}/ (a subfolder)" for n in dirs if not n.startswith(".")]
    skipped += [f"{n} (a pickle, never read; the safetensors weights are stored)" for n in pickles]
    layout = Layout([(n, dict(s.metadata)) for n, s in zip(shard_names, shards, strict=True)], shard_of,
                    index_file, index_metadata, small)
    return ModelFolder(path, shards, layout, skipped)


def _weights(path: Path, files: Mapping[str, os.stat_result],
             pickles: list[str]) -> tuple[str | None, list[str], dict[str, str] | None, dict]:
    """Which files hold the weights: (index file or None, shard names, weight map or None, index metadata)."""
    indexes = sorted(n for n in files if n.endswith(INDEX_SUFFIX))
    weights = sorted(n for n in files if n.endswith(SHARD_SUFFIX))
    if len(indexes) > 1:
        raise ModelIOError(f"{path}: several safetensors indexes ({', '.join(indexes)}); keep one")
    if indexes:
        index_file, (shard_names, weight_map, index_metadata) = indexes[0], _read_index(path / indexes[0], files)
    elif SINGLE in weights or len(weights) == 1:
        index_file, weight_map, index_metadata = None, None, {}
        shard_names = [SINGLE if SINGLE in weights else weights[0]]
    elif weights:
        raise ModelIOError(f"{path}: several .safetensors files ({', '.join(weights[:4])}...) and no "
                           f"model.safetensors.index.json saying which hold the model")
    elif pickles:
        raise ModelIOError(f"{path / pickles[0]}: pickled weights; dcframe never unpickles: {CONVERT}")
    else:
        raise ModelIOError(f"{path}: no model.safetensors (nor shards with model.safetensors.index.json)")
    stray = next((n for n in weights if n not in shard_names), None)
    if stray is not None:
        raise ModelIOError(f"{path / stray}: a .safetensors file that is not part of the model's weights"
                           f"{f' (not in {index_file})' if index_file else ''}; move it out of the folder")
    return index_file, shard_names, weight_map, index_metadata


def _entries(path: Path) -> tuple[dict[str, os.stat_result], list[str]]:
    """The regular files (symlinks followed, as in a hub cache) and the subfolders of a folder."""
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        raise ModelIOError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
    files, dirs = {}, []
    for entry in entries:
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            raise ModelIOError(f"{entry.path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            dirs.append(entry.name)
        elif stat.S_ISREG(st.st_mode):
            files[entry.name] = st
        else:
            raise ModelIOError(f"{entry.path}: not a regular file nor a folder; remove it from the model folder")
    return files, sorted(dirs)


def _read_index(path: Path, files: Mapping[str, os.stat_result]) -> tuple[list[str], dict[str, str], dict]:
    """The shards (in name order), the weight map and the metadata (without total_size) of an index file."""
    if files[path.name].st_size > MAX_INDEX_JSON:
        raise ModelIOError(f"{path}: {files[path.name].st_size} bytes, over the {MAX_INDEX_JSON}-byte limit for an "
                           f"index file")
    try:
        doc = json.loads(path.read_bytes(), object_pairs_hook=_no_duplicates)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelIOError(f"{path}: not a valid index file ({_short(str(exc) or type(exc).__name__)})") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not (isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())):
        raise ModelIOError(f"{path}: weight_map must map every tensor name to a shard file name")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelIOError(f"{path}: metadata is not a JSON object")
    metadata = {k: v for k, v in metadata.items() if k != "total_size"}  # recomputed when the folder is written
    try:
        _check_writable(metadata, f"{path}: metadata", depth=3)  # index, layout, this map
    except FormatError as exc:
        raise ModelIOError(str(exc)) from None
    shard_names = sorted(set(weight_map.values()))
    for name in shard_names:
        why = file_name_problem(name) or (None if name.endswith(SHARD_SUFFIX) else f"not a {SHARD_SUFFIX} file")
        if why:
            raise ModelIOError(f"{path}: shard {_short(repr(name))}: {why}")
        if name not in files:
            raise ModelIOError(f"{path}: names shard {name}, which the folder does not have")
    return shard_names, weight_map, metadata


def _shard_of(path: Path, index_file: str | None, names: list[str], shards: list[LazyTensors],
              weight_map: dict[str, str] | None) -> dict[str, int]:
    """Tensor name -> shard number; with an index, every listed tensor in exactly the shard it names."""
    shard_of: dict[str, int] = {}
    for i, shard in enumerate(shards):
        for tensor in shard:
            if tensor in shard_of:
                raise ModelIOError(f"{path / names[i]}: tensor '{_short(tensor)}' is also in "
                                   f"{names[shard_of[tensor]]}; a tensor belongs to one shard")
            shard_of[tensor] = i
    if weight_map is None:
        return shard_of
    number = {name: i for i, name in enumerate(names)}
    for tensor, shard in weight_map.items():
        if shard_of.get(tensor) != number[shard]:
            raise ModelIOError(f"{path / index_file}: tensor '{_short(tensor)}' is listed in {shard}, which does "
                               f"not hold it")
    unlisted = next((t for t in shard_of if t not in weight_map), None)
    if unlisted is not None:
        raise ModelIOError(f"{path / names[shard_of[unlisted]]}: tensor '{_short(unlisted)}' is not in "
                           f"{index_file}")
    return shard_of


def _small_files(path: Path, names: list[str]) -> dict[str, bytes]:
    """The folder's other files, each name and the total size checked against the limits (FORMAT.md 3.3)."""
    out: dict[str, bytes] = {}
    total = 0
    if len(names) > MAX_FILES:
        raise ModelIOError(f"{path}: {len(names)} files besides the weights, over the limit of {MAX_FILES}")
    for name in sorted(names):
        why = file_name_problem(name)
        if why:
            raise ModelIOError(f"{path / _short(name)}: cannot store this file ({why})")
        try:
            with open(path / name, "rb") as f:
                data = f.read(MAX_FILES_BYTES - total + 1)  # never more than the limit allows, whatever stat said
        except OSError as exc:
            raise ModelIOError(f"{path / name}: cannot read it ({exc.strerror or exc})") from None
        total += len(data)
        if total > MAX_FILES_BYTES:
            raise ModelIOError(f"{path / name}: the folder's non-weight files exceed {MAX_FILES_BYTES >> 20} MiB "
                               f"with this one; move it (or other large files) out of the folder")
        out[name] = data
    return out


def write_folder(out: str | os.PathLike, container: Container, single_file: bool = False, overwrite: bool = False,
                 progress: Callable[[str, int], None] | None = None, executor: Any = None,
                 jobs: int = 1) -> list[str]:
    """Recreate a model folder in `out` (new or empty; with `overwrite`, a non-empty one, see README): the shards
    with their `__metadata__`, the index, the small files; or with `single_file` one model.safetensors. Written in a
    hidden folder beside `out`, moved into place only when complete. Returns the file names written.
    With `executor` (daskexec.DaskExecutor), the shards are decoded and written by its workers, one task
    per shard, into that hidden folder (which the workers must reach, as they must reach the container). Else
    `jobs` threads decode the tensors where their chains allow it (Container.read_many)."""
    out = Path(out)
    existing = _existing(out)
    if existing and not overwrite:
        raise ModelIOError(f"{out}: the folder is not empty ({len(existing)} entries); choose a new or empty folder "
                           f"(or --force to replace its model files)")
    layout = container.layout() or Layout([(SINGLE, {})], dict.fromkeys(container.names, 0))
    files = _plan(container, layout, single_file, jobs)
    parent = out.parent if str(out.parent) else Path(".")
    remove_stale_temporaries(parent)  # staging folders of killed runs
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{TEMP_TAG}-{os.getpid()}-", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise ModelIOError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        shards = {name: w for name, w in files.items() if isinstance(w, ShardFile)}
        if executor is not None and len(shards) > 1:
            stamp = os.stat(container.path)
            executor.write_shards(str(container.path), (stamp.st_mtime_ns, stamp.st_size),
                                  {str(staging / name): (w.names, w.metadata) for name, w in shards.items()},
                                  progress)
            files = {name: w for name, w in files.items() if name not in shards}
        for name, write in files.items():
            write(staging / name, progress)
        os.chmod(staging, 0o777 & ~_umask())
        _move_into(staging, out, existing, set(files))
    except OSError as exc:
        raise ModelIOError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(files)


def _existing(out: Path) -> list[str]:
    """The entries of an existing output folder ([] for a new one); anything but a folder is refused."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ModelIOError(f"cannot write {out}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ModelIOError(f"cannot write the folder {out}: a file of that name exists")
    return sorted(os.listdir(out))


Writer = Callable[[Path, Callable[[str, int], None] | None], None]


def _plan(container: Container, layout: Layout, single_file: bool, jobs: int = 1) -> dict[str, Writer]:
    """File name -> how to write it: each shard (or the merged file), the index, the small files."""
    names = container.names
    specs = {name: container.header(name) for name in names}
    groups: dict[str, list[str]] = {}
    if single_file or layout.index_file is None and len(layout.shards) == 1:
        target = SINGLE if single_file else layout.shards[0][0]
        groups[target] = names
        metadata = {target: layout.common_metadata() if single_file else layout.shards[0][1]}
    else:
        for name in names:
            groups.setdefault(layout.shards[layout.shard_of[name]][0], []).append(name)
        metadata = dict(layout.shards)
    plan: dict[str, Writer] = {}
    for shard, members in groups.items():
        plan[shard] = ShardFile(container, members, metadata.get(shard) or None, jobs)
    if len(groups) > 1 or not single_file and layout.index_file is not None:
        index_file = layout.index_file or SINGLE + ".index.json"
        plan[index_file] = _index_writer(layout, groups, specs)
    for name, data in (layout.files or {}).items():
        if name in plan:
            raise DcfError(f"{container.path}: the layout stores a file {name}, which is also a weight file")
        plan[name] = lambda path, _progress, data=data: path.write_bytes(data)
    return plan


@dataclass
class ShardFile:
    """A Writer of one weight file: these tensors of the container, in order, with this `__metadata__`."""

    container: Container
    names: list[str]
    metadata: dict[str, str] | None
    jobs: int = 1  # threads decoding (Container.read_many)

    def __call__(self, path: Path, progress: Callable[[str, int], None] | None) -> None:
        container = self.container
        specs = {name: container.header(name) for name in self.names}

        def decoded() -> Iterator[tuple[str, Dense]]:  # a few tensors in memory at a time
            for name, tensor in container.read_many(specs, self.jobs):
                if progress:
                    progress(name, container.entries[name].total_length)
                yield name, tensor

        write_model_stream(path, specs, decoded(), self.metadata)


def write_shard(container_path: str, stamp: tuple[int, int], path: str, names: list[str],
                metadata: dict[str, str] | None) -> int:
    """Worker side of a folder decompress: write one shard from the container (unchanged since `stamp`, its
    mtime_ns and size); returns the stored bytes it decoded."""
    st = os.stat(container_path)
    if (st.st_mtime_ns, st.st_size) != tuple(stamp):
        raise ModelIOError(f"{container_path}: the file changed while it was being decompressed")
    with Container(container_path) as container:
        ShardFile(container, names, metadata)(Path(path), None)
        return sum(container.entries[name].total_length for name in names)


def _index_writer(layout: Layout, groups: dict[str, list[str]], specs: dict) -> Writer:
    total = sum(math.prod(shape) * numpy_dtype(dtype).itemsize for dtype, shape in specs.values())
    weight_map = {name: shard for shard, members in groups.items() for name in members}
    doc = {"metadata": {**(layout.index_metadata or {}), "total_size": total},
           "weight_map": dict(sorted(weight_map.items()))}
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return lambda path, _progress: path.write_text(text, encoding="utf-8")


def _move_into(staging: Path, out: Path, existing: list[str], written: set[str]) -> None:
    """Put the finished folder in place: a rename for a new or empty `out`; else each file moved in, and the weight
    files of another layout removed (a loader would take a stale model.safetensors over the new shards)."""
    if not existing:
        if out.exists():
            out.rmdir()  # empty: replaced by the complete folder in one rename
        os.rename(staging, out)
        _sync_dir(out.parent if str(out.parent) else Path("."))
        return
    for name in existing:
        if name not in written and (name.endswith(SHARD_SUFFIX) or name.endswith(INDEX_SUFFIX)):
            os.unlink(out / name)
    for name in sorted(written):
        os.replace(staging / name, out / name)
    _sync_dir(out)
