"""Benchmark: plastiscope's batched probe trainer vs a loop of scikit-learn LogisticRegression.

Both fit one L2 multinomial logistic regression per layer on the same standardised
features, same training split, same C (scikit-learn's meaning), same tolerance and
iteration cap; both report held-out accuracy on the same test split.

Features are synthetic and class-structured like a residual stream: an anisotropic
Gaussian (power-law spectrum, a few massive dimensions, per-layer random rotation) plus
class means whose strength grows with depth, so accuracy is meaningful and varies by layer.

    python benchmarks/probes.py            # 12 layers, d=768, 8k examples (~1.5 min)
    python benchmarks/probes.py --full     # the issue's size: 12 layers, d=768, 20k examples
    python benchmarks/probes.py --cv       # also time the inner-CV choice of C (batched vs loop)
    python benchmarks/probes.py --transfer # the transferability estimators and the majority baseline
                                           # against the probe's own evaluation (2000 x 2048 by default)

Targets: speed ratio >= 10x, accuracy difference <= 1 point; the transferability estimators
and baselines add a small fraction of the probe evaluation's time (reported as a ratio).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from plastiscope.probes import (
    cross_validate,
    fit_logistic,
    majority_scores,
    paired_accuracy_difference,
    standardization,
    transfer_records,
)
from plastiscope.probes.evaluate import split


def synthetic_features(n_layers: int, n: int, d: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X [layer, example, feature]`` float32 and labels ``y [example]``.

    Per layer: Gaussian noise with a power-law spectrum (eigenvalues ~ i^-1.6, in a random
    basis), class means drawn with the same spectrum (signal in every direction, as the
    whitened view of a residual stream), strength growing with depth, a few massive dimensions
    and non-zero means. After standardisation the features stay strongly correlated, which is
    what makes plain L-BFGS slow on real activations.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    spectrum = (1.0 + np.arange(d)) ** -0.8
    X = np.empty((n_layers, n, d), dtype=np.float32)
    for layer in range(n_layers):
        basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        strength = 0.03 + 0.09 * layer / max(n_layers - 1, 1)
        means = (rng.standard_normal((n_classes, d)) * spectrum * strength).astype(np.float32) @ basis.T
        x = (rng.standard_normal((n, d), dtype=np.float32) * spectrum.astype(np.float32)) @ basis.T + means[y]
        x[:, rng.choice(d, 3, replace=False)] *= 30.0  # massive activation dimensions
        X[layer] = x + rng.standard_normal(d) * 0.5  # non-zero means
    return X, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the issue's size: 20k examples")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None, help="default 12 (2 with --transfer: its cost is per layer)")
    parser.add_argument("--d-model", type=int, default=None, help="default 768 (2048 with --transfer)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--cv", action="store_true", help="also compare choosing C by 3-fold CV over 4 values")
    parser.add_argument("--threads", type=int, default=1, help="threads for both torch and BLAS (same for both sides)")
    parser.add_argument("--transfer", action="store_true",
                        help="time the transferability estimators and the majority baseline against the probe evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        if args.transfer:
            run_transfer(args)
        else:
            run(args)


def run_transfer(args: argparse.Namespace) -> None:
    """The extra time of ``transfer=True`` and ``majority=True`` in :func:`~plastiscope.probes.evaluate_layers`,
    against the probe evaluation they join (default options: 5 outer folds, 3 inner folds, 4 values of C, MDL, Fisher)."""
    n = args.examples or 2000
    L, d = args.layers or 2, args.d_model or 2048
    print(f"size: {L} layers x {n} examples x d={d}, {args.classes} classes; {args.threads} thread(s)")
    X, y = synthetic_features(L, n, d, args.classes)
    Xt = torch.from_numpy(X)
    start = time.perf_counter()
    _, held = cross_validate(Xt, y, control_task=False)
    probe_time = time.perf_counter() - start
    start = time.perf_counter()
    records = transfer_records(Xt, y)
    transfer_time = time.perf_counter() - start
    start = time.perf_counter()
    folds = split(y, None, 5, 0)
    _, majority = majority_scores(y, folds)
    paired_accuracy_difference(held.correct, majority, held.fold)
    baseline_time = time.perf_counter() - start
    print(f"probe evaluation: {probe_time:.1f} s ({probe_time / L:.1f} s per layer)")
    print(f"transferability estimators: {transfer_time:.1f} s ({transfer_time / L:.1f} s per layer), "
          f"{transfer_time / probe_time:.1%} of the probe evaluation")
    print(f"majority baseline and its paired bootstrap: {baseline_time:.2f} s, {baseline_time / probe_time:.1%} of the probe evaluation")
    for r in records:
        detail = {k: round(v, 4) for k, v in r.items() if k in ("shrinkage", "fit_r2")}
        print(f"  layer {r['layer']} {r['metric']:>10} {r['value']:.4f} {detail or ''}")


def run(args: argparse.Namespace) -> None:
    n = args.examples or (20000 if args.full else 8000)
    L, d, K = args.layers or 12, args.d_model or 768, args.classes
    print(f"size: {L} layers x {n} examples x d={d}, {K} classes; C={args.C}, tol={args.tol}, max_iter={args.max_iter}; "
          f"{args.threads} thread(s) for torch and BLAS")
    X, y = synthetic_features(L, n, d, K)
    train, test = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(n), y))

    # ---- plastiscope: every layer in one batched fit
    Xt = torch.from_numpy(X)
    start = time.perf_counter()
    mask = torch.zeros(n, dtype=torch.bool)
    mask[train] = True
    mean, scale = standardization(Xt, mask)
    fit = fit_logistic(Xt, torch.as_tensor(y), args.C, mask.float(), n_classes=K, mean=mean, scale=scale,
                       max_iter=args.max_iter, tol=args.tol)
    pred = fit.logits(Xt[:, test])[:, 0].argmax(-1).numpy()
    ours_time = time.perf_counter() - start
    ours_acc = (pred == y[test]).mean(1)

    # ---- scikit-learn: one LogisticRegression(lbfgs) per layer
    start = time.perf_counter()
    sk_acc, sk_iter = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in range(L):
            scaler = StandardScaler().fit(X[layer, train])
            model = LogisticRegression(C=args.C, solver="lbfgs", max_iter=args.max_iter, tol=args.tol)
            model.fit(scaler.transform(X[layer, train]), y[train])
            sk_acc.append(model.score(scaler.transform(X[layer, test]), y[test]))
            sk_iter.append(int(model.n_iter_[0]))
    sk_time = time.perf_counter() - start
    sk_acc = np.array(sk_acc)

    print(f"{'layer':>5} {'acc plastiscope':>16} {'acc sklearn':>12} {'iters ours':>11} {'iters sklearn':>14}")
    for layer in range(L):
        print(f"{layer:>5} {ours_acc[layer]:>16.4f} {sk_acc[layer]:>12.4f} {int(fit.n_iter[layer, 0]):>11} {sk_iter[layer]:>14}")
    diff = np.abs(ours_acc - sk_acc).max() * 100
    print(f"plastiscope batched trainer: {ours_time:.2f} s; sklearn loop: {sk_time:.2f} s")
    print(f"speed ratio: {sk_time / ours_time:.1f}x (target >= 10x)")
    print(f"max accuracy difference: {diff:.2f} points (target <= 1)")

    if args.cv:
        Cs = [0.01, 0.1, 1.0, 10.0]
        folds = list(StratifiedKFold(3, shuffle=True, random_state=1).split(np.zeros(len(train)), y[train]))
        start = time.perf_counter()
        weights, C = [], []
        for tr, _ in folds:
            w = np.zeros(n, dtype=np.float32)
            w[train[tr]] = 1
            for c in Cs:
                weights.append(w)
                C.append(c)
        cv_fit = fit_logistic(Xt, torch.as_tensor(y), torch.tensor(C), torch.as_tensor(np.stack(weights)), n_classes=K,
                              mean=mean, scale=scale, max_iter=args.max_iter, tol=args.tol)
        logits = cv_fit.logits(Xt)  # [L, P, n, K]
        ours_cv = np.zeros((L, len(Cs)))
        for f, (_, va) in enumerate(folds):
            for c in range(len(Cs)):
                ours_cv[:, c] += (logits[:, f * len(Cs) + c, train[va]].argmax(-1).numpy() == y[train[va]]).mean(1)
        ours_cv_time = time.perf_counter() - start
        start = time.perf_counter()
        sk_cv = np.zeros((L, len(Cs)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for layer in range(L):
                for tr, va in folds:
                    Z = (X[layer] - mean[layer].numpy()) / scale[layer].numpy()
                    for c, value in enumerate(Cs):
                        model = LogisticRegression(C=value, max_iter=args.max_iter, tol=args.tol).fit(Z[train[tr]], y[train[tr]])
                        sk_cv[layer, c] += model.score(Z[train[va]], y[train[va]])
        sk_cv_time = time.perf_counter() - start
        ours_cv, sk_cv = ours_cv / len(folds), sk_cv / len(folds)
        same = (ours_cv.argmax(1) == sk_cv.argmax(1)).mean()
        print(f"C by 3-fold CV over {Cs}: plastiscope {ours_cv_time:.2f} s, sklearn loop {sk_cv_time:.2f} s, "
              f"ratio {sk_cv_time / ours_cv_time:.1f}x; max CV-accuracy difference "
              f"{np.abs(ours_cv - sk_cv).max() * 100:.2f} points; same C chosen on {same:.0%} of layers")
        print("  CV accuracy per layer and C (plastiscope / sklearn):")
        for layer in range(L):
            print("  ", layer, " ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(ours_cv[layer], sk_cv[layer])))


if __name__ == "__main__":
    main()
