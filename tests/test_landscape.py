"""Sharpness and basin size: checked against exact Hessians (numpy / torch.autograd.functional) and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from plastiscope.demo.corpus import load_corpus
from plastiscope.landscape import (
    basin_radius,
    batch_loss_fn,
    dominant_eigenvalue,
    eigenvalue_records,
    filter_normalized_direction,
    fixed_batch,
    hutchinson_samples,
    hvp_operator,
    loss_curve,
    top_eigenvalue,
)
from plastiscope.runner import Inputs, run_analyses


def _quadratic(seed: int = 0, spectrum=(5.0, 3.0, 2.0, 1.0, 0.5, -0.5, 0.1)) -> tuple[np.ndarray, list[torch.Tensor], callable]:
    """loss(x) = 0.5 x^T A x (Hessian A, eigenvalues ``spectrum``) with x split over parameters of shapes (2, 2) and (3,)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    a = q @ np.diag(spectrum) @ q.T
    a = (a + a.T) / 2
    x = [torch.randn(2, 2, dtype=torch.float64, requires_grad=True), torch.randn(3, dtype=torch.float64, requires_grad=True)]
    at = torch.tensor(a)

    def loss():
        flat = torch.cat([p.reshape(-1) for p in x])
        return 0.5 * flat @ at @ flat

    return a, x, loss


def test_hvp_is_hessian_times_vector_on_a_quadratic():
    a, params, loss = _quadratic()
    hvp = hvp_operator(loss, params)
    v = [torch.randn_like(p) for p in params]
    hv = torch.cat([h.reshape(-1) for h in hvp(v)]).numpy()
    np.testing.assert_allclose(hv, a @ torch.cat([x.reshape(-1) for x in v]).numpy(), rtol=1e-10, atol=1e-12)


def test_power_iteration_finds_top_eigenvalue_of_a_quadratic():
    a, params, loss = _quadratic()
    exact = np.linalg.eigvalsh(a)[-1]
    value, iterations, change = top_eigenvalue(hvp_operator(loss, params), params, max_iter=500, tol=1e-10, seed=1)
    assert value == pytest.approx(exact, rel=1e-6)
    assert 1 < iterations < 500 and change <= 1e-10 * abs(value) * 1.01
    # a short run is an underestimate bracketed by its last change (Rayleigh quotient <= top eigenvalue)
    short, n, change = top_eigenvalue(hvp_operator(loss, params), params, max_iter=3, tol=0.0, seed=1)
    assert n == 3 and short <= exact + 1e-12 and change > 0


def test_top_eigenvalue_is_the_largest_even_when_a_negative_one_dominates():
    a, params, loss = _quadratic(seed=2, spectrum=(-6.0, 4.0, 1.0, 0.5, -2.0, 0.2, 3.0))
    hvp = hvp_operator(loss, params)
    dominant, _, _ = dominant_eigenvalue(hvp, params, max_iter=2000, tol=1e-12, seed=0)
    assert dominant == pytest.approx(np.linalg.eigvalsh(a)[0], rel=1e-6)  # -6: largest magnitude
    value, iterations, _ = top_eigenvalue(hvp, params, max_iter=2000, tol=1e-12, seed=0)
    assert value == pytest.approx(np.linalg.eigvalsh(a)[-1], rel=1e-5)  # 4: the top one, via the shifted run
    # a top eigenvalue small against the negative one: the shifted run must not stop on the shift's scale
    a, params, loss = _quadratic(seed=3, spectrum=(-100.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0))
    value, iterations, change = top_eigenvalue(hvp_operator(loss, params), params, max_iter=5000, tol=1e-7, seed=0)
    assert value == pytest.approx(1.0, rel=1e-4) and change <= 1e-7 * 1.01


