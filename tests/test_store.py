"""The results store and the cache key: nothing stale, nothing lost, safe with two writers."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_checkpoint import ARCHITECTURES, save
from test_pipeline import CALLS, NORM

import plastiscope.hashing
from plastiscope import Checkpoint, Sweep
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.pipeline import analyze
from plastiscope.results import ResultsStore, load_results, make_frame
from plastiscope.runner import Inputs, cache_key, run_analyses, run_key


@pytest.fixture()
def sweep_copy(tiny_manifest, tmp_path):
    """A private copy of the tiny sweep folder (the tests change its files)."""
    root = tmp_path / "sweep"
    shutil.copytree(tiny_manifest.parent, root)
    return root


def _docs(probe_docs, n=8):
    return Inputs(data=probe_docs.subset(range(n)))


# ---------------------------------------------------------------------- the cache key
def test_changed_tokenizer_invalidates_the_cache(sweep_copy, probe_docs, tmp_path):
    manifest = sweep_copy / "manifest.csv"
    CALLS.clear()
    first, _ = analyze(manifest, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    assert len(CALLS) == 3
    other = train_tokenizer(load_corpus("train", 300).texts[::-1], 512)  # same size, other merges
    other.save_pretrained(sweep_copy / "wd-0.1")
    CALLS.clear()
    second, _ = analyze(manifest, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    assert CALLS == ["wd-0.1"]  # only the checkpoint whose tokenizer changed is recomputed
    changed = lambda frame: frame.query("checkpoint == 'wd-0.1'")["value"].to_numpy()  # noqa: E731
    assert not (changed(first) == changed(second)).all()


def test_hyperparameters_come_from_the_manifest_as_it_is_now(sweep_copy, probe_docs, tmp_path):
    manifest = sweep_copy / "manifest.csv"
    CALLS.clear()
    analyze(manifest, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        row["learning_rate"], row["seed"] = "0.0123", "42"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    info = json.loads((sweep_copy / "wd-0" / "plastiscope.json").read_text())
    (sweep_copy / "wd-0" / "plastiscope.json").write_text(json.dumps({**info, "seed": 99}))  # a hyperparameter file: not content
    CALLS.clear()
    results, _ = analyze(manifest, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    assert CALLS == []  # nothing recomputed
    on_disk = load_results(tmp_path / "res")
    for frame in (results, on_disk):
        assert set(frame["learning_rate"]) == {0.0123} and set(frame["seed"]) == {42}


def test_dtype_and_device_class_are_part_of_the_key(sweep_copy, probe_docs, tmp_path):
    sweep = Sweep.from_manifest(sweep_copy / "manifest.csv")[:1]
    store = ResultsStore(tmp_path / "res")
    CALLS.clear()
    run_analyses(sweep, [NORM], _docs(probe_docs), store=store, progress=False)
    sweep.to(dtype="bfloat16")
    run_analyses(sweep, [NORM], _docs(probe_docs), store=store, progress=False)
    sweep.to(dtype="float32")
    run_analyses(sweep, [NORM], _docs(probe_docs), store=store, progress=False)
    assert CALLS == ["wd-0", "wd-0"]  # bfloat16 computed anew, float32 again from the cache
    key = run_key(NORM, {"layers": 2}, _docs(probe_docs))
    ckpt = sweep[0]
    assert cache_key(key, ckpt.to(device="cpu"))["device"] == "cpu"
    assert cache_key(key, ckpt.to(device_map="auto"))["device"] == "device_map"
    ckpt.to(device_map=None)


def test_options_are_keyed_after_normalisation(sweep_copy, probe_docs, tmp_path):
    sweep = Sweep.from_manifest(sweep_copy / "manifest.csv")[:1]
    store = ResultsStore(tmp_path / "res")
    CALLS.clear()
    run_analyses(sweep, [NORM], _docs(probe_docs), store=store, progress=False)
    run_analyses(sweep, [NORM], _docs(probe_docs), {"norm": {"layers": 2}}, store=store, progress=False)  # the default, spelled out
    assert CALLS == ["wd-0"]
    run_analyses(sweep, [NORM], _docs(probe_docs), {"norm": {"layers": 1}}, store=store, progress=False)
    assert CALLS == ["wd-0", "wd-0"]


def test_replaced_reference_model_recomputes_overfit(sweep_copy, tmp_path):
    sweep = Sweep.from_manifest(sweep_copy / "manifest.csv")[:1]
    reference = tmp_path / "reference"
    shutil.copytree(sweep_copy / "wd-1", reference)
    train, val = load_corpus("train", 40), load_corpus("validation", 40)
    options = {"overfit": {"reference": str(reference), "memorization_max_docs": 0, "n_resamples": 20}}
    store = ResultsStore(tmp_path / "res")
    inputs = Inputs(train_data=train, val_data=val)
    first, failures = run_analyses(sweep, ["overfit"], inputs, options, store=store, progress=False)
    assert failures.empty, failures.to_dict("records")
    again, _ = run_analyses(sweep, ["overfit"], inputs, options, store=store, progress=False)
    assert len(list(store.cache.glob("overfit-*.parquet"))) == 1  # served from the cache
    pd.testing.assert_frame_equal(first, again)
    shutil.copy(sweep_copy / "wd-0.1" / "model.safetensors", reference / "model.safetensors")  # same path, other model
    third, _ = run_analyses(sweep, ["overfit"], inputs, options, store=store, progress=False)
    assert len(list(store.cache.glob("overfit-*.parquet"))) == 2
    auc = lambda f: f.query("metric == 'mia_auc_reference'")["value"].item()  # noqa: E731
    assert auc(third) != auc(first)


# ---------------------------------------------------------------------- hashing large files once
@pytest.fixture()
def big_folder(tmp_path):
    """A checkpoint whose weights exceed the 1 MiB below which files are simply re-read."""
    tokenizer = train_tokenizer(load_corpus("train", 300).texts, 300)
    torch.manual_seed(0)
    model = ARCHITECTURES["gpt2"](len(tokenizer))
    model = type(model)(type(model.config)(**{**model.config.to_dict(), "n_embd": 128}))
    folder = save(model, tokenizer, tmp_path / "big", weight_decay=0.1)
    assert (folder / "model.safetensors").stat().st_size > 1 << 20
    return folder


def test_large_files_are_hashed_once_and_again_when_touched_or_changed(big_folder, tmp_path, monkeypatch):
    reads = []
    real = plastiscope.hashing.hash_file
    monkeypatch.setattr(plastiscope.hashing, "hash_file", lambda path: reads.append(Path(path).name) or real(path))
    weights = big_folder / "model.safetensors"

    def run():
        reads.clear()
        results, failures = analyze(Sweep([Checkpoint.from_pretrained(big_folder)]), tmp_path / "res", ["attention_weights"],
                                    progress=False)
        assert failures.empty
        return results

    first = run()
    assert reads.count("model.safetensors") == 1
    run()
    assert reads.count("model.safetensors") == 0  # a new run (fresh store object) reuses the stored digest
    assert "tokenizer.json" in reads  # small files are simply read again
    os.utime(weights)  # touched: read again, same content, so the cached results stand
    pieces = set((tmp_path / "res" / "cache").glob("*.parquet"))
    run()
    assert reads.count("model.safetensors") == 1 and set((tmp_path / "res" / "cache").glob("*.parquet")) == pieces
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    state["transformer.h.0.attn.c_attn.weight"] *= 2  # same size, other content
    save_file(state, weights, metadata={"format": "pt"})
    changed = run()
    assert reads.count("model.safetensors") == 1
    assert not first.set_index(["metric", "layer", "head"])["value"].equals(changed.set_index(["metric", "layer", "head"])["value"])


# ---------------------------------------------------------------------- a store that loses nothing
def test_unreadable_pieces_are_recomputed_with_a_warning(tiny_sweep, probe_docs, tmp_path, caplog):
    CALLS.clear()
    first, _ = analyze(tiny_sweep, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    pieces = sorted((tmp_path / "res" / "cache").glob("norm-*.parquet"))
    assert len(pieces) == 3
    truncated, empty = pieces[0], pieces[1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    empty.write_bytes(b"")
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="plastiscope"):
        second, failures = analyze(tiny_sweep, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    assert failures.empty and len(CALLS) == 2
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{truncated}: unreadable cache piece" in warned and f"{empty}: unreadable cache piece" in warned
    key = ["checkpoint", "layer"]
    pd.testing.assert_frame_equal(first.sort_values(key).reset_index(drop=True), second.sort_values(key).reset_index(drop=True))
    assert len(load_results(tmp_path / "res")) == len(first)
    assert all(pd.read_parquet(p) is not None for p in (truncated, empty))  # rewritten whole


def test_one_more_analysis_adds_to_the_results_folder(tiny_sweep, probe_docs, tmp_path):
    out = tmp_path / "res"
    analyze(tiny_sweep, out, [NORM], _docs(probe_docs), progress=False)
    analyze(tiny_sweep[:2], out, ["attention_weights"], progress=False)  # another analysis, two of the checkpoints
    frame = load_results(out)
    counts = frame.groupby(["analysis", "checkpoint"]).size().to_dict()
    assert {c for a, c in counts if a == "norm"} == {"wd-0", "wd-0.1", "wd-1"}
    assert {c for a, c in counts if a == "attention_weights"} == {"wd-0", "wd-0.1"}
    kept = frame.query("checkpoint == 'wd-1'")  # not in the second run: stamped with the identity it had
    assert set(kept["weight_decay"]) == {1.0} and set(kept["learning_rate"]) == {tiny_sweep[2].hyperparameters["learning_rate"]}
    # the same analysis with other options: the latest wins, the other analysis stays
    analyze(tiny_sweep, out, [NORM], _docs(probe_docs), {"norm": {"layers": 1}}, progress=False)
    frame = load_results(out)
    norm = frame.query("analysis == 'norm'")
    assert len(norm) == 3 and set(norm["layer"]) == {0}
    assert len(frame.query("analysis == 'attention_weights'")) == counts[("attention_weights", "wd-0")] * 2


def test_a_checkpoint_whose_content_changed_loses_its_old_results(sweep_copy, probe_docs, tmp_path):
    manifest = sweep_copy / "manifest.csv"
    analyze(manifest, tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    from safetensors.torch import load_file, save_file

    state = load_file(sweep_copy / "wd-0" / "model.safetensors")
    state["model.norm.weight"] += 0.5  # wd-0 retrained, say
    save_file(state, sweep_copy / "wd-0" / "model.safetensors", metadata={"format": "pt"})
    analyze(manifest, tmp_path / "res", ["attention_weights"], progress=False)
    frame = load_results(tmp_path / "res")
    assert set(frame.query("analysis == 'norm'")["checkpoint"]) == {"wd-0.1", "wd-1"}  # the old wd-0 numbers are gone
    assert set(frame.query("analysis == 'attention_weights'")["checkpoint"]) == {"wd-0", "wd-0.1", "wd-1"}


WRITER = """
import sys
import pandas as pd
from plastiscope.results import ResultsStore
store = ResultsStore(sys.argv[1])
me = sys.argv[2]
frame = pd.DataFrame({"analysis": "norm", "metric": "m", "value": [float(len(me))] * 50, "note": [me] * 50})
for i in range(60):
    store.put("norm", "0" * 32, {"shared": True}, frame, identity={"checkpoint": "shared", "weight_decay": 0.0})
    store.put("norm", me * 32, {"i": i % 3}, frame, identity={"checkpoint": me, "weight_decay": 0.0})
    if i % 20 == 0:
        store.write(frame, current={}, analyses=[])
