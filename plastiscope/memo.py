"""Intermediate results computed once and reused, keyed like the results cache.

Some analyses need a number that does not depend on the checkpoint at hand: the probes of a
random-init model of the same architecture, a reference model's losses. A :class:`Memo` keeps
such values under a key built from everything they depend on (the same hashing as the results
cache, :func:`plastiscope.hashing.config_hash`): in this process (a few, least recently used
first out) and, when the runner has a results folder, on disk under ``cache/memo/`` so a rerun
or another process reuses them. On disk a value is a pandas DataFrame (parquet) or a numpy
array (``.npy``, read with ``allow_pickle=False``); nothing is ever unpickled. File digests
live in :mod:`plastiscope.hashing`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from plastiscope.hashing import atomic_write, config_hash

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
        atomic_write(self.root / f"{name}{suffix}", lambda tmp: _save(value, tmp))


def _save(value: Any, tmp: str) -> None:
    """A DataFrame as parquet, anything else as a numpy array (never pickled), into the file ``tmp``."""
    if isinstance(value, pd.DataFrame):
        value.to_parquet(tmp, index=False)
    else:
        with open(tmp, "wb") as f:  # a file object: np.save adds no ".npy" to the name
            np.save(f, np.asarray(value), allow_pickle=False)


def _copy(value: Any) -> Any:
    return value.copy()
