"""Sharpness and basins: checked against exact Hessians (torch.autograd.functional + numpy), scipy's eigsh,
closed forms (quadratics, linear classifiers, products) and transformers' own losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from scipy.stats import norm
from torch.func import functional_call

from plastiscope import Checkpoint
from plastiscope.data import DataError, pad
from plastiscope.demo.corpus import load_corpus
from plastiscope.downstream import DownstreamTask, label_reserve, labelled_ids
from plastiscope.landscape import (
    OPTIONS,
    adaptive_operator,
    basin_sigma,
    bisected_random_curves,
    drops,
    first_beyond,
    fixed_batch,
    gaussian_direction,
    hutchinson_samples,
    hvp_operator,
    hvp_products,
    lanczos_extremes,
    loss_pieces,
    micro_batches,
    perturbed_scores,
    rank_loss_pieces,
    sharpness,
    worst_case_near_edge,
    worst_case_scores,
    worst_so_far,
)
from plastiscope.landscape.analysis import basin_records
from plastiscope.landscape.basin import mean_basin_sigma
from plastiscope.losses import sequence_loss
from plastiscope.runner import Inputs, run_analyses
from plastiscope.training import trainable_copy

STEPS, TOL = OPTIONS.options["lanczos_steps"].default, OPTIONS.options["lanczos_tol"].default


def _quadratic(spectrum, seed: int = 0) -> tuple[np.ndarray, list[torch.Tensor], callable]:
    """loss(x) = 0.5 x^T A x (Hessian A, eigenvalues ``spectrum``), x split over a matrix and a vector parameter."""
    n = len(spectrum)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = q @ np.diag(spectrum) @ q.T
    a = (a + a.T) / 2
    x = [torch.randn(n // 2, 2, dtype=torch.float64, requires_grad=True),
         torch.randn(n - 2 * (n // 2), dtype=torch.float64, requires_grad=True)]
    at = torch.tensor(a)

    def loss():
        flat = torch.cat([p.reshape(-1) for p in x])
        return 0.5 * flat @ at @ flat

    return a, x, loss


def _relative(value: float, exact: float) -> float:
    return abs(value - exact) / abs(exact)


def test_hvp_is_hessian_times_vector_on_a_quadratic():
    a, params, loss = _quadratic(np.linspace(-1, 3, 7))
    hvp = hvp_operator([loss], params)
    v = [torch.randn_like(p) for p in params]
    hv = torch.cat([h.reshape(-1) for h in hvp(v)]).numpy()
    np.testing.assert_allclose(hv, a @ torch.cat([x.reshape(-1) for x in v]).numpy(), rtol=1e-10, atol=1e-12)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 24)
        self.b = torch.nn.Linear(24, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _exact_hessian(model: torch.nn.Module, params: dict[str, torch.Tensor], loss_of_outputs) -> np.ndarray:
    """The exact Hessian of ``loss_of_outputs(model)`` w.r.t. the named ``params`` (torch.autograd.functional.hessian)."""
    names = list(params)
    shapes, sizes = [params[n].shape for n in names], [params[n].numel() for n in names]

    def flat_loss(theta):
        pieces = dict(zip(names, (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))))
        return loss_of_outputs(lambda *args, **kwargs: functional_call(model, pieces, args, kwargs))

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(flat_loss, theta).numpy()


def _mlp_problem():
    torch.manual_seed(0)
    model = _MLP().double()  # 268 parameters, trained a little so it sits near (not at) a minimum
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 4, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    exact = _exact_hessian(model, dict(model.named_parameters()), lambda f: F.mse_loss(f(x), y))
    return model, x, y, exact


def test_lanczos_matches_the_exact_hessian_of_an_mlp_within_its_residuals():
    model, x, y, exact = _mlp_problem()
    params = list(model.parameters())
    eigenvalues = np.linalg.eigvalsh(exact)
    assert eigenvalues[0] < 0 < eigenvalues[-1]  # an indefinite Hessian: both ends matter
    result = lanczos_extremes(hvp_operator([lambda: F.mse_loss(model(x), y)], params), params, STEPS, TOL, seed=0)
    assert _relative(result.max_value, eigenvalues[-1]) < 1e-6
    # near a minimum the most negative eigenvalue is tiny (here -0.4 % of the top one) and sits in a cluster
    # around 0: Lanczos resolves it to a fraction of the spectrum's scale, and its residual says it is unresolved
    scale = np.abs(eigenvalues).max()
    assert abs(result.min_value - eigenvalues[0]) < 0.02 * scale and result.min_residual > abs(eigenvalues[0] - result.min_value)
    # the reported error bound holds: an eigenvalue lies within the residual of each Ritz value
    for value, residual in ((result.max_value, result.max_residual), (result.min_value, result.min_residual)):
        assert np.min(np.abs(eigenvalues - value)) <= residual + 1e-9
    # Ritz values lie inside the spectrum (interlacing): the estimates approach the extremes from inside
    assert eigenvalues[0] - 1e-9 <= result.min_value and result.max_value <= eigenvalues[-1] + 1e-9
    # more steps, a smaller residual and error
    longer = lanczos_extremes(hvp_operator([lambda: F.mse_loss(model(x), y)], params), params, 120, 0.0, seed=0)
    assert longer.max_value == pytest.approx(eigenvalues[-1], rel=1e-8) and longer.min_value == pytest.approx(eigenvalues[0], rel=1e-6)


@pytest.mark.parametrize("spectrum", ["uniform bulk", "gamma bulk"])
def test_lanczos_resolves_a_minimum_near_zero_to_the_spectrums_scale_in_fewer_steps(spectrum):
    rng = np.random.default_rng(7)
    values = {"uniform bulk": np.concatenate([[10.0, 8.0], rng.uniform(0, 4, 397), [-0.02]]),
              "gamma bulk": np.concatenate([[10.0], rng.gamma(0.5, 0.5, 398), [-0.05]])}[spectrum]
    a, params, loss = _quadratic(values, seed=8)
    exact = np.linalg.eigvalsh(a)
    scale = np.abs(exact).max()
    hvp = hvp_operator([loss], params)
    result = lanczos_extremes(hvp, params, STEPS, TOL, seed=0)
    each = lanczos_extremes(hvp, params, STEPS, TOL, seed=0, relative_to="each")  # the smallest against its own magnitude
    assert result.steps < 0.8 * each.steps
    assert result.min_residual <= TOL * result.max_value and (each.min_residual <= TOL * abs(each.min_value) or each.steps == STEPS)
    # the smallest (a near-zero value at the edge of a bulk) within lanczos_tol of the scale, the largest to its own tolerance
    assert abs(result.min_value - exact[0]) <= TOL * scale and abs(result.max_value - exact[-1]) <= TOL * exact[-1]
    assert abs(each.min_value - exact[0]) <= abs(result.min_value - exact[0])  # the longer run is closer


@pytest.mark.parametrize("case", ["small eigengap", "negative eigenvalue dominates", "isolated top over a wide bulk"])
def test_lanczos_finds_both_extremes_where_power_iteration_is_slow(case):
    rng = np.random.default_rng(1)
    spectrum = {
        "small eigengap": np.concatenate([[10.0, 9.9], rng.uniform(-1, 5, 298)]),
        "negative eigenvalue dominates": np.concatenate([[-100.0, 1.0], rng.uniform(-0.5, 0.9, 298)]),
        "isolated top over a wide bulk": np.concatenate([[36.1, 35.0], rng.normal(0, 3, 598)]),
    }[case]
    a, params, loss = _quadratic(spectrum, seed=2)
    exact = np.linalg.eigvalsh(a)
    result = lanczos_extremes(hvp_operator([loss], params), params, STEPS, TOL, seed=0)
    assert _relative(result.max_value, exact[-1]) < 0.02, (result, exact[-1])
    assert _relative(result.min_value, exact[0]) < 0.02, (result, exact[0])
    # the residual is no interval but a bound on the distance to some eigenvalue
    assert np.min(np.abs(exact - result.max_value)) <= result.max_residual + 1e-9


def test_lanczos_on_a_tiny_transformers_few_parameters_matches_the_exact_hessian(tiny_sweep):
    checkpoint = tiny_sweep[0]
    model = trainable_copy(checkpoint.hf_model).double().eval()
    ids = fixed_batch(checkpoint, load_corpus("train", 40), 8)
    tokens, mask = pad(ids, checkpoint.tokenizer.pad_token_id)
    named = dict(model.named_parameters())
    chosen = {n: named[n] for n in ("model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.k_proj.weight",
                                    "model.norm.weight")}
    exact = _exact_hessian(model, chosen, lambda f: sequence_loss(f, tokens, mask))
    eigenvalues = np.linalg.eigvalsh((exact + exact.T) / 2)
    params = list(chosen.values())
    result = lanczos_extremes(hvp_operator([lambda: sequence_loss(model, tokens, mask)], params), params, STEPS, TOL, seed=3)
    assert _relative(result.max_value, eigenvalues[-1]) < 0.02 and _relative(result.min_value, eigenvalues[0]) < 0.02


def _flat_operator(operator, params) -> LinearOperator:
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def matvec(x):
        flat = torch.tensor(np.asarray(x).ravel(), dtype=params[0].dtype)
        return torch.cat([h.reshape(-1) for h in operator([t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)])]).double().numpy()

    n = sum(sizes)
    return LinearOperator((n, n), matvec=matvec, dtype=np.float64)


def test_lanczos_agrees_with_scipy_eigsh_on_a_whole_tiny_llama(tiny_sweep):
    checkpoint = tiny_sweep[1]
    model = trainable_copy(checkpoint.hf_model).eval()  # float32, every parameter
    ids = fixed_batch(checkpoint, load_corpus("train", 40), 16)
    params = list(model.parameters())
    hvp = hvp_operator(loss_pieces(model, ids, checkpoint.tokenizer.pad_token_id, 8192), params)
    flat = _flat_operator(hvp, params)
    top = eigsh(flat, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0]
    bottom = eigsh(flat, k=1, which="SA", tol=1e-6, return_eigenvectors=False)[0]
    result = lanczos_extremes(hvp, params, STEPS, TOL, seed=0)
    assert _relative(result.max_value, top) < 0.02 and _relative(result.min_value, bottom) < 0.02
    adaptive = adaptive_operator(hvp, params)
    top = eigsh(_flat_operator(adaptive, params), k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0]
    assert _relative(lanczos_extremes(adaptive, params, STEPS, TOL, seed=0).max_value, top) < 0.02


def test_hutchinson_raw_and_adaptive_traces_match_the_exact_hessian_of_an_mlp():
    model, x, y, exact = _mlp_problem()
    params = list(model.parameters())
    scale = np.abs(torch.cat([p.detach().reshape(-1) for p in params]).numpy())
    hvp = hvp_operator([lambda: F.mse_loss(model(x), y)], params)
    for operator, matrix in ((hvp, exact), (adaptive_operator(hvp, params), scale[:, None] * exact * scale[None, :])):
        samples = hutchinson_samples(operator, params, n_probes=1500, seed=0)
        # Var(v^T A v) for Rademacher v is 2 (||A||_F^2 - sum_i A_ii^2)
        sd = math.sqrt(2 * ((matrix**2).sum() - (np.diag(matrix) ** 2).sum()) / len(samples))
        assert abs(samples.mean() - np.trace(matrix)) < 4 * sd
        assert np.std(samples) > 0  # a stochastic estimate, not the exact diagonal


def test_hvp_products_share_one_gradient_graph_and_equal_the_exact_hessian_times_each_vector():
    model, x, y, exact = _mlp_problem()
    params = list(model.parameters())
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    vectors = [[torch.randn_like(p) for p in params] for _ in range(3)]
    one = hvp_products([lambda: F.mse_loss(model(x), y)], params)
    halves = hvp_products([lambda: F.mse_loss(model(x[:40]), y[:40]) * 40 / 64, lambda: F.mse_loss(model(x[40:]), y[40:]) * 24 / 64],
                          params)
    products = one(vectors)
    assert len(forwards) == 1  # one forward (and one graph-keeping backward) for the three products
    again = one(vectors[:1])
    assert len(forwards) == 1  # one micro-batch: its graph is kept for later calls
    split = halves(vectors)
    assert len(forwards) == 3  # two micro-batches: one forward each per call, no graph kept
    hook.remove()
    for v, hv, parts in zip(vectors, products, split):
        flat = torch.cat([t.reshape(-1) for t in v]).numpy()
        for got in (hv, parts):
            np.testing.assert_allclose(torch.cat([h.reshape(-1) for h in got]).numpy(), exact @ flat, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(torch.cat([h.reshape(-1) for h in again[0]]).numpy(), torch.cat([h.reshape(-1) for h in products[0]]).numpy())


@pytest.mark.parametrize("width", [1, 3])
def test_sharpness_gives_the_separate_estimates_with_shared_products(width):
    model, x, y, exact = _mlp_problem()
    params = list(model.parameters())
    losses = [lambda: F.mse_loss(model(x), y)]
    hvp = hvp_operator(losses, params)
    found = sharpness(hvp_products(losses, params), params, STEPS, TOL, n_probes=6, seed=0, width=width)
    # the traces' samples are Hutchinson's with the same probes, the first one read off each Lanczos run's first step
    np.testing.assert_allclose(found.hessian_samples, hutchinson_samples(hvp, params, 6, seed=0), rtol=1e-9)
    np.testing.assert_allclose(found.adaptive_samples, hutchinson_samples(adaptive_operator(hvp, params), params, 6, seed=0), rtol=1e-9)
    # the eigenvalues: those of the exact Hessian and of diag|theta| H diag|theta|, each within lanczos_tol of the spectrum
    theta = np.abs(torch.cat([p.detach().reshape(-1) for p in params]).numpy())
    for extremes, matrix, ends in ((found.hessian, exact, (0, -1)), (found.adaptive, theta[:, None] * exact * theta[None, :], (-1,))):
        eigenvalues = np.linalg.eigvalsh(matrix)
        scale = np.abs(eigenvalues).max()
        for end in ends:
            value, residual = (extremes.max_value, extremes.max_residual) if end == -1 else (extremes.min_value, extremes.min_residual)
            assert abs(value - eigenvalues[end]) <= min(residual + 1e-9, TOL * scale + 1e-9) or extremes.steps == STEPS
            assert abs(value - eigenvalues[end]) <= 0.02 * scale
    # every product counted once; rounds of up to ``width`` products, each Lanczos run one product per round
    assert found.products == found.hessian.steps + found.adaptive.steps + 2 * 5
    assert max(found.hessian.steps, found.adaptive.steps, -(-found.products // width)) <= found.rounds <= found.products
    if width == 1:
        assert found.rounds == found.products


def test_first_beyond_finds_the_walks_crossing_in_few_calls():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        edge = int(rng.integers(1, n + 1))  # first index beyond (n: none on the grid)
        guess = None if rng.random() < 0.3 else int(rng.integers(0, n + 2))
        calls = []

        def beyond_at(j, edge=edge, calls=calls):
            assert 1 <= j <= n - 1
            calls.append(j)
            return j >= edge

        walk = next((j for j in range(1, n) if j >= edge), n)
        assert first_beyond(beyond_at, n, guess) == walk
        assert len(calls) <= math.ceil(math.log2(n)) + 2
        if guess is not None and 2 <= guess == edge <= n - 1:
            assert len(calls) == 2  # a right guess costs two calls
        # an upper bound expected beyond (right or wrong): the same index, checked rather than assumed
        upper = int(rng.integers(1, n + 1))
        calls.clear()
        assert first_beyond(beyond_at, n, upper=upper) == walk
        assert len(calls) <= 2 * math.ceil(math.log2(n)) + 1
        if edge <= upper <= n - 1:
            assert len(calls) <= math.ceil(math.log2(upper)) + 1


class _Product(torch.nn.Module):
    """y = sum_i u_i w_i x_i: the two factors of a product, rescalable as u -> c u, w -> w / c."""

    def __init__(self, u: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.u, self.w = torch.nn.Parameter(u.clone()), torch.nn.Parameter(w.clone())

    def forward(self, x):
        return x @ (self.u * self.w)


def test_adaptive_sharpness_is_invariant_to_rescaling_a_product_and_has_its_closed_form():
    torch.manual_seed(0)
    k = 5
    x = torch.randn(200, k, dtype=torch.float64)
    target = torch.tensor([1.5, -0.7, 0.4, 2.0, 1.1], dtype=torch.float64)
    y = x @ target
    # at the minimum u * w = target: H = J^T J / n with J = [x w, x u]; scaled by |theta| it becomes
    # [[M, S M S'], ...] with M = diag(|t|) C diag(|t|), C = x^T x / n: eigenvalues 2 eig(M) and 0, trace 2 tr(M)
    c = (x.T @ x / len(x)).numpy()
    m = np.abs(target.numpy())[:, None] * c * np.abs(target.numpy())[None, :]
    raw, adaptive = [], []
    for scale in (torch.ones(k), torch.tensor([3.0, 0.2, 1.0, 7.0, 0.5])):
        scale = scale.double()
        model = _Product(torch.sign(target) * scale, torch.abs(target) / scale)
        params = list(model.parameters())
        hvp = hvp_operator([lambda model=model: 0.5 * ((model(x) - y) ** 2).mean()], params)
        raw.append(lanczos_extremes(hvp, params, 40, 1e-10, seed=0).max_value)
        result = lanczos_extremes(adaptive_operator(hvp, params), params, 40, 1e-10, seed=0)
        assert result.max_value == pytest.approx(2 * np.linalg.eigvalsh(m)[-1], rel=1e-8)
        assert result.min_value == pytest.approx(0.0, abs=1e-8)
        adaptive.append(hutchinson_samples(adaptive_operator(hvp, params), params, n_probes=400, seed=0))
    np.testing.assert_allclose(adaptive[0], adaptive[1], rtol=1e-10)  # the same probes give the same samples
    sign = np.sign(target.numpy())
    full = np.block([[m, m * sign[None, :]], [sign[:, None] * m, sign[:, None] * m * sign[None, :]]])
    sd = math.sqrt(2 * ((full**2).sum() - (np.diag(full) ** 2).sum()) / 400)
    assert abs(np.mean(adaptive[0]) - 2 * np.trace(m)) < 4 * sd  # Hutchinson's mean around tr = 2 tr(M)
    assert raw[1] > 5 * raw[0]  # raw curvature follows the rescaling


def test_adaptive_sharpness_is_invariant_when_a_tiny_llamas_query_and_key_are_rescaled(tiny_sweep):
    checkpoint = tiny_sweep[2]
    ids = fixed_batch(checkpoint, load_corpus("train", 40), 12)
    pad_id = checkpoint.tokenizer.pad_token_id
    values = []
    for c in (1.0, 4.0):
        model = trainable_copy(checkpoint.hf_model).double().eval()
        attention = model.model.layers[0].self_attn
        with torch.no_grad():  # attention scores q . k are unchanged by W_Q -> c W_Q, W_K -> W_K / c (RoPE is linear)
            attention.q_proj.weight.mul_(c)
            attention.k_proj.weight.div_(c)
        pieces = loss_pieces(model, ids, pad_id, 8192)
        params = list(model.parameters())
        hvp = hvp_operator(pieces, params)
        loss = float(sum(p().detach() for p in pieces))
        # the same start vector and the same operator: the same Krylov sequence, whether converged or not
        adaptive = lanczos_extremes(adaptive_operator(hvp, params), params, 15, 0.0, seed=0)
        trace = hutchinson_samples(adaptive_operator(hvp, params), params, n_probes=3, seed=0)
        # curvature along a fixed direction in W_K alone: v^T H v
        generator = torch.Generator().manual_seed(7)
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).double() * (p is attention.k_proj.weight) for p in params]
        raw = sum(float((h * x).sum()) for h, x in zip(hvp(v), v))
        values.append((loss, adaptive.max_value, raw, trace))
    (loss0, adaptive0, raw0, trace0), (loss1, adaptive1, raw1, trace1) = values
    assert loss1 == pytest.approx(loss0, rel=1e-10)
    assert raw1 == pytest.approx(16 * raw0, rel=1e-6)  # raw curvature along W_K grows like c^2
    assert adaptive1 == pytest.approx(adaptive0, rel=1e-6)
    np.testing.assert_allclose(trace1, trace0, rtol=1e-6)


def test_micro_batches_give_the_loss_and_the_products_of_the_whole_batch(tiny_sweep):
    assert micro_batches([5, 3, 9, 2, 2, 2], 12) == [[0, 1], [2], [3, 4, 5]]
    assert micro_batches([20, 3], 10) == [[0], [1]]  # a document longer than the budget is a micro-batch of its own
    checkpoint = tiny_sweep[0]
    model = trainable_copy(checkpoint.hf_model).eval()
    ids = fixed_batch(checkpoint, load_corpus("train", 60), 20)
    assert len({len(x) for x in ids}) > 3  # documents of different lengths: token weights matter
    pad_id = checkpoint.tokenizer.pad_token_id
    whole, parts = loss_pieces(model, ids, pad_id, 10**6), loss_pieces(model, ids, pad_id, 3 * max(len(x) for x in ids))
    assert len(whole) == 1 and len(parts) >= 5
    tokens, mask = pad(ids, pad_id)
    reference = float(sequence_loss(model, tokens, mask).detach())
    assert float(sum(p().detach() for p in parts)) == pytest.approx(reference, rel=1e-5)
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]
    one, many = hvp_operator(whole, params)(v), hvp_operator(parts, params)(v)
    flat_one, flat_many = torch.cat([h.reshape(-1) for h in one]), torch.cat([h.reshape(-1) for h in many])
    assert float((flat_one - flat_many).norm() / flat_one.norm()) < 1e-4


def test_gaussian_direction_has_a_standard_gaussians_norm_and_is_seeded():
    params = [torch.zeros(30, 7), torch.zeros(11)]
    direction = gaussian_direction(params, torch.Generator().manual_seed(4))
    d = 30 * 7 + 11
    assert math.sqrt(sum(float((u**2).sum()) for u in direction)) == pytest.approx(math.sqrt(d), rel=1e-6)
    again = gaussian_direction(params, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(direction, again))
    other = gaussian_direction(params, torch.Generator().manual_seed(5))
    assert not torch.allclose(direction[0], other[0])


def _quadratic_score(a: np.ndarray, params: list[torch.Tensor]):
    at = torch.tensor(a)

    def loss():
        flat = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * flat @ at @ flat

    def gradient():
        value = loss()
        return float(value.detach()), list(torch.autograd.grad(value, params))

    return (lambda: float(loss().detach())), gradient


def test_random_basin_of_a_quadratic_matches_the_expected_drop_under_gaussian_noise():
    d = 400
    spectrum = np.random.default_rng(0).gamma(2.0, 1.0, d)
    a, params, _ = _quadratic(spectrum, seed=1)
    with torch.no_grad():
        for p in params:
            p.zero_()  # the minimum, L = 0
    score, _ = _quadratic_score(a, params)
    sigmas = np.linspace(0, 0.1, 41)
    generator = torch.Generator().manual_seed(0)
    curves = np.array([perturbed_scores({"loss": score}, params, gaussian_direction(params, generator), sigmas)["loss"]
                       for _ in range(30)])
    # E over directions of norm sigma sqrt(d): 1/2 sigma^2 d E[u^T A u] = 1/2 sigma^2 tr A
    np.testing.assert_allclose(curves.mean(0)[1:], 0.5 * sigmas[1:] ** 2 * np.trace(a), rtol=0.05)
    tau = 0.05
    found = float(mean_basin_sigma(sigmas, drops(curves, higher_is_better=False), tau))
    assert found == pytest.approx(math.sqrt(2 * tau / np.trace(a)), rel=0.03)
    assert all(torch.count_nonzero(p) == 0 for p in params)  # restored


def test_a_basin_narrower_than_the_grid_is_flagged():
    boot = {"n_resamples": 50, "seed": 0}
    narrow = basin_records("loss", "worst_case", [0.0, 0.01, 0.1], np.array([[3.0, 3.5, 4.0]]), False, 0.1, boot)[-1]
    assert narrow["value"] == pytest.approx(0.002) and narrow["below_grid"] and not narrow["censored"]
    resolved = basin_records("loss", "worst_case", [0.0, 0.01, 0.1], np.array([[3.0, 3.05, 3.5]]), False, 0.1, boot)[-1]
    assert resolved["value"] == pytest.approx(0.01 + 0.09 * 0.05 / 0.45) and not resolved["below_grid"]


def test_worst_case_curve_keeps_the_worst_score_found_within_each_radius():
    accuracy = [0.28, 0.28, 0.67, 0.25, 0.72, 0.0]
    assert worst_so_far(accuracy, higher_is_better=True).tolist() == [0.28, 0.28, 0.28, 0.25, 0.25, 0.0]
    loss = [2.9, 3.1, 3.0, 3.4]
    assert worst_so_far(loss, higher_is_better=False).tolist() == [2.9, 3.1, 3.1, 3.4]


def test_worst_case_basin_of_a_quadratic_follows_its_top_eigenvector():
    d = 300
    spectrum = np.concatenate([[8.0, 5.0], np.random.default_rng(3).uniform(-1, 3, d - 2)])
    a, params, _ = _quadratic(spectrum, seed=4)
    with torch.no_grad():
        for p in params:
            p.zero_()
    score, gradient = _quadratic_score(a, params)
    sigmas = np.linspace(0, 0.01, 51)
    curve, direction = worst_case_scores(gradient, score, params, sigmas, steps=8, generator=torch.Generator().manual_seed(0))
    top = np.linalg.eigh(a)[1][:, -1]
    u = torch.cat([x.reshape(-1) for x in direction]).numpy()
    assert abs(u @ top) / np.linalg.norm(u) > 0.999  # the worst direction of a quadratic is its top eigenvector
    np.testing.assert_allclose(curve[5:], 0.5 * sigmas[5:] ** 2 * d * 8.0, rtol=1e-3)
    tau = 0.02
    found, censored = basin_sigma(sigmas, drops(curve, higher_is_better=False), tau)
    assert not censored and found == pytest.approx(math.sqrt(2 * tau / (d * 8.0)), rel=0.02)
    # ``until`` ends the search after the first sigma past the basin's edge
    short, _ = worst_case_scores(gradient, score, params, sigmas, steps=8, generator=torch.Generator().manual_seed(0),
                                 until=lambda s: s > tau)
    assert len(short) == np.argmax(curve > tau) + 1 and short[-1] > tau >= short[-2]
    assert all(torch.count_nonzero(p) == 0 for p in params)


def _log_grid(low: float, high: float, per_decade: int = 4) -> np.ndarray:
    return np.concatenate([[0.0], np.logspace(np.log10(low), np.log10(high), int(round(np.log10(high / low) * per_decade)) + 1)])


def test_bisected_random_basin_is_the_grid_walks_radius_on_a_quadratic():
    d = 400
    spectrum = np.random.default_rng(5).gamma(2.0, 1.0, d)
    a, params, _ = _quadratic(spectrum, seed=6)
    with torch.no_grad():
        for p in params:
            p.zero_()
    score, _ = _quadratic_score(a, params)
    calls = []

    def counted() -> float:
        calls.append(1)
        return score()

    sigmas, tau, boot = _log_grid(1e-4, 1.0), 0.05, {"n_resamples": 300, "seed": 0}
    walk = np.array([perturbed_scores({"loss": score}, params, gaussian_direction(params, generator), sigmas)["loss"]
                     for generator in [torch.Generator().manual_seed(3)] for _ in range(6)])
    bisected = bisected_random_curves(counted, params, sigmas, 6, torch.Generator().manual_seed(3), lambda s: s > tau, 0.0)
    assert len(calls) < 0.4 * 6 * (len(sigmas) - 1)  # a fraction of the walk's scores
    scored = ~np.isnan(bisected)
    np.testing.assert_array_equal(bisected[scored], walk[scored])  # the same directions scored at the same sigmas
    ours = basin_records("loss", "random", sigmas, bisected, False, tau, boot)[-1]
    grid = basin_records("loss", "random", sigmas, walk, False, tau, boot)[-1]
    assert ours["value"] == pytest.approx(grid["value"], rel=1e-12) and not ours["censored"]
    assert (ours["ci_low"], ours["ci_high"]) == pytest.approx((grid["ci_low"], grid["ci_high"]), rel=1e-12)
    # and the closed form, 1/2 sigma^2 tr A = tau, to the grid's resolution (one log-step of 10^(1/4))
    assert ours["value"] == pytest.approx(math.sqrt(2 * tau / np.trace(a)), rel=0.15)
    assert all(torch.count_nonzero(p) == 0 for p in params)  # restored
    # a basin wider than the grid: censored, as the walk says
    wide = bisected_random_curves(score, params, sigmas[:6], 3, torch.Generator().manual_seed(3), lambda s: s > tau, 0.0)
    assert basin_records("loss", "random", sigmas[:6], wide, False, tau, boot)[-1]["censored"]


def test_worst_case_search_near_a_predicted_edge_finds_the_walks_radius_on_a_quadratic():
    d = 300
    spectrum = np.concatenate([[8.0, 5.0], np.random.default_rng(3).uniform(-1, 3, d - 2)])
    a, params, _ = _quadratic(spectrum, seed=4)
    with torch.no_grad():
        for p in params:
            p.zero_()
    score, gradient = _quadratic_score(a, params)
    sigmas, tau, boot = _log_grid(1e-5, 1e-1), 0.02, {"n_resamples": 50, "seed": 0}
    until = lambda s: s > tau  # noqa: E731
    walk, _ = worst_case_scores(gradient, score, params, sigmas[1:], steps=8, generator=torch.Generator().manual_seed(0), until=until)
    walk = np.concatenate([[0.0], walk])
    grid = basin_records("loss", "worst_case", sigmas[: len(walk)], worst_so_far(walk, False)[None], False, tau, boot)[-1]["value"]
    exact = math.sqrt(2 * tau / (d * 8.0))  # the exact worst-case radius, sqrt(2 tau / (d lambda_max))
    interval = np.searchsorted(sigmas, exact)
    assert np.searchsorted(sigmas, grid) == interval and grid == pytest.approx(exact, rel=0.1)
    # without a prediction: the walk itself, the same scores at the same sigmas
    same = worst_case_near_edge(gradient, score, params, sigmas, 8, torch.Generator().manual_seed(0), until, 0.0)
    np.testing.assert_allclose(same[: len(walk)], walk, rtol=1e-12)
    assert np.isnan(same[len(walk):]).all()
    for guess in (interval, interval + 1, interval - 3):  # a right prediction, one too high, one too low
        near = worst_case_near_edge(gradient, score, params, sigmas, 8, torch.Generator().manual_seed(0), until, 0.0, guess=guess)
        scored = ~np.isnan(near)
        assert scored.sum() - 1 <= max(interval - guess, 0) + 3 < len(walk) - 1  # fewer sigmas searched, three for a right guess
        near[scored] = worst_so_far(near[scored], higher_is_better=False)
        last = int(np.flatnonzero(scored)[-1])
        ours = basin_records("loss", "worst_case", sigmas[: last + 1], near[None, : last + 1], False, tau, boot)[-1]["value"]
        # in the same grid interval as the walk's radius and the exact one
        assert np.searchsorted(sigmas, ours) == interval and ours == pytest.approx(exact, rel=0.1), guess
    assert all(torch.count_nonzero(p) == 0 for p in params)


def test_accuracy_basin_of_a_linear_classifier_matches_its_closed_form():
    d, n = 500, 300
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.normal(size=d) * 0.05)
    x = torch.tensor(rng.normal(size=(n, d)))
    margin = (x @ w).numpy()
    labels = np.sign(margin + rng.normal(scale=0.2, size=n))  # some documents misclassified at sigma = 0
    params = [torch.nn.Parameter(w.clone())]

    def accuracy() -> float:
        with torch.no_grad():
            return float(np.mean(np.sign((x @ params[0]).numpy()) == labels))

    sigmas = np.array([0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2])
    generator = torch.Generator().manual_seed(1)
    curves = np.array([perturbed_scores({"acc": accuracy}, params, gaussian_direction(params, generator), sigmas)["acc"]
                       for _ in range(40)])
    # sign((w + eps) . x) with eps ~ N(0, sigma^2 I): eps . x ~ N(0, sigma^2 ||x||^2), so
    # P(correct) = Phi(y w.x / (sigma ||x||))
    norms = np.linalg.norm(x.numpy(), axis=1)
    expected = [np.mean(margin * labels > 0)] + [np.mean(norm.cdf(labels * margin / (s * norms))) for s in sigmas[1:]]
    np.testing.assert_allclose(curves.mean(0), expected, atol=0.02)
    assert expected[-1] < expected[0] - 0.15  # the score really degrades on this grid


def test_basin_sigma_hand_cases():
    assert basin_sigma([0, 1, 2, 3], [0.0, 0.05, 0.25, 1.0], 0.1) == pytest.approx((1.25, False))
    assert basin_sigma([0, 1, 2], [0.0, 0.01, 0.1], 0.1) == (2.0, True)  # drop <= tau stays inside: censored
    assert basin_sigma([0, 1, 2], [0.0, 0.0, -0.5], 0.1) == (2.0, True)  # better than at 0: inside
    assert basin_sigma([0, 1, 2], [0.0, 0.02, math.nan], 0.1) == (1.0, False)  # diverged: last finite sigma
    assert basin_sigma([0, 0.5, 1], [0.0, 0.3, 1.0], 0.1) == pytest.approx((0.5 / 3, False))
    assert basin_sigma([0, 1, 2, 3], [0.0, 0.2, 0.0, 0.0], 0.1)[0] == pytest.approx(0.5)  # the first crossing counts
    np.testing.assert_allclose(drops(np.array([[0.8, 0.7, 0.2]]), higher_is_better=True), [[0.0, 0.1, 0.6]], atol=1e-12)
    np.testing.assert_allclose(drops(np.array([2.0, 2.5]), higher_is_better=False), [0.0, 0.5])


def test_perturbations_restore_weights_bit_exactly_also_on_error():
    torch.manual_seed(0)
    model = _MLP()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    x = torch.randn(8, 6)
    direction = gaussian_direction(params, torch.Generator().manual_seed(0))
    scores = perturbed_scores({"s": lambda: float(model(x).sum().detach())}, params, direction, [0.0, 0.3, 1.7])
    with torch.no_grad():  # independent: a copy moved by hand
        moved = _MLP()
        for q, p, u in zip(moved.parameters(), before, direction):
            q.copy_(p + 1.7 * u)
        assert scores["s"][2] == pytest.approx(float(moved(x).sum()), rel=1e-5)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    calls = []

    def failing() -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError):
        perturbed_scores({"s": failing}, params, direction, [0.0, 0.3, 1.7])
    assert all(torch.equal(p, b) for p, b in zip(params, before))

    def gradient():
        value = model(x).pow(2).mean()
        return float(value.detach()), list(torch.autograd.grad(value, params))

    calls.clear()
    with pytest.raises(RuntimeError):
        worst_case_scores(gradient, failing, params, [0.0, 0.1, 0.2], 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def _label_accuracy_by_hand(model, task: DownstreamTask, tokenizer, n_ctx: int, rows) -> float:
    """Rank classification recomputed with transformers' own ``labels=`` loss, candidate by candidate."""
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    correct = 0
    with torch.no_grad():
        for i in rows:
            scores = []
            for c in candidates:
                ids, at = labelled_ids(tokenizer, task.documents.texts[i], task.label_name, c, n_ctx, reserve)
                tokens = torch.tensor([ids])
                labels = torch.full_like(tokens, -100)
                labels[0, at:] = tokens[0, at:]
                scores.append(-float(model(tokens, labels=labels).loss) * (len(ids) - at))
            correct += candidates[int(np.argmax(scores))] == task.labels[i]
    return correct / len(rows)


