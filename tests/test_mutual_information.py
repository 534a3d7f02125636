"""Exact MI of Gaussian class mixtures, the softmax / PC-softmax estimators, the neural bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmax_repro.data.synthetic import (
    IMBALANCE_RATIOS,
    PAPER_MEANS,
    class_counts,
    sample_gaussian_classes,
)
from softmax_repro.methods import losses
from softmax_repro.methods import mutual_information as mi

# PAPERS.md §4: exact MI (nats) of the paper's setup, balanced and imbalanced.
TABLE = {1: (1.0314, 1.0224), 2: (1.3003, 1.2393), 5: (1.5544, 1.4449), 10: (1.6058, 1.4868)}


def test_two_well_separated_classes_give_log_2():
    assert mi.exact_mutual_information([0.0, 40.0], [1, 1]) == pytest.approx(math.log(2), abs=1e-9)


def test_identical_classes_give_zero():
    assert mi.exact_mutual_information([1.5, 1.5, 1.5], [1, 2, 3], dim=4) == pytest.approx(
        0.0, abs=1e-12)


def test_separated_imbalanced_classes_give_label_entropy():
    priors = [1, 3]
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert mi.entropy(priors) == pytest.approx(expected)
    assert mi.exact_mutual_information([-30.0, 30.0], priors) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("dim", sorted(TABLE))
def test_paper_table_values(dim):
    balanced, imbalanced = TABLE[dim]
    assert mi.exact_mutual_information(PAPER_MEANS, [1] * 5, dim) == pytest.approx(
        balanced, abs=0.002)
    assert mi.exact_mutual_information(PAPER_MEANS, IMBALANCE_RATIOS, dim) == pytest.approx(
        imbalanced, abs=0.002)


def test_exact_mi_matches_monte_carlo_with_true_posterior():
    """Mean of log p(y|x)/p(y) over samples, with the known densities, agrees with quadrature."""
    counts = (3000, 6000, 9000, 12000, 15000)
    dim = 3
    x, y = sample_gaussian_classes(PAPER_MEANS, counts, dim, seed=0)
    means = torch.tensor(PAPER_MEANS)[:, None] * torch.ones(dim)
    log_lik = -0.5 * ((x[:, None, :].double() - means[None].double()) ** 2).sum(-1)  # [N, K]
    mc = float(mi.pointwise_mi(log_lik, y, counts).mean())
    assert mc == pytest.approx(mi.exact_mutual_information(PAPER_MEANS, counts, dim), abs=0.01)


def test_two_class_two_dim_matches_closed_form_by_projection():
    """d = 2 with offsets ±a equals the 1-D mixture with offsets ±a√2."""
    two_d = mi.exact_mutual_information([-1.0, 1.0], [1, 1], dim=2)
    one_d = mi.exact_mutual_information([-math.sqrt(2), math.sqrt(2)], [1, 1], dim=1)
    assert two_d == pytest.approx(one_d, abs=1e-12)
    assert 0 < two_d < math.log(2)


def test_softmax_estimate_is_log_k_minus_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    ce = -(math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
           + math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3)))) / 2
    assert mi.softmax_mi_estimate(logits, y) == pytest.approx(math.log(3) - ce, abs=1e-6)


def test_pc_softmax_with_uniform_prior_equals_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator)
    y = torch.randint(0, 5, (50,), generator=generator)
    expected = mi.softmax_mi_estimate(logits, y)
    assert mi.pc_softmax_mi_estimate(logits, y, [7] * 5) == pytest.approx(expected, abs=1e-6)
    assert float(mi.pointwise_mi(logits, y).mean()) == pytest.approx(expected, abs=1e-6)


def test_pc_softmax_pointwise_value_by_hand():
    logits = torch.tensor([[1.0, 2.0]])
    priors = [1, 3]
    expected = 1.0 - math.log(0.25 * math.e + 0.75 * math.e**2)
    assert float(mi.pointwise_mi(logits, torch.tensor([0]), priors)) == pytest.approx(expected)


def test_pc_softmax_training_gradient_equals_balanced_softmax():
    counts = [5, 10, 15, 20, 25]
    p = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=generator)
    pc_loss = -(logits.gather(1, y[:, None]).squeeze(1)
                - torch.logsumexp(logits + p.log(), dim=1)).mean()
    (pc_grad,) = torch.autograd.grad(pc_loss, logits)
    bs_loss = mi.training_loss("pc_softmax", counts)(logits.float(), y)
    (bs_grad,) = torch.autograd.grad(bs_loss, logits)
    assert isinstance(mi.training_loss("pc_softmax", counts), losses.BalancedSoftmaxLoss)
    torch.testing.assert_close(bs_grad, pc_grad, atol=1e-6, rtol=1e-5)


def test_infonce_grouped_equals_pairwise_definition():
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(12, 4, generator=generator)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 1, 2, 0, 0])  # class 3 absent
    pair = scores[:, y]  # f(x_i, y_j)
    expected = (pair.diagonal() - torch.logsumexp(pair, dim=1) + math.log(12)).mean()
    torch.testing.assert_close(mi.infonce_bound(scores, y), expected)


def test_bounds_with_the_optimal_critic_reach_the_true_mi():
    """With f = log p(y|x)/p(y) (+1 for NWJ) all bounds are tight up to Monte Carlo error."""
    counts = (4000,) * 5
    x, y = sample_gaussian_classes(PAPER_MEANS, counts, 2, seed=3)
    means = torch.tensor(PAPER_MEANS)[:, None] * torch.ones(2)
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    log_post = F.log_softmax(log_lik, dim=1)
    critic = log_post + math.log(5)  # log p(y|x)/p(y)
    truth = mi.exact_mutual_information(PAPER_MEANS, counts, 2)
    assert float(mi.dv_bound(critic, y, counts)) == pytest.approx(truth, abs=0.02)
    assert float(mi.nwj_bound(critic + 1.0, y, counts)) == pytest.approx(truth, abs=0.02)
    assert float(mi.infonce_bound(critic, y)) == pytest.approx(truth, abs=0.02)
    assert mi.estimate("softmax", log_lik, y, counts) == pytest.approx(truth, abs=0.02)


def test_plain_estimator_is_biased_and_pc_is_not_under_imbalance():
    """With the Bayes posterior as logits, log K − CE overshoots by log K − H(Y); PC-softmax
    with log-likelihood logits is unbiased."""
    counts = class_counts("imbalanced", 3000)
    x, y = sample_gaussian_classes(PAPER_MEANS, counts, 1, seed=4)
    log_lik = -0.5 * (x - torch.tensor(PAPER_MEANS)[None]) ** 2
    log_p = torch.log(torch.tensor(counts, dtype=torch.float32) / sum(counts))
    truth = mi.exact_mutual_information(PAPER_MEANS, counts, 1)
    plain = mi.estimate("softmax", log_lik + log_p, y, counts)
    assert plain - truth == pytest.approx(math.log(5) - mi.entropy(counts), abs=0.03)
    assert mi.estimate("pc_softmax", log_lik, y, counts) == pytest.approx(truth, abs=0.02)


def test_training_loss_and_estimate_reject_unknown_methods():
    with pytest.raises(ValueError, match="mine"):
        mi.training_loss("mutual", [1, 1])
    with pytest.raises(ValueError, match="softmax"):
        mi.estimate("mutual", torch.zeros(2, 2), torch.tensor([0, 1]), [1, 1])


def test_exact_mi_rejects_bad_input():
    with pytest.raises(ValueError, match="priors"):
        mi.exact_mutual_information([0.0, 1.0], [1.0, -1.0])
    with pytest.raises(ValueError, match="dim"):
        mi.exact_mutual_information([0.0, 1.0], [1, 1], dim=0)


def test_class_counts_and_sampling():
    assert class_counts("balanced", 10_000) == (10_000,) * 5
    assert class_counts("imbalanced", 10_000) == (5_000, 10_000, 15_000, 20_000, 25_000)
    x, y = sample_gaussian_classes(PAPER_MEANS, (300, 200, 100, 100, 100), 3, seed=5)
    assert x.shape == (800, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [300, 200, 100, 100, 100]
    class_means = np.array([x[y == k].mean().item() for k in range(5)])
    np.testing.assert_allclose(class_means, PAPER_MEANS, atol=0.15)
    x2, y2 = sample_gaussian_classes(PAPER_MEANS, (300, 200, 100, 100, 100), 3, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="balance"):
        class_counts("skewed", 10)
