"""The GPU benchmark runs end to end at its smoke-test size on the CPU and reports what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["load", "forward_sdpa", "forward_eager", "probes", "attention", "attention_weights", "overfit", "plasticity", "landscape"]


def llama_parameters(d: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int) -> int:
    """Parameters of a Llama with untied embeddings, counted by hand: embedding, unembedding, per layer
    q/o (d x d), k/v (d x d_kv), gate/up/down (d x mlp), two RMSNorms; the final RMSNorm."""
    d_kv = d // heads * kv_heads
    return 2 * vocab * d + layers * (2 * d * d + 2 * d * d_kv + 3 * d * mlp + 2 * d) + d


def test_gpu_benchmark_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["setup"]["parameters"] == llama_parameters(128, 2, 4, 2, 512, 4096)
    parts = result["parts"]
    assert list(parts) == PARTS
    assert all("error" not in p and p["seconds"] > 0 and p["peak_gib"] is None for p in parts.values()), parts
    sdpa = parts["forward_sdpa"]
    assert sdpa["tokens"] == parts["probes"]["tokens"] == 24 * 256 and sdpa["ratio"] == 1.0
    assert abs(sdpa["tokens_per_s"] - sdpa["tokens"] / sdpa["seconds"]) < 1e-6 * sdpa["tokens_per_s"]
    probes = parts["probes"]  # an analysis's rate leaves out the load it pays
    assert abs(probes["tokens_per_s"] - probes["tokens"] / (probes["seconds"] - parts["load"]["seconds"])) < 1e-6 * probes["tokens_per_s"]
    for name in ("probes", "attention", "overfit"):
        assert f"| {name} |" in run.stdout
