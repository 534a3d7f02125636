"""Stochastic softmax tricks on enumerable problems (methods/relaxations.py, chapter 08)."""

from __future__ import annotations

import math

import pytest
import torch

from softmax_repro.engine import training
from softmax_repro.methods import relaxations as rx

K, TOP = 6, 2


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared machine's cores stall multi-threaded small kernels."""
    with training.cpu_threads(1):
        yield


@pytest.fixture()
def problem():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(K, generator=gen, dtype=torch.float64)
    target = torch.rand(K, generator=gen, dtype=torch.float64)
    return logits, lambda x: ((x - target) ** 2).sum(dim=-1)


def test_subsets_are_every_k_subset():
    subsets = rx.subset_indicators(8, 3)
    assert subsets.shape == (56, 8)
    assert torch.all(subsets.sum(dim=1) == 3)
    assert len({tuple(r.tolist()) for r in subsets}) == 56
    with pytest.raises(ValueError, match="k=9"):
        rx.subset_indicators(8, 9)


def test_plackett_luce_probabilities_by_hand_and_against_gumbel_top_k(problem):
    logits, _ = problem
    subsets = rx.subset_indicators(K, TOP)
    log_probs = rx.plackett_luce_subset_log_probs(logits, subsets)
    assert float(torch.logsumexp(log_probs, 0)) == pytest.approx(0.0, abs=1e-12)
    w = torch.exp(logits)
    i, j = 0, 1  # subset {0, 1}: both orders, by hand
    by_hand = w[i] / w.sum() * w[j] / (w.sum() - w[i]) + w[j] / w.sum() * w[i] / (w.sum() - w[j])
    assert float(torch.exp(log_probs[0])) == pytest.approx(float(by_hand), rel=1e-12)
    single = rx.plackett_luce_subset_log_probs(logits, rx.subset_indicators(K, 1))
    assert torch.allclose(single, torch.log_softmax(logits, 0))
    gen = torch.Generator().manual_seed(1)
    draws = 200_000
    chosen = rx.argmax_vertex(logits + rx.gumbel((draws, K), gen), subsets)
    freq = torch.bincount(chosen, minlength=len(subsets)).double() / draws
    assert torch.allclose(freq, torch.exp(log_probs), atol=4e-3)


def test_exact_gradient_matches_finite_differences(problem):
    logits, objective = problem
    subsets = rx.subset_indicators(K, TOP)
    fn = lambda t: rx.plackett_luce_subset_log_probs(t, subsets)  # noqa: E731
    grad = rx.exact_gradient(logits, fn, subsets, objective)
    h = 1e-6
    for i in range(K):
        e = torch.zeros(K, dtype=torch.float64)
        e[i] = h
        fd = (rx.exact_expectation(fn(logits + e), subsets, objective)
              - rx.exact_expectation(fn(logits - e), subsets, objective)) / (2 * h)
        assert float(grad[i]) == pytest.approx(float(fd), abs=1e-7)
    scores = rx.score_matrix(logits, fn)
    assert torch.allclose((torch.exp(fn(logits))[:, None] * scores).sum(0),
                          torch.zeros(K, dtype=torch.float64), atol=1e-12)  # E[score] = 0