def test_rank_loss_is_the_clipped_margin_of_rank_classification(tiny_sweep):
    checkpoint = tiny_sweep[0]
    model, tokenizer = checkpoint.hf_model, checkpoint.tokenizer
    task = DownstreamTask.from_documents(load_corpus("finetune", 300), "topic")
    rows = list(np.random.default_rng(2).permutation(300)[:10])
    candidates = sorted(set(task.labels))
    reserve = label_reserve(task, tokenizer)
    expected, right = 0.0, 0
    with torch.no_grad():  # transformers' own labels= loss, candidate by candidate
        for i in rows:
            scores = []
            for c in candidates:
                ids, at = labelled_ids(tokenizer, task.documents.texts[i], task.label_name, c, checkpoint.n_ctx, reserve)
                tokens = torch.tensor([ids])
                labels = torch.full_like(tokens, -100)
                labels[0, at:] = tokens[0, at:]
                scores.append(-float(model(tokens, labels=labels).loss) * (len(ids) - at))
            true = candidates.index(task.labels[i])
            margin = max(s for c, s in enumerate(scores) if c != true) - scores[true]
            expected += min(margin, 0.0) / len(rows)
            right += margin < 0
    for budget in (10**6, 40):
        pieces = rank_loss_pieces(model, task, tokenizer, checkpoint.n_ctx, rows, tokenizer.pad_token_id, budget)
        assert len(pieces) == (1 if budget > 1000 else len(pieces)) and (budget > 1000 or len(pieces) > 3)
        assert float(sum(p().detach() for p in pieces)) == pytest.approx(expected, rel=1e-5)
    assert 0 < right < len(rows)  # some documents right (they count), some wrong (they do not)


