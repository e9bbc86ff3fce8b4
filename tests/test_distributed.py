"""The Ray executor on a local cluster: same metrics as in-process, one task per checkpoint, the checkpoint's placement
rebuilt in the worker, killed tasks retried once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from plastiscope.options import OneOf, Option, OptionTable, Text
from plastiscope.results import ResultsStore, make_frame
from plastiscope.runner import Analysis, Inputs, run_analyses

ray = pytest.importorskip("ray")


class NormTask:
    """Mean resid_post norm per layer; with ``die`` set, the worker process dies instead (a killed task)."""

    def __init__(self, checkpoint, inputs, options, memo):
        marker_dir, die = options["marker_dir"], options["die"]
        marker = Path(marker_dir or ".") / f"{checkpoint.name}.started"
        if die == "always" and checkpoint.weight_decay == 0.1 or die == "once" and not marker.exists():
            marker.touch()
            os._exit(1)  # as a kill -9 or the OOM killer would
        self.checkpoint = checkpoint
        self.names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        self.sums, self.count = [0.0, 0.0], 0
        self.passes = {"data": [self]}

    def read(self, batch, name, acts):
        layer = self.names.index(name)
        self.sums[layer] += float(acts[batch.mask].norm(dim=-1).sum())
        if layer == 0:
            self.count += int(batch.mask.sum())

    def finish(self):
        return make_frame(self.checkpoint, "norm", [
            {"metric": "resid_norm", "layer": l, "value": s / self.count, "n": self.count} for l, s in enumerate(self.sums)
        ])


def norm_analysis(marker_dir: str = ".", die: str = "never") -> Analysis:
    options = OptionTable({"marker_dir": Option(marker_dir, Text()), "die": Option(die, OneOf("never", "once", "always"))})
    return Analysis("norm", ("data",), NormTask, options)


@pytest.fixture(scope="module")
def cluster():
    tests = str(Path(__file__).parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def _sorted(frame):
    return frame.sort_values(["checkpoint", "analysis", "metric", "layer", "head"]).reset_index(drop=True)


def test_ray_gives_the_same_table_as_local(cluster, tiny_sweep, probe_docs, tmp_path):
    from plastiscope.distributed import run_analyses_ray

    inputs = Inputs(data=probe_docs.subset(range(12)))
    analyses = [norm_analysis(), "attention_weights"]
    local, _ = run_analyses(tiny_sweep, analyses, inputs, progress=False)
    store = ResultsStore(tmp_path / "res")
    remote, failures = run_analyses_ray(tiny_sweep, analyses, inputs, store=store, progress=False)
    assert failures.empty
    pd.testing.assert_frame_equal(_sorted(local), _sorted(remote))
    assert len(list(store.cache.glob("*.parquet"))) == 2 * len(tiny_sweep)  # one file per (checkpoint, analysis)
    again, _ = run_analyses_ray(tiny_sweep, analyses, inputs, store=store, progress=False)  # all cached
    pd.testing.assert_frame_equal(_sorted(again), _sorted(remote))


def test_killed_task_is_retried_once(cluster, tiny_sweep, probe_docs, tmp_path):
    from plastiscope.distributed import run_analyses_ray

    inputs = Inputs(data=probe_docs.subset(range(4)))
    spec = norm_analysis(str(tmp_path), "once")
    results, failures = run_analyses_ray(tiny_sweep[:1], [spec], inputs, progress=False)
    assert failures.empty and (tmp_path / f"{tiny_sweep[0].name}.started").exists()
    assert len(results) == 2


def test_task_dying_twice_is_reported_and_the_rest_kept(cluster, tiny_sweep, probe_docs, tmp_path):
    from plastiscope.distributed import run_analyses_ray

    inputs = Inputs(data=probe_docs.subset(range(4)))
    spec = norm_analysis(str(tmp_path), "always")
    results, failures = run_analyses_ray(tiny_sweep, [spec], inputs, progress=False)
    assert failures["checkpoint"].tolist() == ["wd-0.1"] and failures["error"].str.contains("Worker|died|crash", case=False).all()
    assert sorted(results["checkpoint"].unique()) == ["wd-0", "wd-1"]


class WhereTask:
    """No model load: one row saying which Ray task ran it, the checkpoint's device map and its dtype."""

    def __init__(self, checkpoint, inputs, options, memo):
        self.checkpoint, self.passes = checkpoint, {}

    def finish(self):
        device_map = self.checkpoint.device_map
        return make_frame(self.checkpoint, self.name, [{
            "metric": "where", "value": float(os.getpid()), "task": ray.get_runtime_context().get_task_id(),
            "device_map": json.dumps(dict(device_map) if device_map is not None else None), "dtype": str(self.checkpoint.dtype),
        }])


def where_analysis(name: str) -> Analysis:
    task = type(f"Where_{name}", (WhereTask,), {"name": name})
    return Analysis(name, (), task, OptionTable({}))


def test_one_task_per_checkpoint_runs_all_its_analyses(cluster, tiny_manifest, tmp_path):
    from plastiscope import Sweep
    from plastiscope.distributed import Ray, gpus_needed
    from plastiscope.runner import drive, plan

    placed = Sweep.from_manifest(tiny_manifest).to(dtype="bfloat16", device_map={"": "cpu"})
    job = plan([where_analysis("where_a"), where_analysis("where_b")], Inputs(), progress=False)
    results, failures = drive(placed, job, ResultsStore(tmp_path / "res"), Ray(), progress=False)
    assert failures.empty, failures.to_dict("records")
    tasks = results.groupby("checkpoint")["task"].agg(set)
    assert all(len(t) == 1 for t in tasks) and len(set.union(*tasks)) == len(placed)  # both analyses in one task each
    assert set(results["device_map"]) == {json.dumps({"": "cpu"})} and set(results["dtype"]) == {"torch.bfloat16"}
    assert gpus_needed("cpu", {"": "cpu"}) == 0 and gpus_needed("cuda:1", None) == 1
    assert gpus_needed(None, {"embed": 0, "layers.0": 1, "layers.1": "cuda:1", "lm_head": "cpu"}) == 2
