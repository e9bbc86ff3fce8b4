"""Hashes and writes that caches rely on: file digests, configuration hashes, the one atomic write.

- :func:`config_hash`: a short stable hash of a configuration (JSON with sorted keys), the key
  of results pieces and memoised values.
- :class:`FileHashes` / :func:`file_digest`: a checkpoint's files hashed once; a digest is
  reused while the file's size, modification and change times and inode are unchanged, so
  resuming a sweep of 16 GB checkpoints does not re-read them.
- :func:`atomic_write`: every file plastiscope writes into a results folder goes through a
  temporary file beside it and an atomic rename (a crash never leaves a half-written file),
  created with the permissions ``open()`` would give it (``0o666`` less the umask).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

log = logging.getLogger("plastiscope")


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of an analysis configuration (JSON with sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file beside it, then rename it into place.

    Readers see the old file or the new one, never half of one; a failed ``write`` leaves the
    old file and no temporary. The temporary (``.{name}-{random}.tmp``) is created with mode
    ``0o666`` filtered by the process umask, as ``open()`` creates files (``tempfile.mkstemp``
    would give ``0o600`` whatever the umask); writers that reopen it by name keep that mode.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}-{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


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
            except (OSError, ValueError, AttributeError) as err:  # unreadable: rehash, never fail on a cache
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
            if not isinstance(merged, dict):
                merged = {}
            merged.update(self._entries)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(merged)))
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