SMALL = {"n_docs": 8, "lanczos_steps": 12, "trace_probes": 3, "sigmas": [0.0, 0.001, 0.01, 0.05, 0.2], "n_directions": 2,
         "worst_case_steps": 1, "basin_docs": 16, "n_resamples": 200, "label_column": "topic"}


def test_landscape_end_to_end_on_tiny_sweep(tiny_sweep):
    train, finetune = load_corpus("train", 400), load_corpus("finetune", 400)
    before = {c.name: {k: v.clone() for k, v in c.hf_model.state_dict().items()} for c in tiny_sweep}
    results, failures = run_analyses(tiny_sweep, ["landscape"], Inputs(train_data=train, finetune_data=finetune),
                                     options={"landscape": SMALL}, progress=False)
    assert failures.empty, failures.to_dict("records")
    assert sorted(results.weight_decay.unique()) == [0.0, 0.1, 1.0]
    metrics = {"hessian_max_eigenvalue", "hessian_min_eigenvalue", "hessian_trace", "adaptive_max_eigenvalue", "adaptive_trace",
               "basin_curve", "basin_sigma", "basin_sigma_relative"}
    assert set(results.metric) == metrics
    for name, group in results.groupby("checkpoint"):
        checkpoint = tiny_sweep[name]
        model = checkpoint.hf_model
        assert all(torch.equal(v, before[name][k]) for k, v in model.state_dict().items())  # weights left as they were
        one = group[~group.metric.isin(["basin_curve", "basin_sigma", "basin_sigma_relative"])].set_index("metric")
        for metric in ("hessian_max_eigenvalue", "hessian_min_eigenvalue", "adaptive_max_eigenvalue"):
            row = one.loc[metric]
            assert row.n == 8 and np.isnan(row.ci_low) and 1 <= row.steps <= 12 and row.residual >= 0 and row.variant == ""
        assert one.loc["hessian_max_eigenvalue"].value > max(0, one.loc["hessian_min_eigenvalue"].value)
        for metric in ("hessian_trace", "adaptive_trace"):
            assert one.loc[metric].n == 3 and one.loc[metric].ci_low <= one.loc[metric].value <= one.loc[metric].ci_high
        curves = group[group.metric == "basin_curve"]
        random = curves[curves.direction == "random"]
        # bisection scores sigma = 0 and a few grid points for each direction, both directions around the edge
        assert set(random.objective) == {"loss", "accuracy"} and set(random.sigma) <= set(SMALL["sigmas"])
        assert set(random.n) <= {1, 2} and list(random[random.sigma == 0].n) == [2, 2]
        assert {v.rsplit(", sigma=", 1)[0] for v in random.variant} == {"objective=loss, direction=random",
                                                                        "objective=accuracy, direction=random"}
        worst = curves[curves.direction == "worst_case"]
        assert set(worst.n) == {1} and worst.ci_low.isna().all() and set(worst.objective) == {"loss", "accuracy"}
        for objective, sign in (("loss", 1), ("accuracy", -1)):  # the worst found within a growing ball never recovers
            along = sign * worst[worst.objective == objective].sort_values("sigma").value.to_numpy()
            assert np.all(np.diff(along) >= 0), (objective, along)
        # sigma = 0 is the checkpoint itself: the batch loss (from the logits) and the task's accuracy (by hand)
        ids = fixed_batch(checkpoint, train, 8)
        tokens, mask = pad(ids, checkpoint.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(tokens, attention_mask=mask.long()).logits
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        expected = float(losses[mask[:, 1:]].mean())
        at_zero = curves[curves.sigma == 0].set_index(["objective", "direction"]).value
        assert at_zero["loss", "random"] == pytest.approx(expected, rel=1e-5)
        assert at_zero["loss", "worst_case"] == pytest.approx(expected, rel=1e-5)
        task = DownstreamTask.from_documents(finetune, "topic")
        rows = np.random.default_rng(0).permutation(len(finetune))[:16]
        assert at_zero["accuracy", "random"] == pytest.approx(_label_accuracy_by_hand(model, task, checkpoint.tokenizer,
                                                                                       checkpoint.n_ctx, rows))
        radii = group[group.metric == "basin_sigma"].set_index(["objective", "direction"])
        assert len(radii) == 4 and set(radii.variant) >= {"objective=accuracy, direction=worst_case"}
        for (objective, direction), row in radii.iterrows():
            assert 0 < row.value <= 0.2 and row.tau == (0.1 if objective == "loss" else 0.05)
            assert row.n == (2 if direction == "random" else 1)
        # the worst case is never wider than the random basin on the loss
        assert radii.loc[("loss", "worst_case")].value <= radii.loc[("loss", "random")].value
        # relative radius: sigma over the root mean square of every trained weight (the perturbed parameters)
        weights = torch.cat([p.detach().flatten().double() for p in trainable_copy(model).parameters()])
        rms = float(weights.pow(2).mean().sqrt())
        relative = group[group.metric == "basin_sigma_relative"].set_index(["objective", "direction"])
        for key, row in radii.iterrows():
            assert relative.loc[key].value == pytest.approx(row.value / rms, rel=1e-6)
            assert relative.loc[key].ci_high == pytest.approx(row.ci_high / rms, rel=1e-6, nan_ok=True)
        checkpoint.unload()


def test_bisected_basins_of_a_tiny_llama_have_the_grid_walks_random_radius(tiny_sweep):
    from plastiscope.landscape import start
    from plastiscope.memo import Memo
    from plastiscope.options import validate

    inputs = Inputs(train_data=load_corpus("train", 100))
    options = {"n_docs": 8, "lanczos_steps": 0, "trace_probes": 0, "n_directions": 3, "worst_case_steps": 0, "n_resamples": 200,
               "sigmas": [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0]}
    frames = {}
    for search in ("grid", "bisect"):
        config = validate("landscape", OPTIONS, options | {"basin_search": search})
        frames[search] = start(tiny_sweep[1], inputs, config, Memo()).finish().set_index(["metric", "sigma"])
    radius = {k: f.xs("basin_sigma", level="metric").iloc[0] for k, f in frames.items()}
    assert not radius["grid"].censored and not radius["grid"].below_grid  # the edge lies inside the grid
    for column in ("value", "ci_low", "ci_high"):
        assert radius["bisect"][column] == pytest.approx(radius["grid"][column], rel=1e-9)
    curves = {k: f.xs("basin_curve", level="metric") for k, f in frames.items()}
    assert len(curves["bisect"]) < len(curves["grid"]) == len(options["sigmas"])
    both = curves["bisect"][curves["bisect"].n == 3].index
    np.testing.assert_allclose(curves["bisect"].loc[both, "value"], curves["grid"].loc[both, "value"], rtol=1e-9)


def test_landscape_of_a_bfloat16_checkpoint_runs_in_a_float32_copy(tiny_sweep):
    train = load_corpus("train", 100)
    options = {k: v for k, v in SMALL.items() if k not in ("label_column", "basin_docs")} | {"worst_case_steps": 0}
    path = tiny_sweep[0].path
    low = Checkpoint.from_pretrained(path, name="bf16").to(dtype="bfloat16")
    reference = Checkpoint.from_pretrained(path, name="rounded")
    with torch.no_grad():  # the same weights as the bf16 model holds, in float32
        for p in reference.hf_model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    frames = []
    for checkpoint in (low, reference):
        results, failures = run_analyses([checkpoint], ["landscape"], Inputs(train_data=train), {"landscape": options}, progress=False)
        assert failures.empty, failures.to_dict("records")
        frames.append(results.set_index(["metric", "variant"]).value)
    assert next(low.hf_model.parameters()).dtype == torch.bfloat16  # the checkpoint itself is untouched
    np.testing.assert_allclose(frames[0].sort_index().to_numpy(), frames[1].sort_index().to_numpy(), rtol=1e-4)


def test_landscape_refuses_bad_options_and_inputs(tiny_sweep):
    from plastiscope.runner import prepare

    inputs = Inputs(train_data=load_corpus("train", 10))
    with pytest.raises(ValueError, match="sigmas"):
        prepare(["landscape"], inputs, {"landscape": {"sigmas": [0.01, 0.1]}})
    with pytest.raises(ValueError, match="unknown option"):
        prepare(["landscape"], inputs, {"landscape": {"n_probes": 3}})
    with pytest.raises(ValueError, match="nothing to measure"):
        prepare(["landscape"], inputs, {"landscape": {"lanczos_steps": 0, "trace_probes": 0, "n_directions": 0, "worst_case_steps": 0}})
    with pytest.raises(ValueError, match="accuracy_tau"):
        prepare(["landscape"], inputs, {"landscape": {"accuracy_tau": 1.5}})
    from plastiscope.landscape import start
    from plastiscope.memo import Memo
    from plastiscope.options import validate

    config = validate("landscape", OPTIONS, {"label_column": "topic"})
    with pytest.raises(ValueError, match="finetune-data"):
        start(tiny_sweep[0], inputs, config, Memo())
    finetune = load_corpus("finetune", 50)
    unlabelled = type(finetune)(finetune.texts, {}, "plain.txt")
    with pytest.raises(DataError, match="no column 'topic'"):
        start(tiny_sweep[0], Inputs(train_data=inputs.train_data, finetune_data=unlabelled), config, Memo())
    one_label = type(finetune)(finetune.texts, {"topic": ["plant"] * len(finetune)}, "one.jsonl")
    with pytest.raises(ValueError, match="two distinct"):
        start(tiny_sweep[0], Inputs(train_data=inputs.train_data, finetune_data=one_label), config, Memo())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_landscape_on_cuda_matches_the_cpu(tiny_sweep):
    train, finetune = load_corpus("train", 100), load_corpus("finetune", 200)
    path = tiny_sweep[0].path
    frames = []
    for device in ("cpu", "cuda"):
        checkpoint = Checkpoint.from_pretrained(path, name="same").to(device=device)
        results, failures = run_analyses([checkpoint], ["landscape"], Inputs(train_data=train, finetune_data=finetune),
                                         {"landscape": SMALL}, progress=False)
        assert failures.empty, failures.to_dict("records")
        if device == "cuda":
            assert next(checkpoint.hf_model.parameters()).is_cuda
        frames.append(results.set_index(["metric", "variant"]).value.sort_index())
    np.testing.assert_allclose(frames[1].to_numpy(), frames[0].to_numpy(), rtol=2e-3, atol=1e-5)
