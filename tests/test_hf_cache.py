"""Sweeps from the Hugging Face hub cache, read offline from a cache tree built here (blobs, linked snapshots, refs)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from test_checkpoint import ARCHITECTURES, save

from plastiscope import CheckpointError, Sweep
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.tokenizer import train_tokenizer
from plastiscope.pipeline import analyze

REPO = "EleutherAI/pythia-tiny"


def _commit(n: int) -> str:
    return hashlib.sha1(f"commit {n}".encode()).hexdigest()


def _add_snapshot(cache: Path, repo: str, source: Path, commit: str, refs: list[str]) -> Path:
    """Lay ``source``'s files out as the hub does: content-addressed blobs, a snapshot of relative links, refs."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for file in source.iterdir():
        blob = folder / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    for ref in refs:
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache with two revisions of one repository: step1000 and step2000 (= main)."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = train_tokenizer(load_corpus("train", 300).texts, 300)
    models = {}
    for n, refs in ((1, ["step1000"]), (2, ["step2000", "main"])):
        torch.manual_seed(n)
        models[n] = ARCHITECTURES["gpt_neox"](len(tokenizer)).eval()
        source = save(models[n], tokenizer, root / f"saved-{n}")
        _add_snapshot(root / "cache", REPO, source, _commit(n), refs)
    return root / "cache", models


def test_sweep_of_step_revisions_loads_offline(hub):
    cache, models = hub
    sweep = Sweep.from_hf_cache(REPO, revisions=["step1000", "step2000"], cache_dir=cache, weight_decay=0.01)
    by_commit = Sweep.from_hf_cache(REPO, revisions=[_commit(1)], cache_dir=cache, weight_decay=0.01)
    assert [c.name for c in sweep] + [c.name for c in by_commit] == [f"{REPO}@step1000", f"{REPO}@step2000", f"{REPO}@{_commit(1)}"]
    assert [c.hyperparameters.get("step") for c in [*sweep, *by_commit]] == [1000, 2000, None]
    assert all(c.weight_decay == 0.01 for c in sweep) and not sweep.errors
    assert (sweep[0].path / "model.safetensors").is_symlink()
    ids = torch.tensor([[1, 4, 9, 16]])
    for ckpt, n in zip([*sweep, *by_commit], (1, 2, 1)):
        with torch.no_grad():
            torch.testing.assert_close(ckpt.hf_model(ids).logits, models[n](ids).logits)
        ckpt.unload()
    assert sweep[0].content_hash() == by_commit[0].content_hash() != sweep[1].content_hash()


def test_two_revisions_of_one_snapshot_in_one_sweep_are_refused(hub):
    """step1000 and its commit are one model: listing both would count it twice, at two steps."""
    cache, _ = hub
    with pytest.raises(CheckpointError, match=rf"'{REPO}@step1000' and '{REPO}@{_commit(1)}' are the same checkpoint folder"):
        Sweep.from_hf_cache(REPO, revisions=["step1000", _commit(1)], cache_dir=cache, weight_decay=0.01)


def test_labels_and_an_analysis_into_a_results_folder(hub, tmp_path):
    cache, _ = hub
    sweep = Sweep.from_hf_cache(REPO, ["step1000", "main"], cache_dir=cache, labels=["early", "late"], weight_decay=0.01)
    assert [c.name for c in sweep] == ["early", "late"]
    results, failures = analyze(sweep, tmp_path / "res", ["attention_weights"], progress=False)
    assert failures.empty and set(results["checkpoint"]) == {"early", "late"}
    assert set(results.query("checkpoint == 'early'")["step"]) == {1000}


def test_missing_revision_repo_and_weight_decay_are_named(hub, tmp_path):
    cache, _ = hub
    sweep = Sweep.from_hf_cache(REPO, ["step1000", "step3000"], cache_dir=cache, weight_decay=0.01)
    assert [c.name for c in sweep] == [f"{REPO}@step1000"]
    (error,) = sweep.errors
    folder = cache / "models--EleutherAI--pythia-tiny"
    assert error["checkpoint"] == f"{REPO}@step3000"
    assert f"{REPO}@step3000: the cache {folder} has no ref for revision 'step3000'" in error["error"]
    assert "['main', 'step1000', 'step2000']" in error["error"] and f"hf download {REPO} --revision step3000" in error["error"]
    other = Sweep.from_hf_cache("EleutherAI/pythia-70m", ["step1000"], cache_dir=cache, weight_decay=0.01)
    assert f"EleutherAI/pythia-70m@step1000: not in the Hugging Face cache {cache}" in other.errors[0]["error"]
    nowd = Sweep.from_hf_cache(REPO, ["step1000"], cache_dir=cache)
    assert f"{REPO}@step1000" in nowd.errors[0]["error"] and "weight decay unknown; pass weight_decay=" in nowd.errors[0]["error"]
    with pytest.raises(CheckpointError, match=r"'\.\./x' is not a revision"):
        from plastiscope.loading import hf_snapshot

        hf_snapshot(REPO, "../x", cache)


