"""The layout holds: analyses are peers, reports read only results, imports change no process state, lint is clean."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ANALYSES = ("probes", "attention", "overfit", "plasticity", "landscape")


def _imports(folder: Path) -> dict[str, set[str]]:
    """Module names each ``.py`` file under ``folder`` imports (absolute and relative imports resolved to names)."""
    found = {}
    for file in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(file.relative_to(ROOT))] = names
    return found


def test_analyses_import_only_the_core():
    for analysis in ANALYSES:
        for file, names in _imports(ROOT / analysis).items():
            others = {n for n in names for other in ANALYSES if other != analysis and n.startswith(f"plastiscope.{other}")}
            assert not others, f"{file} imports another analysis: {others}"
            assert not {n for n in names if n.startswith("plastiscope.demo")}, f"{file} imports the demo"


def test_reports_and_core_import_no_analysis():
    for folder in ("reports", "plastiscope"):
        for file, names in _imports(ROOT / folder).items():
            if file.startswith("plastiscope/demo") or file == "plastiscope/runner.py":
                continue  # the demo runs every analysis; the runner's registry names them as text
            bad = {n for n in names for a in ANALYSES if n.startswith(f"plastiscope.{a}")}
            assert not bad, f"{file} imports an analysis: {bad}"


def test_reports_know_no_analysis_by_heart():
    """Reports read what each metric means from the declarations recorded with the results, never from an analysis:
    no import of the runner's registry or the pipeline (they import analyses), and no analysis's metric named in code."""
    import plastiscope.metrics as metrics_module
    from plastiscope.reports.frame import LOSS_COLUMNS
    from plastiscope.runner import declarations

    for file, names in _imports(ROOT / "reports").items():
        assert not {n for n in names if n in ("plastiscope.runner", "plastiscope.pipeline", "plastiscope.distributed")}, file
    declared = {m.name for ms in declarations().analyses.values() for m in ms if "{" not in m.name}
    headline = {m.name for ms in declarations().analyses.values() for m in ms if m.headline is not None}
    # what a metric is to the statistics (the outcome, validation loss, measured after fine-tuning) is its declared role;
    # the checkpoints table's loss columns (train_loss, val_loss) are columns of the report, not metric names
    roles = {m.name for ms in declarations().analyses.values() for m in ms if m.role} - set(LOSS_COLUMNS)
    files = {name: headline for name in ("verdict.py", "page.py", "figures.py", "baselines.py", "report.py", "batch.py")}
    files |= {name: headline | roles for name in ("correlate.py", "agreement.py", "frame.py", "choice.py", "verdict.py")}
    for name, names in files.items():  # panels, pages, figures, statistics
        file = ROOT / "reports" / name
        text = file.read_text()
        named = {name for name in names if re.search(rf"[\"']{re.escape(name)}[\"']", text)}
        assert not named, f"{file.name} names declared metrics {named}: declare them (headline, role) in their analysis instead"
    assert roles >= {"downstream_loss_after", "response_loss_after", "generative_accuracy_after", "plasticity_gain"}
    assert declared and metrics_module.DECLARATIONS_FILE == "metrics.json"


def test_importing_the_library_changes_no_process_state():
    probe = """
import os, torch
import sklearn, transformers, transformer_lens, plotly, pandas, scipy  # their own import-time settings are theirs
env, threads, state = dict(os.environ), torch.get_num_threads(), torch.random.get_rng_state()
import plastiscope, plastiscope.probes, plastiscope.attention, plastiscope.overfit, plastiscope.plasticity
import plastiscope.landscape, plastiscope.reports, plastiscope.runner, plastiscope.pipeline
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert torch.get_num_threads() == threads
assert torch.equal(torch.random.get_rng_state(), state)
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_random_init_leaves_the_global_rng_alone(tiny_sweep):
    import torch

    before = torch.random.get_rng_state()
    baseline = tiny_sweep[0].random_init(seed=3)
    again = tiny_sweep[0].random_init(seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(baseline.hf_model.parameters(), again.hf_model.parameters()):
        assert torch.equal(a, b)  # seeded: the same baseline every time


def test_ruff_is_clean():
    ruff = pytest.importorskip("ruff")
    del ruff
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_issue_numbers_or_process_words_in_what_ships():
    numbers = re.compile(r"\b(issue|ticket)s? #?\d+", re.IGNORECASE)
    process = re.compile(r"\bTODO\b|\bFIXME\b|\bXXX\b|DESIGN\.md|DESIGN glossary")
    shipped = [p for folder in ("plastiscope", *ANALYSES, "reports", "docs", "benchmarks") for p in (ROOT / folder).rglob("*")
               if p.suffix in (".py", ".md")] + [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in shipped for i, line in enumerate(p.read_text().splitlines(), 1)
            if numbers.search(line) or process.search(line)]
    assert not hits, hits


def test_nothing_test_only_ships_and_package_data_matches_files():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not (ROOT / "reports" / "synthetic.py").exists()
    dirs = project["package-dir"]

    def folder_of(package: str) -> Path:
        parts = package.split(".")
        i = max(i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in dirs)
        return ROOT / dirs[".".join(parts[:i])] / Path(*parts[i:])

    for package, patterns in project["package-data"].items():
        folder = folder_of(package)
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"package data {package}: {pattern} matches no file in {folder}"


def test_the_lock_pins_every_dependency():
    """constraints.txt (what `make` installs) names an exact version of every requirement pyproject declares."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in lines if "==" in line}
    assert len(pinned) == len(lines), "every line of constraints.txt is name==version"
    assert names <= pinned, f"not pinned in constraints.txt (run `make lock`): {sorted(names - pinned)}"
