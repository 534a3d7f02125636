"""Exact posteriors of Gaussian classes (Theorem 1 of Ren et al. 2020) against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import multivariate_normal

from softmax_repro.methods.bayes_posterior import (
    GaussianClasses,
    exact_posterior,
    kl_divergence,
    make_gaussian_classes,
    total_variation,
)
from softmax_repro.methods.losses import BalancedSoftmaxLoss, softmax_cross_entropy


def test_log_likelihood_matches_scipy() -> None:
    problem = make_gaussian_classes(num_classes=4, dim=3, separation=2.0, seed=0)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    ours = problem.log_likelihood(x)
    for c in range(4):
        ref = multivariate_normal(mean=problem.means[c].numpy(), cov=1.0).logpdf(x.numpy())
        assert torch.allclose(ours[:, c], torch.as_tensor(ref, dtype=torch.float64), atol=1e-10)


def test_two_class_posterior_is_the_logistic_closed_form() -> None:
    problem = GaussianClasses(means=torch.tensor([[-1.0], [1.0]]), sigma=1.0)
    x = torch.tensor([[0.5], [-2.0]])
    post = exact_posterior(problem.log_likelihood(x), [0.8, 0.2])
    # log-odds of class 1 = 2 m x / σ² + log(π1 / π0) with m = 1
    for i, xi in enumerate([0.5, -2.0]):
        expected = 1.0 / (1.0 + math.exp(-(2.0 * xi + math.log(0.2 / 0.8))))
        assert post[i, 1].item() == pytest.approx(expected, abs=1e-12)
    assert post[0, 1].item() == pytest.approx(0.40460, abs=1e-4)  # by hand: σ(1 − ln 4)


def test_prior_shift_is_a_per_class_log_prior_offset() -> None:
    problem = make_gaussian_classes(num_classes=5, dim=2, separation=1.5, seed=3)
    x, _ = problem.sample([3] * 5, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([500.0, 200.0, 50.0, 10.0, 2.0])
    loglik = problem.log_likelihood(x)
    shifted, balanced = exact_posterior(loglik, counts), exact_posterior(loglik, torch.ones(5))
    gap = shifted.log() - balanced.log() - (counts / counts.sum()).log()
    assert torch.allclose(gap, gap[:, :1].expand_as(gap), atol=1e-10)
    assert torch.allclose(balanced, torch.softmax(loglik, dim=1), atol=1e-12)
    assert torch.allclose(shifted.sum(1), torch.ones(15, dtype=torch.float64))


def test_sample_counts_and_moments() -> None:
    problem = make_gaussian_classes(num_classes=3, dim=2, separation=4.0, seed=0)
    assert torch.allclose(problem.means.norm(dim=1), torch.full((3,), 4.0, dtype=torch.float64))
    x, y = problem.sample([4000, 0, 9000], generator=torch.Generator().manual_seed(0))
    assert torch.bincount(y, minlength=3).tolist() == [4000, 0, 9000]
    for c in (0, 2):
        pts = x[y == c].double()
        assert torch.allclose(pts.mean(0), problem.means[c], atol=0.06)
        assert torch.allclose(pts.std(0), torch.ones(2, dtype=torch.float64), atol=0.04)


def test_distances_by_hand() -> None:
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    assert total_variation(p, q).item() == pytest.approx(0.4)
    assert kl_divergence(p, q).item() == pytest.approx(0.5 * math.log(5 / 9) + 0.5 * math.log(5))
    assert total_variation(p, p).item() == 0.0 and kl_divergence(q, q).item() == pytest.approx(0.0)
    one_hot = torch.eye(3)
    assert torch.allclose(total_variation(one_hot, one_hot.roll(1, 0)), torch.ones(3).double())
    assert kl_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])).item() \
        == pytest.approx(math.log(2))


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="sigma"):
        GaussianClasses(means=torch.zeros(2, 1), sigma=0.0)
    with pytest.raises(ValueError, match="prior"):
        exact_posterior(torch.zeros(1, 3), [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="counts"):
        make_gaussian_classes(2, 1, 1.0, 0).sample([1, 2, 3])


def _fit_linear(loss_fn, x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def test_theorem1_softmax_learns_prior_shifted_and_balanced_softmax_balanced() -> None:
    problem = make_gaussian_classes(num_classes=3, dim=2, separation=2.0, seed=0)
    counts = torch.tensor([6000, 1200, 240])
    x, y = problem.sample(counts, generator=torch.Generator().manual_seed(1))
    x_test, _ = problem.sample([2000] * 3, generator=torch.Generator().manual_seed(2))
    loglik = problem.log_likelihood(x_test)
    shifted, balanced = exact_posterior(loglik, counts), exact_posterior(loglik, torch.ones(3))

    softmax = _fit_linear(softmax_cross_entropy, x, y, 3)
    bsm = _fit_linear(BalancedSoftmaxLoss(counts), x, y, 3)
    with torch.no_grad():
        p_softmax, p_bsm = softmax(x_test).softmax(1), bsm(x_test).softmax(1)

    assert total_variation(p_softmax, shifted).mean() < 0.03
    assert total_variation(p_bsm, balanced).mean() < 0.03
    assert total_variation(p_softmax, balanced).mean() > 3 * total_variation(p_bsm, balanced).mean()
