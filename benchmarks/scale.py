"""Executors: wall time of analyzing N tiny checkpoints in-process vs on Ray with 2 workers.

Also prints the measured per-token cost of a forward pass with hooks (seconds and FLOP/s on
this machine) that ``docs/scaling.md`` extrapolates from.

Run: ``python benchmarks/scale.py [--checkpoints 4] [--docs 128]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from plastiscope import Sweep
from plastiscope.activations import stream
from plastiscope.demo.corpus import load_corpus
from plastiscope.demo.sweep import TrainConfig, train_sweep
from plastiscope.runner import Inputs, run_analyses

SMALL = dict(steps=20, batch_size=16, context=64, warmup_steps=5, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
             d_mlp=192, vocab_size=1024, train_docs=500, val_docs=100, eval_every=20)
ANALYSES = ["attention", "attention_weights"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--docs", type=int, default=128)
    args = parser.parse_args()
    import ray

    from plastiscope.distributed import run_analyses_ray

    root = Path(tempfile.mkdtemp())
    decays = tuple(round(0.1 * i, 2) for i in range(args.checkpoints))
    sweep = Sweep.from_manifest(train_sweep(root, TrainConfig(weight_decays=decays, **SMALL), progress=False))
    inputs = Inputs(data=load_corpus("probe", args.docs))

    start = time.perf_counter()
    local, _ = run_analyses(sweep, ANALYSES, inputs, progress=False)
    t_local = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    t_init = time.perf_counter() - start
    start = time.perf_counter()
    remote, failures = run_analyses_ray(sweep, ANALYSES, inputs, progress=False)
    t_ray = time.perf_counter() - start
    ray.shutdown()
    same = len(local) == len(remote) and not len(failures)

    print(f"{args.checkpoints} checkpoints (Llama d=64, 3 layers), analyses {ANALYSES}, {args.docs} docs")
    print(f"in-process:            {t_local:6.1f} s")
    print(f"ray, 2 workers:        {t_ray:6.1f} s  (+ {t_init:.1f} s to start the local cluster)")
    print(f"time ratio ray / in-process: {t_ray / t_local:.2f}  (2 cores: workers also pay their own torch import and model load)")
    print(f"same table: {same}")

    # per-token forward cost with hooks, the unit docs/scaling.md extrapolates from
    ckpt = sweep[0]
    names = [f"blocks.{l}.hook_resid_post" for l in range(ckpt.n_layers)] + [f"blocks.{l}.attn.hook_pattern" for l in range(ckpt.n_layers)]
    params = sum(p.numel() for p in ckpt.hf_model.parameters())
    start, tokens = time.perf_counter(), 0
    for batch in stream(ckpt, inputs.data, names, batch_size=32, progress=False):
        tokens += int(batch.mask.sum())
    seconds = time.perf_counter() - start
    print(f"forward with hooks: {seconds / tokens * 1e6:.1f} us/token for {params / 1e6:.2f} M parameters "
          f"= {2 * params * tokens / seconds / 1e9:.2f} GFLOP/s effective (2 x params FLOPs per token), torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