def test_relaxations_live_on_the_right_polytope_and_tend_to_the_argmax(problem):
    logits, _ = problem
    subsets = rx.subset_indicators(K, TOP)
    u = logits + rx.gumbel((5, K), torch.Generator().manual_seed(2))
    one_hot = rx.subset_indicators(K, 1)
    assert torch.allclose(rx.topk_sst(u, 0.7, one_hot), rx.gumbel_softmax(u, 0.7))
    for relaxed in (rx.topk_sst(u, 0.5, subsets), rx.independent_bernoulli(u, 0.5, TOP)):
        assert torch.allclose(relaxed.sum(-1), torch.full((5,), float(TOP), dtype=u.dtype))
        assert bool(((relaxed > 0) & (relaxed < 1)).all())
    hard = subsets[rx.argmax_vertex(u, subsets)]
    assert torch.allclose(rx.topk_sst(u, 1e-3, subsets), hard, atol=1e-6)
    assert torch.allclose(rx.independent_bernoulli(u, 1e-3, TOP), hard, atol=1e-6)
    assert torch.allclose(rx.gumbel_softmax(u, 1e-3), one_hot[u.argmax(-1)], atol=1e-6)
    copies = logits + rx.gumbel((5, TOP, K), torch.Generator().manual_seed(3))
    l2x = rx.l2x_relaxation(copies, 0.5)
    assert l2x.shape == (5, K) and bool((l2x <= 1).all())


def test_pathwise_gradients_match_finite_differences(problem):
    logits, objective = problem
    u = logits + rx.gumbel((3, K), torch.Generator().manual_seed(4))
    subsets = rx.subset_indicators(K, TOP)
    for relax in (lambda v: rx.independent_bernoulli(v, 0.5, TOP),
                  lambda v: rx.topk_sst(v, 0.5, subsets)):
        grads = rx.relaxed_sample_gradients(u, relax, objective)
        h = 1e-6
        for i in range(K):
            e = torch.zeros(K, dtype=torch.float64)
            e[i] = h
            fd = (objective(relax(u + e)) - objective(relax(u - e))) / (2 * h)
            assert torch.allclose(grads[:, i], fd, atol=1e-6)


def test_reinforce_is_unbiased_and_the_baseline_helps(problem):
    logits, objective = problem
    fn = lambda t: torch.log_softmax(t, 0)  # noqa: E731
    vertices = torch.eye(K, dtype=torch.float64)
    exact = rx.exact_gradient(logits, fn, vertices, objective)
    scores = rx.score_matrix(logits, fn)
    gen = torch.Generator().manual_seed(5)
    repeats, n = 4_000, 4
    chosen = rx.argmax_vertex(logits + rx.gumbel((repeats * n, K), gen), vertices)
    values = objective(vertices)[chosen].reshape(repeats, n)
    s = scores[chosen].reshape(repeats, n, K)
    plain = rx.estimator_error(rx.reinforce_sample_terms(values, s, False).mean(1), exact)
    loo = rx.estimator_error(rx.reinforce_sample_terms(values, s, True).mean(1), exact)
    for errors in (plain, loo):  # bias² of a mean of R estimates is noise of size MSE / R
        assert errors["rel_bias2"] < 5 * errors["rel_mse"] / repeats
    assert loo["rel_mse"] < plain["rel_mse"]
    with pytest.raises(ValueError, match="at least 2"):
        rx.reinforce_sample_terms(values[:, :1], s[:, :1], True)


def test_relaxation_bias_is_detected(problem):
    """Falsification control: a relaxation at a high temperature is biased, and the error
    decomposition sees it (bias² well above REINFORCE's)."""
    logits, objective = problem
    fn = lambda t: torch.log_softmax(t, 0)  # noqa: E731
    exact = rx.exact_gradient(logits, fn, torch.eye(K, dtype=torch.float64), objective)
    u = logits + rx.gumbel((20_000, K), torch.Generator().manual_seed(6))
    grads = rx.relaxed_sample_gradients(u, lambda v: rx.gumbel_softmax(v, 5.0), objective)
    assert rx.estimator_error(grads.reshape(5_000, 4, K).mean(1), exact)["rel_bias2"] > 0.05


def test_estimator_error_by_hand():
    exact = torch.tensor([1.0, 0.0], dtype=torch.float64)
    estimates = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    errors = rx.estimator_error(estimates, exact)
    assert errors == pytest.approx({"rel_bias2": 0.0, "rel_variance": 1.0, "rel_mse": 1.0})
    assert math.isclose(rx.estimator_error(estimates + 1.0, exact)["rel_bias2"], 2.0)
