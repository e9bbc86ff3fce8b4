"""The analysis runner: one pass per input, cached results, a broken checkpoint is skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from plastiscope import Sweep
from plastiscope.cli import app
from plastiscope.options import Integer, Option, OptionTable
from plastiscope.pipeline import analyze
from plastiscope.results import load_results, make_frame
from plastiscope.runner import Analysis, Inputs, run_analyses

CALLS = []


class NormTask:
    """Mean L2 norm of resid_post per layer: a small analysis made for these tests."""

    def __init__(self, checkpoint, inputs, options, memo):
        CALLS.append(checkpoint.name)
        self.checkpoint = checkpoint
        self.names = [f"blocks.{l}.hook_resid_post" for l in range(options.get("layers", 2))]
        self.norms = {n: [] for n in self.names}
        self.passes = {"data": [self]}

    def read(self, batch, name, acts):
        self.norms[name] += acts[batch.mask].norm(dim=-1).tolist()

    def finish(self):
        return make_frame(self.checkpoint, "norm", [
            {"metric": "resid_norm", "layer": l, "value": float(np.mean(self.norms[n])), "n": len(self.norms[n])}
            for l, n in enumerate(self.names)
        ])


NORM = Analysis("norm", ("data",), NormTask, OptionTable({"layers": Option(2, Integer(1))}))


def test_results_schema_and_values(tiny_sweep, probe_docs):
    docs = probe_docs.subset(range(16))
    results, failures = run_analyses(tiny_sweep, [NORM], Inputs(data=docs), progress=False)
    assert failures.empty
    assert list(results.columns[:2]) == ["checkpoint", "weight_decay"]
    assert list(results.columns[-9:]) == ["analysis", "metric", "variant", "layer", "head", "value", "ci_low", "ci_high", "n"]
    assert {"learning_rate", "schedule", "seed", "final_val_loss"} <= set(results.columns)
    assert str(results["layer"].dtype) == "Int64" and results["head"].isna().all()
    assert sorted(results["weight_decay"].unique()) == [0.0, 0.1, 1.0]
    # independent reference: HF hidden states of the first checkpoint
    from plastiscope.data import encode

    ckpt = tiny_sweep[0]
    import torch

    norms = []
    for text in docs.texts:
        ids = torch.tensor([encode(ckpt.tokenizer, text, ckpt.n_ctx)])
        with torch.no_grad():
            norms += ckpt.hf_model(ids, output_hidden_states=True).hidden_states[1][0].norm(dim=-1).tolist()
    got = results.query("checkpoint == @ckpt.name and layer == 0")["value"].item()
    assert got == pytest.approx(np.mean(norms), rel=1e-5)


def test_missing_input_is_named(tiny_sweep):
    with pytest.raises(ValueError, match=r"analysis 'norm' needs --data \(documents to read\)"):
        run_analyses(tiny_sweep, [NORM], Inputs(), progress=False)


def test_rerun_resumes_without_recomputing(tiny_sweep, probe_docs, tmp_path):
    docs = probe_docs.subset(range(8))
    CALLS.clear()
    first, _ = analyze(tiny_sweep, tmp_path / "res", [NORM], Inputs(data=docs), progress=False)
    assert len(CALLS) == 3
    CALLS.clear()
    second, _ = analyze(tiny_sweep, tmp_path / "res", [NORM], Inputs(data=docs), progress=False)
    assert CALLS == []  # everything came from the cache
    pd.testing.assert_frame_equal(first, second)
    third, _ = analyze(tiny_sweep, tmp_path / "res", [NORM], Inputs(data=probe_docs.subset(range(9))), progress=False)
    assert len(CALLS) == 3  # new data, new key
    on_disk = load_results(tmp_path / "res")
    assert len(on_disk) == len(third)
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    assert run["data"]["data"]["documents"] == 9 and "torch" in run["versions"]


def test_crash_midway_loses_only_the_checkpoint_in_flight(tiny_sweep, probe_docs, tmp_path):
    docs = probe_docs.subset(range(8))

    class Crash(NormTask):
        def finish(self):
            if self.checkpoint.weight_decay == 1.0:
                raise KeyboardInterrupt  # Ctrl-C on the last checkpoint
            return super().finish()

    with pytest.raises(KeyboardInterrupt):
        analyze(tiny_sweep, tmp_path / "res", [Analysis("norm", ("data",), Crash, NORM.options)], Inputs(data=docs), progress=False)
    CALLS.clear()
    results, _ = analyze(tiny_sweep, tmp_path / "res", [NORM], Inputs(data=docs), progress=False)
    assert CALLS == [tiny_sweep[2].name] and len(results) == 6


def test_broken_checkpoint_does_not_sink_the_sweep(tiny_manifest, probe_docs, tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(tiny_manifest.parent, root)
    weights = root / "wd-0.1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated copy
    results, failures = analyze(root / "manifest.csv", tmp_path / "res", [NORM], Inputs(data=probe_docs.subset(range(8))), progress=False)
    assert sorted(results["checkpoint"].unique()) == ["wd-0", "wd-1"]
    assert failures["checkpoint"].tolist() == ["wd-0.1"] and "truncated" in failures["error"].item()
    assert "wd-0.1" in (tmp_path / "res" / "failures.csv").read_text()


def test_failing_analysis_keeps_the_others(tiny_sweep, probe_docs):
    class Fails(NormTask):
        def finish(self):
            raise RuntimeError("boom")

    results, failures = run_analyses(tiny_sweep, [NORM, Analysis("bad", ("data",), Fails, OptionTable({}))], Inputs(data=probe_docs.subset(range(4))), progress=False)
    assert set(results["analysis"]) == {"norm"} and len(results) == 6
    assert set(failures["analysis"]) == {"bad"} and failures["error"].str.contains("RuntimeError: boom").all()


def test_cli_exit_codes(tmp_path, tiny_manifest):
    runner = CliRunner()
    bad = runner.invoke(app, ["analyze", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "missing.csv: no such manifest" in bad.output
    (tmp_path / "d.csv").write_text("body\nx\n")
    bad = runner.invoke(app, ["analyze", str(tiny_manifest), "--out", str(tmp_path / "r"), "--data", str(tmp_path / "d.csv")])
    assert bad.exit_code == 2 and "no text column 'text'" in bad.output
    bad = runner.invoke(app, ["analyze", str(tiny_manifest), "--out", str(tmp_path / "r"), "--analyses", "nonsense"])
    assert bad.exit_code == 2 and "unknown analysis 'nonsense'" in bad.output


def test_sweep_from_results_dir_name(tiny_manifest):
    from plastiscope.pipeline import open_sweep

    assert len(open_sweep(tiny_manifest.parent)) == len(Sweep.from_manifest(tiny_manifest)) == 3


def test_cli_analyze_end_to_end_with_options(tiny_manifest, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": f"a small gloss number {i} about things", "label": "ab"[i % 2]}) for i in range(40)))
    val = tmp_path / "val.txt"
    val.write_text("\n".join(f"a small gloss number {i} about stuff" for i in range(40)))
    out = tmp_path / "res"
    args = ["analyze", str(tiny_manifest), "--out", str(out), "--analyses", "attention,overfit", "--data", str(docs),
            "--train-data", str(docs), "--val-data", str(val), "-o", "overfit.prefix_tokens=4", "-o", "overfit.continuation_tokens=4",
            "-o", "overfit.reference=null"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = load_results(out)
    assert set(frame["analysis"]) == {"attention", "attention_weights", "overfit"}
    run = json.loads((out / "run.json").read_text())
    recorded = json.loads((out / "metrics.json").read_text())  # what each metric means, as the analyses declare it
    assert [a["analysis"] for a in recorded["analyses"]][:4] == ["probes", "attention", "attention_weights", "overfit"]
    assert run["config"]["options"]["overfit"] == {"prefix_tokens": 4, "continuation_tokens": 4, "reference": None}
    bad = CliRunner().invoke(app, args[:-6] + ["-o", "overfit"])
    assert bad.exit_code == 2 and "write ANALYSIS.KEY=VALUE" in bad.output
    report = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and (tmp_path / "r.html").stat().st_size > 100_000


def test_notebook_functions_results_concatenate(tiny_sweep, probe_docs):
    """Frames from run_one carry their failures in attrs, and still concatenate (pandas compares attrs)."""
    from plastiscope.runner import run_one

    a = run_one(tiny_sweep, NORM, Inputs(data=probe_docs.subset(range(4))), {}, progress=False)
    b = run_one(tiny_sweep[:1], NORM, Inputs(data=probe_docs.subset(range(5))), {}, progress=False)
    assert a.attrs["failures"] == [] and len(pd.concat([a, b], ignore_index=True)) == 8


def test_batch_size_below_one_is_refused(tiny_sweep, probe_docs):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"batch_size=.*must be an integer >= 1"):
            run_analyses(tiny_sweep, [NORM], Inputs(data=probe_docs.subset(range(4))), batch_size=bad, progress=False)


def test_public_api_is_discoverable_and_imported_lazily():
    """dir(plastiscope) offers the public names; none of them is imported (nor torch) until it is used."""
    import subprocess
    import sys

    probe = """
