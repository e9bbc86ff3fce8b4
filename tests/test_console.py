"""The console of a run: libraries silenced within the block only, our warnings once per run, plain progress lines in logs."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest

from plastiscope.console import Progress, quiet


def _library_warning(text: str) -> None:
    """A warning as transformers would raise it (attributed to one of its files)."""
    import transformers

    warnings.warn_explicit(text, UserWarning, str(Path(transformers.__file__)), 1)


def test_quiet_keeps_our_warnings_once_and_drops_the_libraries():
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    with pytest.warns(UserWarning) as shown:
        with quiet(names=["wd-0", "wd-0.1", "wd-1"]):
            assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.ERROR
            for name in ("wd-0", "wd-0.1", "wd-1"):
                warnings.warn(f"{name}: 3 validation documents repeat training ones", UserWarning)
                logging.getLogger("plastiscope").warning("%s: 3 validation documents repeat training ones", name)
                _library_warning("a library's note on every call")
                warnings.warn("a future change", FutureWarning)
            warnings.warn("wd-0.1: something else", UserWarning)
            exec(compile("import warnings; warnings.warn('from a notebook cell')", "<ipython-input-1>", "exec"))
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
    assert [str(w.message) for w in shown] == [
        "wd-0: 3 validation documents repeat training ones (also wd-0.1, wd-1)", "wd-0.1: something else", "from a notebook cell"]
    assert {w.filename for w in shown} == {"plastiscope"}  # no source line of ours to echo


def test_verbose_lets_everything_through():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet(verbose=True):
            _library_warning("a library's note")
            warnings.warn("a future change", FutureWarning)
    assert [str(w.message) for w in caught] == ["a library's note", "a future change"]


def test_progress_prints_plain_lines_where_stderr_is_no_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = Progress(2, "checkpoints")
    bar.update("wd-0")
    bar.update("wd-1")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" (", 1)[0] for line in lines] == ["checkpoints 1/2 wd-0", "checkpoints 2/2 wd-1"]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    silent = io.StringIO()
    monkeypatch.setattr("sys.stderr", silent)
    Progress(2, "checkpoints", enabled=False).update("wd-0")
    assert silent.getvalue() == ""
