"""The command line: on bad input a one-line reason naming the file, line, flag or option, and the documented exit codes;
a quiet console; a run configuration that replays."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

import plastiscope.checkpoint
from plastiscope.cli import app
from plastiscope.results import load_results

runner = CliRunner()


@pytest.fixture()
def docs(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"a small gloss number {i}", "label": "ab"[i % 2]}) for i in range(30)))
    return path


@pytest.fixture()
def no_loading(monkeypatch):
    """Records every model load: bad input must be refused before any."""
    loads = []
    monkeypatch.setattr(plastiscope.checkpoint.Checkpoint, "_load", lambda self: loads.append(self) or pytest.fail("a model was loaded"))
    return loads


def _analyze(manifest, out, *args):
    return runner.invoke(app, ["analyze", str(manifest), "--out", str(out), *args])


def test_out_naming_a_file(tiny_manifest, tmp_path, no_loading):
    (tmp_path / "results.csv").write_text("not a folder")
    bad = _analyze(tiny_manifest, tmp_path / "results.csv", "--analyses", "attention_weights")
    assert bad.exit_code == 2 and "--out" in bad.output and "results.csv: a file, not a folder" in bad.output
    bad = runner.invoke(app, ["train-sweep", "--out", str(tmp_path / "results.csv")])
    assert bad.exit_code == 2 and "results.csv: a file, not a folder" in bad.output
    bad = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--out names the HTML file" in bad.output


def test_flags_below_their_minimum(tiny_manifest, tmp_path, no_loading):
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--batch-size", "0")
    assert bad.exit_code == 2 and "--batch-size': Input should be greater than or equal to 1" in bad.output
    bad = runner.invoke(app, ["train-sweep", "--out", str(tmp_path / "s"), "--steps", "0"])
    assert bad.exit_code == 2 and "--steps" in bad.output and not (tmp_path / "s").exists()
    bad = runner.invoke(app, ["train-sweep", "--out", str(tmp_path / "s"), "--weight-decays", "0,abc"])
    assert bad.exit_code == 2 and "--weight-decays: 'abc' is not a weight decay" in bad.output
    bad = runner.invoke(app, ["train-sweep", "--out", str(tmp_path / "s"), "--learning-rate", "0"])
    assert bad.exit_code == 2 and "--learning-rate 0.0: must be a number > 0" in bad.output


def test_bad_option_value_fails_once_before_any_model_loads(tiny_manifest, tmp_path, docs, no_loading):
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "probes", "--data", str(docs), "--label-column", "label",
                   "-o", "probes.max_examples=None")
    assert bad.exit_code == 2
    assert bad.output.count("max_examples") == 1 and "write null (JSON), not None" in bad.output
    good_json = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "probes", "--data", str(docs), "-o", "probes.folds=1")
    assert good_json.exit_code == 2 and good_json.output.count("option folds=1 must be an integer >= 2") == 1
    typo = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "-o", "overfits.x=1")
    assert typo.exit_code == 2 and "options given for unknown analysis ['overfits']" in typo.output
    assert no_loading == [] and not (tmp_path / "r").exists()


def test_bad_files_name_the_line(tiny_manifest, tmp_path, no_loading):
    (tmp_path / "d.txt").write_bytes(b"fine\nfine\ncaf\xe9\n")
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "probes", "--data", str(tmp_path / "d.txt"))
    assert bad.exit_code == 2 and "d.txt:3: byte 0xe9 is not UTF-8" in bad.output
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n42\n')
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "probes", "--data", str(tmp_path / "d.jsonl"))
    assert bad.exit_code == 2 and "d.jsonl:2: a JSON int, not an object" in bad.output
    (tmp_path / "m.yaml").write_text("checkpoints:\n  - path: wd-0\n    weight_decay: [0\n")
    bad = _analyze(tmp_path / "m.yaml", tmp_path / "r")
    assert bad.exit_code == 2 and "m.yaml:4: the manifest is not valid YAML" in bad.output


def test_exit_code_3_when_some_checkpoint_fails(tiny_manifest, tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(tiny_manifest.parent, root)
    (root / "wd-0.1" / "model.safetensors").write_bytes(b"")
    out = tmp_path / "r"
    result = _analyze(root / "manifest.csv", out, "--analyses", "attention_weights")
    assert result.exit_code == 3, result.output
    assert "skipped wd-0.1 (load)" in result.output and "failures.csv" in result.output
    assert "wd-0.1" in (out / "failures.csv").read_text()
    assert set(load_results(out)["checkpoint"]) == {"wd-0", "wd-1"}
    shutil.copy(tiny_manifest.parent / "wd-0.1" / "model.safetensors", root / "wd-0.1" / "model.safetensors")
    result = _analyze(root / "manifest.csv", out, "--analyses", "attention_weights")
    assert result.exit_code == 0, result.output
    assert not (out / "failures.csv").exists() and set(load_results(out)["checkpoint"]) == {"wd-0", "wd-0.1", "wd-1"}


def test_options_lists_every_declared_option_with_its_default():
    from plastiscope.runner import available_analyses, get_analysis

    listed = runner.invoke(app, ["options"])
    assert listed.exit_code == 0, listed.output
    for name in available_analyses():
        for key, option in get_analysis(name).options.options.items():
            assert f"{name}.{key}={json.dumps(option.default)} " in listed.output
    one = runner.invoke(app, ["options", "overfit"])
    assert one.exit_code == 0 and "overfit.prefix_tokens=" in one.output and "probes." not in one.output
    bad = runner.invoke(app, ["options", "overfits"])
    assert bad.exit_code == 2 and "unknown analysis 'overfits'" in bad.output


# ---------------------------------------------------------------------- a quiet console
def _overlapping_docs(tmp_path):
    """Training documents, and validation documents of which a few repeat training ones (a warning per checkpoint)."""
    from plastiscope.demo.corpus import load_corpus

    train, val = load_corpus("train", 24).texts, load_corpus("validation", 24).texts
    (tmp_path / "train.txt").write_text("\n".join(train))
    (tmp_path / "val.txt").write_text("\n".join(val[:20] + train[:4]))
    return tmp_path / "train.txt", tmp_path / "val.txt"


def _run_cli(*args, cwd):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "plastiscope.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_analyze_prints_progress_and_results_and_no_library_noise(tiny_manifest, tmp_path):
    """stderr a file: plain progress lines, our warning once for the run (naming the other checkpoints), no loading
    bar, no library warning, no escape code; --verbose lets the libraries' bars through."""
    train, val = _overlapping_docs(tmp_path)
    args = ["analyze", tiny_manifest, "--analyses", "attention,overfit", "--data", train, "--train-data", train, "--val-data", val,
            "-o", "overfit.prefix_tokens=4", "-o", "overfit.continuation_tokens=4", "-o", "overfit.length_matching=\"none\"",
            "-o", "overfit.n_resamples=50", "-o", "attention.n_resamples=50"]
    quiet = _run_cli(*args, "--out", tmp_path / "quiet", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    rows = len(load_results(tmp_path / "quiet"))
    assert quiet.stdout.strip() == f"{rows} rows -> {tmp_path / 'quiet' / 'metrics.parquet'}"
    lines = quiet.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines if line.startswith("checkpoints ")] == [
        "checkpoints 1/3 wd-0", "checkpoints 2/3 wd-0.1", "checkpoints 3/3 wd-1"]
    overlap = [line for line in lines if "also occur in the training sample" in line]
    assert len(overlap) == 1 and overlap[0].startswith("warning: wd-0: 4 of 24") and overlap[0].endswith("(also wd-0.1, wd-1)")
    assert len(lines) == 4, quiet.stderr  # the progress and the one warning, nothing else
    for noise in ("Loading weights", "Warning:", "warnings.warn", "\x1b[", "it/s"):
        assert noise not in quiet.stderr
    loud = _run_cli("--verbose", *args, "--out", tmp_path / "loud", cwd=tmp_path)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr


# ---------------------------------------------------------------------- a run you can write down
def test_run_configuration_file_and_replay_of_run_json(tiny_manifest, tmp_path):
    """A YAML run configuration with paths relative to it; run.json records the same schema with absolute paths, and
    replaying it (another --out given as a flag) gives the same table; an unknown key is refused naming the file."""
    from plastiscope.demo.corpus import load_corpus

    sweep = shutil.copytree(tiny_manifest.parent, tmp_path / "conf" / "sweep")
    docs = load_corpus("probe", 30)
    (tmp_path / "conf" / "probe.jsonl").write_text("\n".join(json.dumps({"body": t, "pos": p}) for t, p in zip(docs.texts, docs.column("pos"))))
    (tmp_path / "conf" / "run.yaml").write_text(
        "sweep: sweep/manifest.csv\nout: results\nanalyses: [attention]\n"
        "data: {path: probe.jsonl, text_column: body}\noptions: {attention: {n_resamples: 50}}\nbatch_size: 8\n")
    first = runner.invoke(app, ["analyze", "--config", str(tmp_path / "conf" / "run.yaml")])
    assert first.exit_code == 0, first.output
    run = json.loads((tmp_path / "conf" / "results" / "run.json").read_text())["config"]
    assert run["sweep"] == str(sweep / "manifest.csv") and run["data"] == {"path": str(tmp_path / "conf" / "probe.jsonl"), "text_column": "body"}
    assert run["analyses"] == ["attention", "attention_weights"] and run["batch_size"] == 8 and run["options"] == {"attention": {"n_resamples": 50}}
    again = runner.invoke(app, ["analyze", "--config", str(tmp_path / "conf" / "results" / "run.json"), "--out", str(tmp_path / "replay")])
    assert again.exit_code == 0, again.output
    key = ["checkpoint", "analysis", "metric", "variant", "layer", "head"]
    a, b = (load_results(p).sort_values(key).reset_index(drop=True) for p in (tmp_path / "conf" / "results", tmp_path / "replay"))
    pd.testing.assert_frame_equal(a, b)
    (tmp_path / "bad.yaml").write_text("sweep: x\nbatchsize: 8\n")
    bad = runner.invoke(app, ["analyze", "--config", str(tmp_path / "bad.yaml")])
    assert bad.exit_code == 2 and "bad.yaml: unknown key(s) ['batchsize']" in bad.output


