"""The command line on bad input: a one-line reason naming the file, line, flag or option, and the documented exit codes."""

from __future__ import annotations

import json
import shutil

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