def test_incomplete_download_is_named(hub, tmp_path):
    cache, _ = hub
    import shutil

    broken = tmp_path / "cache"
    shutil.copytree(cache, broken, symlinks=True)
    folder = broken / "models--EleutherAI--pythia-tiny"
    blob = (folder / "snapshots" / _commit(1) / "model.safetensors").resolve()
    blob.unlink()  # the link now points nowhere
    sweep = Sweep.from_hf_cache(REPO, ["step1000", "main"], cache_dir=broken, weight_decay=0.01)
    assert [c.name for c in sweep] == [f"{REPO}@main"]
    assert "model.safetensors: a link to a missing file (an incomplete download?)" in sweep.errors[0]["error"]


def test_manifest_rows_from_the_cache(hub, tmp_path):
    cache, models = hub
    (tmp_path / "hub").symlink_to(cache)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "repo,revision,cache_dir,weight_decay,label\n"
        f"{REPO},step1000,hub,0.01,\n"
        f"{REPO},main,{cache},0.01,final\n"
        f"{REPO},step9,hub,0.01,\n"
    )
    sweep = Sweep.from_manifest(manifest)
    assert [c.name for c in sweep] == [f"{REPO}@step1000", "final"]
    assert sweep[0].hyperparameters["step"] == 1000 and sweep[1].hyperparameters.get("step") is None
    assert sweep.errors[0]["checkpoint"] == f"{REPO}@step9" and "no ref for revision 'step9'" in sweep.errors[0]["error"]
    (tmp_path / "both.csv").write_text(f"path,repo,weight_decay\nx,{REPO},0\n")
    assert "has both 'path' and 'repo'" in Sweep.from_manifest(tmp_path / "both.csv").errors[0]["error"]


def test_spec_of_a_cache_revision_rebuilds_it(hub):
    """The spec keeps repository, revision and cache folder; without a path it resolves the revision again."""
    import dataclasses
    import pickle

    from plastiscope import Checkpoint

    cache, _ = hub
    ckpt = Checkpoint.from_hf_cache(REPO, "step1000", cache_dir=cache, weight_decay=0.01)
    spec = pickle.loads(pickle.dumps(ckpt.spec()))
    assert (spec.repo, spec.revision, spec.cache_dir) == (REPO, "step1000", str(cache))
    assert spec.path == str(cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / _commit(1))
    assert spec.checkpoint().spec() == spec
    assert dataclasses.replace(spec, path=None).checkpoint().spec() == spec


def test_refs_must_name_a_commit_inside_the_repository(hub, tmp_path):
    """A ref holds a commit hash; one holding a path (absolute, or ``../..``) or a snapshot that is a link out of the
    repository would load a model from anywhere under the label ``repo@revision``: refused, naming the ref."""
    import shutil

    cache, _ = hub
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, symlinks=True)
    folder = copy / "models--EleutherAI--pythia-tiny"
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder / "snapshots" / _commit(1), elsewhere)  # a loadable model outside the repository
    (folder / "refs" / "absolute").write_text(str(elsewhere))
    (folder / "refs" / "relative").write_text(os.path.relpath(elsewhere, folder / "snapshots"))
    os.symlink(elsewhere, folder / "snapshots" / _commit(7))
    (folder / "refs" / "linked").write_text(_commit(7))
    for revision in ("absolute", "relative", "linked"):
        sweep = Sweep.from_hf_cache(REPO, [revision], cache_dir=copy, weight_decay=0.01)
        assert not len(sweep), revision
        error = sweep.errors[0]["error"]
        assert f"{REPO}@{revision}" in error and ("is not a commit hash" in error or "outside" in error), error
    assert len(Sweep.from_hf_cache(REPO, ["main", _commit(1)], cache_dir=copy, weight_decay=0.01)) == 2


def test_a_snapshot_file_linked_outside_its_repository_is_refused(hub, tmp_path):
    """The hub links a snapshot's files into the repository's blobs; a file linked elsewhere (another model's weights)
    would be measured under this repository's label."""
    import shutil

    cache, _ = hub
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, symlinks=True)
    snapshot = copy / "models--EleutherAI--pythia-tiny" / "snapshots" / _commit(1)
    foreign = tmp_path / "foreign.safetensors"
    shutil.copy(snapshot / "model.safetensors", foreign)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(foreign)
    sweep = Sweep.from_hf_cache(REPO, ["step1000", "main"], cache_dir=copy, weight_decay=0.01)
    assert [c.name for c in sweep] == [f"{REPO}@main"]
    assert f"model.safetensors is a link to {foreign}, outside the repository" in sweep.errors[0]["error"]