def test_eigenvalue_rows_report_a_negative_dominant_eigenvalue_and_refuse_an_unconverged_top():
    (top,) = eigenvalue_records((12.0, 9, 0.006), None, tol=1e-3, n_docs=16)
    assert top["metric"] == "hessian_top_eigenvalue" and top["iterations"] == 9 and top["n"] == 16
    assert top["value"] == 12.0 and "ci_low" not in top  # a convergence range is no interval
    assert top["relative_change"] == pytest.approx(0.0005)
    top, low = eigenvalue_records((3.0, 30, 0.001), (-50.0, 8, 0.01), tol=1e-3, n_docs=16)  # shifted run converged
    assert top["value"] == 3.0 and top["iterations"] == 30
    assert low["metric"] == "hessian_min_eigenvalue" and low["value"] == -50.0 and low["iterations"] == 8
    top, low = eigenvalue_records((1e-4, 28, 5e-6), (-449.0, 8, 0.1), tol=1e-3, n_docs=16)  # not converged: no number
    assert math.isnan(top["value"]) and top["iterations"] == 28 and low["value"] == -449.0


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 5)
        self.b = torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _mlp_problem():
    torch.manual_seed(0)
    model = _MLP().double()  # 32 parameters
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def flat_loss(theta):
        pieces = dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))))
        return F.mse_loss(functional_call(model, pieces, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    exact = torch.autograd.functional.hessian(flat_loss, theta).numpy()
    return model, x, y, exact


def test_hutchinson_trace_and_power_iteration_match_exact_hessian_of_an_mlp():
    model, x, y, exact = _mlp_problem()
    params = list(model.parameters())
    hvp = hvp_operator(lambda: F.mse_loss(model(x), y), params)
    samples = hutchinson_samples(hvp, params, n_probes=1500, seed=0)
    # Var(v^T H v) for Rademacher v is 2 (||H||_F^2 - sum_i H_ii^2)
    sd = math.sqrt(2 * ((exact**2).sum() - (np.diag(exact) ** 2).sum()) / len(samples))
    assert abs(samples.mean() - np.trace(exact)) < 4 * sd
    assert np.std(samples) > 0  # really a stochastic estimate, not the exact diagonal
    eigenvalues = np.linalg.eigvalsh(exact)
    value, _, _ = dominant_eigenvalue(hvp, params, max_iter=1000, tol=1e-12, seed=0)
    assert value == pytest.approx(eigenvalues[np.argmax(np.abs(eigenvalues))], rel=1e-5)
    value, _, _ = top_eigenvalue(hvp, params, max_iter=1000, tol=1e-12, seed=0)
    assert value == pytest.approx(eigenvalues[-1], rel=1e-5)


def test_filter_normalized_direction_has_the_weights_filter_norms():
    torch.manual_seed(0)
    modules = torch.nn.ModuleList([torch.nn.Linear(4, 3), torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Conv2d(2, 3, 3)])
    params = list(modules.parameters())
    direction = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, direction):
        assert d.shape == p.shape
        if p.dim() < 2:
            assert torch.count_nonzero(d) == 0  # biases and norm gains are not perturbed (Li et al. 2018)
        else:
            rows_p = p.detach().numpy().reshape(p.shape[0], -1)
            rows_d = d.numpy().reshape(p.shape[0], -1)
            np.testing.assert_allclose(np.linalg.norm(rows_d, axis=1), np.linalg.norm(rows_p, axis=1), rtol=1e-5)
            assert not np.allclose(rows_d / np.linalg.norm(rows_d, axis=1, keepdims=True),
                                   rows_p / np.linalg.norm(rows_p, axis=1, keepdims=True))  # a new direction
    again = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(direction, again))  # seeded: the same for every checkpoint


