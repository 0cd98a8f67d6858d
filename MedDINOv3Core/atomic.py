"""Atomic outputs: a file or folder appears complete under its final name, or not at all.

The library's writers of finished outputs (volumes, segmentations, PNGs, RT Structure Sets, model cards, checkpoints,
JSON/CSV/Markdown reports, cache shards and indexes, feature caches) use these helpers: the content is written under
a temporary name in the destination folder (same file system, so the final ``os.replace`` is atomic), given the
permissions an ordinary new file would get (the umask's: ``tempfile`` and safetensors make them private; a folder's
files and subfolders included), and renamed into place. On any error the temporary is removed and an existing output
is left untouched.

- ``atomic_path``: one file; ``write_text`` / ``write_json`` for text.
- ``atomic_directory``: one folder, written inside a ``with`` block (model cards, DICOM CT series).
- ``replace_directory``: the rename step alone, for a folder filled across calls (the feature cache's float16
  memory map is filled in a temporary folder, slice by slice, and renamed by ``CacheWriter.commit``).
- ``atomic_files``: a file with companion files under their own names (a MetaImage ``.mhd`` header and its data file).

Written in place on purpose, so not through these helpers: files that only ever grow or only signal (the
pretraining ``metrics.jsonl`` log, appended line by line; rank 0's empty "slice cache ready" marker), and files
inside a temporary folder that one of the helpers above renames as a whole (the files of a model card or a feature
cache, or a DICOM CT series).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _public_tree(root: Path) -> None:
    """Ordinary permissions for ``root`` and everything in it: folders and executable files 0777, other files 0666,
    less the umask. Writers that create their files privately (``tempfile``, safetensors' ``save_file``: 0600) would
    otherwise leave a shared model card or cache readable by its owner only."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, (0o777 if st.st_mode & stat.S_IXUSR else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (ending in ``suffix``, for writers that pick the format by
    extension); when the block succeeds it replaces ``path``."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _public(tmp_path, directory=False)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it replaces ``path`` (see
    ``replace_directory``)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        replace_directory(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the finished folder ``tmp`` (in ``path``'s folder) to ``path``, with ordinary folder permissions; an
    existing ``path`` is moved aside first, put back if the rename fails, and deleted only once the new folder is in
    place. The folder and everything in it get ordinary permissions (``_public_tree``). Returns ``path``."""
    tmp, target = Path(tmp), Path(path).expanduser()
    _public_tree(tmp)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_files(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` for a writer that writes ``path`` together with companion files
    under their final names (a MetaImage ``.mhd`` header and its ``.raw``/``.zraw`` data file); when the block
    succeeds every file there is renamed into ``path``'s folder, ``path`` itself last, so a reader never finds the
    file without its companions. Each rename is atomic, the set of them is not."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == target.name):
            _public(f, directory=False)
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path).expanduser()


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write JSON atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")