print("done")
"""


def test_two_processes_writing_one_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "res"), name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    store = ResultsStore(tmp_path / "res")
    assert len(store.get("norm", "0" * 32, {"shared": True})) == 50
    assert sorted(p.name for p in store.cache.iterdir() if not p.name.endswith(".parquet")) == []  # no temporary left behind
    store.write(make_frame(Checkpoint("final", 0.0), "norm", [{"metric": "m", "value": 0.0}]), current={"final": ("f" * 32, {})},
                analyses=["norm"])
    combined = load_results(tmp_path / "res")
    assert {"shared", "a", "b", "final"} <= set(combined["checkpoint"])


# ---------------------------------------------------------------------- what lands on disk
@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """Two saved tiny GPT-2 checkpoints (the tests write manifests beside them)."""
    root = tmp_path_factory.mktemp("two")
    tok = train_tokenizer(load_corpus("train", 300).texts, 300)
    for n in (1, 2):
        torch.manual_seed(n)
        save(ARCHITECTURES["gpt2"](len(tok)), tok, root / f"m{n}")
    return root


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_result_files_respect_the_umask(two_folders, probe_docs, tmp_path, umask, mode):
    """Every file a run writes (combined results, cache pieces, memo values, run records) gets ``0o666`` less the umask,
    as ``open()`` would give it; a temporary file's ``0o600`` never reaches the results folder."""
    (two_folders / "manifest.csv").write_text("path,weight_decay\nm1,0.0\nm2,0.1\n")
    from plastiscope.memo import Memo

    old = os.umask(umask)
    try:
        analyze(two_folders / "manifest.csv", tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
        Memo(tmp_path / "res" / "cache" / "memo").get("baseline", {"n": 1}, lambda: np.arange(3.0))
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "res").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    names = {p.name for p in written}
    assert {"metrics.parquet", "metrics.csv", "run.json"} <= names and any(p.parent.name == "cache" for p in written)
    assert any(p.suffix == ".npy" for p in written)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}