import sys, plastiscope
names = dir(plastiscope)
assert {"analyze", "report", "Inputs", "load_documents", "Sweep", "Checkpoint"} <= set(names) and set(plastiscope.__all__) <= set(names)
assert "torch" not in sys.modules and "plastiscope.pipeline" not in sys.modules, sorted(m for m in sys.modules if "plast" in m)
from plastiscope.pipeline import analyze
from plastiscope.runner import Inputs
assert plastiscope.analyze is analyze and plastiscope.Inputs is Inputs
print("lazy")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "lazy" in out.stdout, out.stderr


def test_analyze_reads_documents_given_by_path_with_their_columns(tiny_manifest, tmp_path):
    """plastiscope.analyze(manifest, out, data={path, text_column, label_column}): the documents the run read are the
    file's, and run.json records where they came from."""
    import plastiscope
    from plastiscope.data import load_documents

    rows = [{"body": f"a small gloss number {i} about things", "kind": "ab"[i % 2]} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"path": str(tmp_path / "d.jsonl"), "text_column": "body", "label_column": "kind"}
    results, failures = plastiscope.analyze(tiny_manifest, tmp_path / "res", [NORM], data=spec, max_docs=12, progress=False)
    assert failures.empty and len(results) == 6
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    assert run["config"]["data"] == spec and run["data"]["data"]["documents"] == 12
    assert run["data"]["data"]["sha256"] == load_documents(tmp_path / "d.jsonl", "body", max_docs=12).sha256()
    with pytest.raises(ValueError, match="not both"):
        plastiscope.analyze(tiny_manifest, tmp_path / "res", [NORM], Inputs(), data=spec, progress=False)


def test_process_pool_gives_the_in_process_table_and_refuses_in_memory_models(tiny_sweep, probe_docs, tmp_path):
    """Two spawned processes, one checkpoint per task, rebuilt from its spec: the same rows in the same order."""
    from plastiscope.checkpoint import Checkpoint
    from plastiscope.runner import ProcessPool

    inputs = Inputs(data=probe_docs.subset(range(6)))
    local, _ = run_analyses(tiny_sweep, ["attention_weights", "attention"], inputs, {"attention": {"n_resamples": 20}}, progress=False)
    pooled, failures = run_analyses(tiny_sweep, ["attention_weights", "attention"], inputs, {"attention": {"n_resamples": 20}},
                                    progress=False, executor=ProcessPool(2))
    assert failures.empty, failures.to_dict("records")
    pd.testing.assert_frame_equal(local, pooled)
    model = tiny_sweep[0]
    in_memory = Checkpoint.from_model(model.hf_model, model.tokenizer, weight_decay=0.0, name="mem")
    with pytest.raises(ValueError, match=r"\['mem'\] are in memory; the process executor rebuilds"):
        run_analyses([in_memory], ["attention_weights"], Inputs(), progress=False, executor="process")