def test_loss_curve_follows_the_direction_and_restores_weights_bit_exactly():
    model, x, y, _ = _mlp_problem()
    model.float()
    x, y = x.float(), y.float()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    direction = filter_normalized_direction(params, torch.Generator().manual_seed(3))
    radii = [0.0, 0.1, 0.37, 1.3]
    with torch.no_grad():
        reference = []
        for r in radii:  # independent: a copy moved by hand
            moved = _MLP()
            for q, p, d in zip(moved.parameters(), params, direction):
                q.copy_(p + r * d)
            reference.append(float(F.mse_loss(moved(x), y)))
    curve = loss_curve(lambda: F.mse_loss(model(x), y), params, direction, radii)
    np.testing.assert_allclose(curve, reference, rtol=1e-5)
    assert all(torch.equal(p, b) for p, b in zip(params, before))

    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError):
        loss_curve(failing, params, direction, radii)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # restored on error too


def test_basin_radius_hand_cases():
    assert basin_radius([0, 1, 2, 3], [1.0, 1.05, 1.25, 2.0], 0.1) == pytest.approx((1.25, False))
    assert basin_radius([0, 1, 2], [1.0, 1.01, 1.02], 0.1) == (2.0, True)  # never rises: censored
    assert basin_radius([0, 1, 2], [1.0, 1.0, 0.5], 0.1) == (2.0, True)  # falls: still inside
    assert basin_radius([0, 1, 2], [1.0, 1.02, math.nan], 0.1) == (1.0, False)  # diverged: last finite radius
    assert basin_radius([0, 0.5, 1], [2.0, 2.3, 3.0], 0.1) == pytest.approx((0.5 / 3, False))
    # the first crossing counts, not a later dip back
    assert basin_radius([0, 1, 2, 3], [0.0, 0.2, 0.0, 0.0], 0.1)[0] == pytest.approx(0.5)


def test_landscape_end_to_end_on_tiny_sweep(tiny_sweep):
    train = load_corpus("train", 400)
    options = {"n_docs": 8, "power_iterations": 6, "trace_probes": 4, "n_directions": 2, "radii": [0.0, 0.5, 1.0, 2.0],
               "n_resamples": 200}
    results, failures = run_analyses(tiny_sweep, ["landscape"], Inputs(train_data=train), options={"landscape": options},
                                     progress=False)
    assert failures.empty, failures.to_dict("records")
    assert set(results.analysis) == {"landscape"}
    assert sorted(results.weight_decay.unique()) == [0.0, 0.1, 1.0]
    for name, group in results.groupby("checkpoint"):
        metrics = group.set_index("metric")
        eig = metrics.loc["hessian_top_eigenvalue"]
        assert 2 <= eig.iterations <= 2 * 6 and eig.n == 8 and np.isnan(eig.ci_low) and eig.value > 0
        trace = metrics.loc["hessian_trace"]
        assert trace.n == 4 and np.isfinite(trace.value)
        curves = group[group.metric == "basin_curve_loss"]
        assert len(curves) == 2 * 4 and set(curves.radius) == {0.0, 0.5, 1.0, 2.0} and set(curves.direction) == {0, 1}
        radius = metrics.loc["basin_radius"]
        assert radius.n == 2 and 0 < radius.value <= 2.0
        # the curve at radius 0 is the batch loss, recomputed here from the logits
        checkpoint = tiny_sweep[name]
        tokens, mask = fixed_batch(checkpoint, train, 8)
        with torch.no_grad():
            logits = checkpoint.hf_model(tokens, attention_mask=mask.long()).logits
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        expected = float(losses[mask[:, 1:]].mean())
        assert curves[curves.radius == 0].value.to_numpy() == pytest.approx([expected] * 2, rel=1e-5)
        with torch.no_grad():
            assert float(batch_loss_fn(checkpoint.hf_model, tokens, mask)()) == pytest.approx(expected, rel=1e-5)
        checkpoint.unload()


def test_landscape_rejects_bad_options(tiny_sweep):
    from plastiscope.runner import prepare

    inputs = Inputs(train_data=load_corpus("train", 10))
    with pytest.raises(ValueError, match="radii"):
        prepare(["landscape"], inputs, {"landscape": {"radii": [0.5, 1.0]}})
    with pytest.raises(ValueError, match="unknown option"):
        prepare(["landscape"], inputs, {"landscape": {"n_probes": 3}})