def test_spreadsheet_formulas_in_the_csv_are_neutralised_and_parquet_keeps_true_values(two_folders, probe_docs, tmp_path):
    """Cells a spreadsheet would run (a string starting with = + - @, a tab or a carriage return; OWASP CSV injection)
    get a leading apostrophe in metrics.csv and failures.csv only; numbers (-0.5) and plain text stay as they are."""
    rows = [{"path": "m1", "weight_decay": 0.0, "label": '=HYPERLINK("http://x","y")', "note": "@SUM(A1)", "shift": -0.5},
            {"path": "m2", "weight_decay": 0.1, "label": "+cmd", "note": "-cmd", "shift": 2.0},
            {"path": "missing", "weight_decay": 0.2, "label": "=1+1", "note": "\tx", "shift": 1.0}]
    (two_folders / "formulas.json").write_text(json.dumps(rows))
    results, failures = analyze(two_folders / "formulas.json", tmp_path / "res", [NORM], _docs(probe_docs), progress=False)
    assert set(results["checkpoint"]) == {'=HYPERLINK("http://x","y")', "+cmd"}
    with open(tmp_path / "res" / "metrics.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert {(r["checkpoint"], r["note"], r["shift"]) for r in cells} == {
        ("'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(A1)", "-0.5"), ("'+cmd", "'-cmd", "2.0")}
    assert {r["analysis"] for r in cells} == {"norm"} and all(not r["value"].startswith("'") for r in cells)
    with open(tmp_path / "res" / "failures.csv", newline="") as f:
        (failure,) = list(csv.DictReader(f))
    assert failure["checkpoint"] == "'=1+1"
    stored = pd.read_parquet(tmp_path / "res" / "metrics.parquet")
    assert set(stored["checkpoint"]) == {'=HYPERLINK("http://x","y")', "+cmd"} and set(stored["note"]) == {"@SUM(A1)", "-cmd"}
    assert sorted(stored["shift"].unique()) == [-0.5, 2.0]