def test_label_columns_per_input_reach_their_analyses(tiny_manifest, tmp_path, monkeypatch):
    """--label-column is the label of --data (probes), --finetune-label-column that of --finetune-data (plasticity and
    landscape); an option given with -o wins; the run records them."""
    import plastiscope.pipeline
    from plastiscope.results import tidy
    from plastiscope.runner import FAILURE_COLUMNS

    jobs = []
    monkeypatch.setattr(plastiscope.pipeline, "drive", lambda sweep, job, *a, **k: jobs.append(job) or (tidy(pd.DataFrame()),
                                                                                                          pd.DataFrame(columns=FAILURE_COLUMNS)))
    rows = [{"text": f"gloss {i} of things", "pos": "nv"[i % 2], "topic": "abc"[i % 3]} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "probes,plasticity,landscape", "--data", str(tmp_path / "d.jsonl"),
                      "--train-data", str(tmp_path / "d.jsonl"), "--finetune-data", str(tmp_path / "d.jsonl"),
                      "--label-column", "pos", "--finetune-label-column", "topic", "-o", "landscape.label_column=pos")
    assert result.exit_code == 0, result.output
    options = jobs[0].options
    assert (options["probes"]["label_column"], options["plasticity"]["label_column"], options["landscape"]["label_column"]) == (["pos"], "topic", "pos")
    assert jobs[0].inputs.finetune_data.column("topic")[:3] == ["a", "b", "c"]
    bad = _analyze(tiny_manifest, tmp_path / "r2", "--analyses", "plasticity", "--finetune-data", str(tmp_path / "d.jsonl"),
                   "--finetune-label-column", "sentiment")
    assert bad.exit_code == 2 and "sentiment" in bad.output and len(jobs) == 1


# ---------------------------------------------------------------------- refused up front, printed right
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_device_without_a_gpu_is_refused_before_any_model_loads(tiny_manifest, tmp_path, no_loading):
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--device", "cuda")
    assert bad.exit_code == 2 and "--device cuda: torch sees no CUDA GPU" in bad.output
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--device-map", '{"": 0}')
    assert bad.exit_code == 2 and "--device-map cuda:0: torch sees no CUDA GPU" in bad.output
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--device", "gpu7")
    assert bad.exit_code == 2 and "--device 'gpu7': not a device" in bad.output
    assert no_loading == [] and not (tmp_path / "r").exists()


def test_rows_printed_are_the_files_rows(tiny_manifest, tmp_path, docs):
    """A second analysis into the same folder: the file holds both, and that is the number printed."""
    out = tmp_path / "r"
    assert _analyze(tiny_manifest, out, "--analyses", "attention_weights").exit_code == 0
    first = len(load_results(out))
    again = _analyze(tiny_manifest, out, "--analyses", "attention", "--data", str(docs), "-o", "attention.n_resamples=50")
    assert again.exit_code == 0, again.output
    assert f"{len(load_results(out))} rows -> " in again.output and len(load_results(out)) > first


@pytest.mark.skipif(__import__("importlib").util.find_spec("kaleido") is not None, reason="checks a machine without kaleido")
def test_report_png_without_kaleido_is_one_line(tiny_manifest, tmp_path):
    out = tmp_path / "r"
    assert _analyze(tiny_manifest, out, "--analyses", "attention_weights").exit_code == 0
    bad = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "r.html"), "--format", "html,png"])
    assert bad.exit_code == 2 and bad.output.startswith("error: PNG/SVG export needs the optional package kaleido")
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1


def test_out_inside_a_checkpoint_folder_is_refused(tiny_manifest, tmp_path, no_loading):
    root = shutil.copytree(tiny_manifest.parent, tmp_path / "sweep")
    bad = _analyze(root / "manifest.csv", root / "wd-0.1" / "results", "--analyses", "attention_weights")
    assert bad.exit_code == 2 and "wd-0.1" in bad.output and "--out" in bad.output
    assert not (root / "wd-0.1" / "results").exists() and no_loading == []


def test_executor_flags_belong_to_their_executor(tiny_manifest, tmp_path, no_loading):
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--executor", "ray", "--workers", "2")
    assert bad.exit_code == 2 and "--workers applies to --executor process, not ray" in bad.output
    bad = _analyze(tiny_manifest, tmp_path / "r", "--analyses", "attention_weights", "--executor", "dask")
    assert bad.exit_code == 2 and "--executor 'dask': choose local, process or ray" in bad.output
