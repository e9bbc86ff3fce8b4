"""What a run prints: progress, and each of our warnings once; libraries' bars and warnings only when asked.

:func:`quiet` scopes the silencing to the block it wraps (a run of the driver), with the public
switches of the libraries (``transformers.utils.logging.set_verbosity_error`` and
``disable_progress_bar``, :func:`warnings.catch_warnings`) and restores them afterwards: importing
plastiscope changes no process-wide state. Inside the block our own warnings (any warning not
raised from a library's files nor a deprecation notice, and the ``plastiscope`` logger's
warnings) are collected and, at the end, each distinct one is emitted once per run, with the
checkpoints it concerned, rather than once per checkpoint. :class:`Progress` draws a bar on a
terminal or in a notebook, and prints plain lines where stderr is a file or a pipe (a log has no
use for escape codes).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("plastiscope")

LIBRARY_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


@dataclass(frozen=True)
class Note:
    """One warning of ours: how it was raised (``"warning"`` or ``"log"``), its category and text."""

    kind: str
    category: type[Warning]
    message: str


@dataclass
class Notes:
    """The warnings collected in a :func:`quiet` block (workers' notes are added with :meth:`extend`)."""

    items: list[Note] = field(default_factory=list)

    def extend(self, notes: Iterable[Note]) -> None:
        """Add notes collected elsewhere (another process's run of a checkpoint)."""
        self.items += list(notes)


LIBRARIES = ("torch", "transformers", "transformer_lens", "huggingface_hub", "accelerate", "peft", "safetensors", "tokenizers",
             "sklearn", "scipy", "numpy", "pandas", "pyarrow", "einops", "tqdm")


def _library_roots() -> list[Path]:
    """Folders of the loaded libraries whose warnings are theirs, not ours."""
    roots = []
    for name in LIBRARIES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            roots.append(Path(module.__file__).resolve().parent)
    return roots


def _is_library(message: warnings.WarningMessage, roots: Sequence[Path]) -> bool:
    """A warning of a library (raised from its files, or a deprecation notice), silenced unless verbose."""
    if issubclass(message.category, LIBRARY_CATEGORIES):
        return True
    if message.filename.startswith("<frozen"):
        return True
    try:
        where = Path(message.filename).resolve()
    except (OSError, ValueError):  # a notebook cell, a string of code: the user's own
        return False
    return any(where.is_relative_to(root) for root in roots)


class _Collect(logging.Filter):
    """Keeps the ``plastiscope`` logger's warnings for the end of the run instead of printing them now."""

    def __init__(self, notes: Notes):
        super().__init__()
        self.notes = notes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        self.notes.items.append(Note("log", UserWarning, record.getMessage()))
        return False


@contextlib.contextmanager
def quiet(verbose: bool = False, names: Sequence[str] = (), emit: bool = True) -> Iterator[Notes]:
    """Silence libraries' progress bars, logs and warnings inside the block, unless ``verbose``.

    Yields the :class:`Notes` of our own warnings raised inside; with ``emit`` they are emitted
    once each when the block ends (:func:`emit_notes`, ``names``: the checkpoints' names, which
    messages start with). With ``verbose`` nothing is silenced or collected.
    """
    notes = Notes()
    if verbose:
        yield notes
        return
    restore = _silence_transformers()
    collect = _Collect(notes)
    log.addFilter(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        roots = _library_roots()  # after the block: the libraries it imported count too
        notes.items[:0] = [Note("warning", w.category, str(w.message)) for w in caught if not _is_library(w, roots)]
    finally:
        log.removeFilter(collect)
        restore()
    if emit:
        emit_notes(notes, names)


def _silence_transformers() -> Any:
    """``transformers``' verbosity to errors and its progress bars off; returns what undoes it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return lambda: None
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def merge(notes: Notes, names: Sequence[str] = ()) -> list[Note]:
    """Each distinct warning once: messages that differ only in the leading ``"{checkpoint}: "`` are one,
    shown with the first checkpoint's text and the names of the others."""
    prefixes = sorted((f"{n}: " for n in names), key=len, reverse=True)
    groups: dict[tuple[type[Warning], str], list[tuple[Note, str | None]]] = {}
    for note in notes.items:
        name, rest = None, note.message
        for prefix in prefixes:
            if note.message.startswith(prefix):
                name, rest = prefix[:-2], note.message[len(prefix):]
                break
        groups.setdefault((note.category, rest), []).append((note, name))
    merged = []
    for members in groups.values():
        first = members[0][0]
        others = list(dict.fromkeys(n for _, n in members[1:] if n is not None and n != members[0][1]))
        text = first.message + (f" (also {', '.join(others)})" if others else "")
        kind = "warning" if any(n.kind == "warning" for n, _ in members) else "log"
        merged.append(Note(kind, first.category, text))
    return merged


def emit_notes(notes: Notes, names: Sequence[str] = ()) -> None:
    """Emit each distinct collected warning once: as a warning if it was raised as one, else on the log."""
    for note in merge(notes, names):
        if note.kind == "warning":  # no source line to echo: the text says what and where
            warnings.warn_explicit(note.message, note.category, "plastiscope", 0, module="plastiscope")
        else:
            log.warning(note.message)


def interactive() -> bool:
    """Whether bars can be drawn: stderr is a terminal, or this is a notebook kernel."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progress:
    """Progress over ``total`` items: a tqdm bar where :func:`interactive`, plain lines otherwise, nothing when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "ckpt"):
        self.total, self.desc, self.done, self.start = total, desc, 0, time.time()
        self.enabled = enabled and total > 0
        self.bar = None
        if self.enabled and interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, what: str = "") -> None:
        """One more item done (``what``: its name, shown on the plain line)."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        print(f"{self.desc} {self.done}/{self.total}{' ' + what if what else ''} ({time.time() - self.start:.0f} s)",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar, if one is drawn."""
        if self.bar is not None:
            self.bar.close()
