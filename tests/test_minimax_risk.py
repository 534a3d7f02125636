"""Minimax risk classifiers with 0-1 loss and their error bounds (chapter 08)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from sklearn.datasets import load_iris

from softmax_repro.engine import training
from softmax_repro.methods import minimax_risk as mrc


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared machine's cores stall multi-threaded small kernels."""
    with training.cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    x = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.float64)
    return x, torch.as_tensor(y)


def test_varphi_equals_brute_force_over_class_subsets():
    gen = torch.Generator().manual_seed(0)
    psi = mrc.linear_features(torch.randn(20, 3, generator=gen, dtype=torch.float64))
    mu = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    value, row, mask = mrc.varphi(mu, psi)
    scores = psi @ mu.T
    brute = max((float(scores[:, list(c)].sum(1).max()) - 1.0) / len(c)
                for r in range(1, 5) for c in itertools.combinations(range(4), r))
    assert float(value) == pytest.approx(brute, abs=1e-12)
    assert float((scores[row, mask].sum() - 1) / mask.sum()) == pytest.approx(brute, abs=1e-12)


def test_moments_by_hand():
    psi = mrc.linear_features(torch.tensor([[1.0], [3.0]], dtype=torch.float64))
    tau, lam = mrc.feature_moments(psi, torch.tensor([0, 1]), 2, s=1.0)
    assert torch.allclose(tau, torch.tensor([[0.5, 0.5], [0.5, 1.5]], dtype=torch.float64))
    assert torch.allclose(lam, torch.tensor([[0.5, 0.5], [0.5, 1.5]], dtype=torch.float64)
                          / 2**0.5)


def _lp_upper(x, y, num_classes, s=0.3):
    """The minimax risk as a linear programme over every non-empty class subset (exact)."""
    psi = mrc.linear_features(x)
    tau, lam = mrc.feature_moments(psi, y, num_classes, s)
    n, d = psi.shape
    p = num_classes * d
    blocks, rhs = [], []
    for r in range(1, num_classes + 1):
        for subset in itertools.combinations(range(num_classes), r):
            a = np.zeros((n, 2 * p + 1))
            for c in subset:
                a[:, c * d:(c + 1) * d] = psi.numpy()
            a[:, -1] = -r
            blocks.append(a)
            rhs.append(np.ones(n))
    eye = np.eye(p)
    blocks += [np.hstack([eye, -eye, np.zeros((p, 1))]), np.hstack([-eye, -eye, np.zeros((p, 1))])]
    rhs += [np.zeros(p), np.zeros(p)]
    cost = np.concatenate([-tau.numpy().ravel(), lam.numpy().ravel(), [1.0]])
    res = linprog(cost, A_ub=np.vstack(blocks), b_ub=np.concatenate(rhs),
                  bounds=[(None, None)] * (2 * p + 1), method="highs")
    return 1.0 + res.fun


def test_subgradient_upper_bound_approaches_the_exact_minimax_risk(iris):
    x, y = iris
    model = mrc.fit_mrc(x, y, 3, iterations=1_500)
    exact = _lp_upper(x, y, 3)
    assert exact - 1e-9 <= model.upper <= exact + 0.01


def test_bounds_contain_the_error_on_the_training_distribution(iris):
    """The empirical distribution of the training set lies in the uncertainty set (its feature
    means are τ exactly), so the randomised rule's training error must lie in [lower, upper]."""
    x, y = iris
    model = mrc.fit_mrc(x, y, 3, iterations=500)
    train_error = mrc.expected_error(model.probabilities(x), y)
    assert model.lower - 1e-9 <= train_error <= model.upper + 1e-9
    probs = model.probabilities(x)
    assert torch.allclose(probs.sum(1), torch.ones(len(y), dtype=torch.float64))
    assert bool((probs >= 0).all())
    assert model.predict(x).shape == y.shape


def test_wrong_bounds_are_caught(iris):
    """Falsification control: a bound computed for the uniform rule does not contain the error of
    the MRC's rule (the uniform rule has error 2/3 on three balanced classes)."""
    x, y = iris
    model = mrc.fit_mrc(x, y, 3, iterations=300)
    uniform = torch.full((len(y), 3), 1 / 3, dtype=torch.float64)
    assert mrc.expected_error(uniform, y) == pytest.approx(2 / 3)
    assert mrc.expected_error(model.probabilities(x), y) < 2 / 3 - 0.1


def test_bad_s_rejected(iris):
    x, y = iris
    with pytest.raises(ValueError, match="s=-1"):
        mrc.fit_mrc(x, y, 3, s=-1.0)
