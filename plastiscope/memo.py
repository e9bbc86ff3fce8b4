"""Intermediate results computed once and reused, keyed like the results cache.

Some analyses need a number that does not depend on the checkpoint at hand: the probes of a
random-init model of the same architecture, a reference model's losses. A :class:`Memo` keeps
such values under a key built from everything they depend on (the same hashing as the results
cache, :func:`plastiscope.results.config_hash`): in this process (a few, least recently used
first out) and, when the runner has a results folder, on disk under ``cache/memo/`` so a rerun
or another process reuses them. On disk a value is a pandas DataFrame (parquet) or a numpy
array (``.npy``, read with ``allow_pickle=False``); nothing is ever unpickled.

File digests are the other such value: :class:`FileHashes` hashes a checkpoint's files once and
reuses a digest while the file's size, modification and change times and inode are unchanged,
so resuming a sweep of 16 GB checkpoints does not re-read them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from plastiscope.results import config_hash

log = logging.getLogger("plastiscope")

T = TypeVar("T", pd.DataFrame, np.ndarray)


class Memo:
    """Values by ``(kind, key)``: in memory (LRU of ``size``) and, with ``root``, as files there."""

    def __init__(self, root: str | Path | None = None, size: int = 8):
        self.root = Path(root) if root is not None else None
        self.size = size
        self._values: OrderedDict[str, Any] = OrderedDict()

    def _name(self, kind: str, key: Mapping[str, Any]) -> str:
        return f"{kind}-{config_hash({'kind': kind, **dict(key)})}"

    def get(self, kind: str, key: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """The value stored under ``(kind, key)``, computed by ``compute()`` on first use."""
        name = self._name(kind, key)
        if name in self._values:
            self._values.move_to_end(name)
            return _copy(self._values[name])
        value = self._read(name)
        if value is None:
            value = compute()
            self._write(name, value)
        self._values[name] = value
        while len(self._values) > self.size:
            self._values.popitem(last=False)
        return _copy(value)

    def _read(self, name: str) -> Any:
        if self.root is None:
            return None
        for suffix, reader in ((".parquet", pd.read_parquet), (".npy", lambda p: np.load(p, allow_pickle=False))):
            path = self.root / f"{name}{suffix}"
            if path.exists():
                try:
                    return reader(path)
                except Exception as err:  # unreadable: recompute, never fail on a cache
                    log.warning("%s: unreadable memo file (%s); recomputing it", path, err)
        return None

    def _write(self, name: str, value: Any) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        suffix = ".parquet" if isinstance(value, pd.DataFrame) else ".npy"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}-", suffix=suffix)
        os.close(fd)
        try:
            if isinstance(value, pd.DataFrame):
                value.to_parquet(tmp, index=False)
            else:
                np.save(tmp, np.asarray(value), allow_pickle=False)
            os.replace(tmp, self.root / f"{name}{suffix}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _copy(value: Any) -> Any:
    return value.copy()


# ---------------------------------------------------------------------- file digests
def hash_file(path: str | Path) -> str:
    """BLAKE2b (128-bit) hex digest of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _signature(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a stored digest to stand: size, mtime, ctime (ns), inode, device."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class FileHashes:
    """Digests of files by resolved path, reused while :func:`_signature` is unchanged.

    Files of at least ``min_size`` bytes are remembered (in memory and, with ``path``, in a
    JSON file, merged under a lock on save); smaller ones are simply re-read. A file that
    changed while it was read is not remembered. ``path`` lives in a results folder
    (``cache/file-hashes.json``), so a resumed sweep reuses its digests.
    """

    def __init__(self, path: str | Path | None = None, min_size: int = 1 << 20):
        self.path = Path(path) if path is not None else None
        self.min_size = min_size
        self._entries: dict[str, list] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                self._entries = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 6}
            except (OSError, ValueError) as err:  # unreadable: rehash, never fail on a cache
                log.warning("%s: unreadable file-hash cache (%s); files will be hashed again", self.path, err)

    def digest(self, file: str | Path) -> str:
        """The digest of ``file`` (symlinks followed): remembered if unchanged, else read and hashed."""
        real = os.path.realpath(file)
        before = _signature(os.stat(real))
        entry = self._entries.get(real)
        if entry is not None and entry[:5] == before:
            return entry[5]
        value = hash_file(real)
        if before[0] >= self.min_size and _signature(os.stat(real)) == before:
            self._entries[real] = [*before, value]
            self._dirty = True
        return value

    def save(self) -> None:
        """Merge the remembered digests into ``path`` (atomically, under a lock); no-op without a path."""
        if self.path is None or not self._dirty:
            return
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged: dict[str, list] = {}
            if self.path.exists():
                with contextlib.suppress(OSError, ValueError):
                    merged = json.loads(self.path.read_text())
            merged.update(self._entries)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".file-hashes-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f)
            os.replace(tmp, self.path)
        self._dirty = False


_PROCESS_HASHES = FileHashes()  # in memory, for this process: used outside any using_file_hashes block
_FILE_HASHES: ContextVar[FileHashes | None] = ContextVar("plastiscope_file_hashes", default=None)


def file_digest(file: str | Path) -> str:
    """The digest of ``file`` through the :class:`FileHashes` in use (see :func:`using_file_hashes`)."""
    return (_FILE_HASHES.get() or _PROCESS_HASHES).digest(file)


@contextlib.contextmanager
def using_file_hashes(hashes: FileHashes) -> Iterator[FileHashes]:
    """Within the block, :func:`file_digest` uses ``hashes``; they are saved when the block ends."""
    token = _FILE_HASHES.set(hashes)
    try:
        yield hashes
    finally:
        _FILE_HASHES.reset(token)
        hashes.save()
