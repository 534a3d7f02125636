"""Losses against hand-computed values, torch references, gradients and invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from softmax_repro.methods import losses


def test_balanced_softmax_equals_ce_on_balanced_counts():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    loss = losses.BalancedSoftmaxLoss([7, 7, 7, 7, 7])
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target), atol=1e-6)


def test_balanced_softmax_is_ce_on_logits_plus_log_counts_values_and_gradients():
    torch.manual_seed(1)
    counts = torch.tensor([100.0, 30.0, 10.0, 1.0])
    logits = torch.randn(8, 4, requires_grad=True)
    target = torch.randint(0, 4, (8,))
    ours = losses.BalancedSoftmaxLoss(counts)(logits, target)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits + counts.log(), target)
    (grad_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-6)


def test_balanced_softmax_hand_computed_value():
    # one example, logits (0, 0), counts (3, 1), target 1: -log(1 / (3 + 1)) = log 4
    value = losses.BalancedSoftmaxLoss([3, 1])(torch.zeros(1, 2), torch.tensor([1]))
    assert value.item() == pytest.approx(math.log(4), abs=1e-6)
    quarter = losses.BalancedSoftmaxLoss([16, 1], power=0.25)(torch.zeros(1, 2), torch.tensor([1]))
    assert quarter.item() == pytest.approx(math.log(3), abs=1e-6)  # 16^(1/4) = 2


def test_power_zero_is_plain_ce():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.allclose(
        losses.BalancedSoftmaxLoss([9, 3, 1], power=0)(logits, target),
        F.cross_entropy(logits, target),
    )


def test_zero_count_class_raises_clear_error():
    with pytest.raises(ValueError, match=r"classes \[2\] have no training examples"):
        losses.BalancedSoftmaxLoss([5, 3, 0])


def test_class_count_mismatch_raises():
    with pytest.raises(ValueError, match="3 classes but class_counts has 2"):
        losses.BalancedSoftmaxLoss([5, 3])(torch.zeros(1, 3), torch.tensor([0]))


def test_posthoc_adjustment_subtracts_log_prior():
    adjusted = losses.posthoc_logit_adjustment(torch.zeros(1, 2), [3, 1])
    assert torch.allclose(adjusted, torch.tensor([[-math.log(0.75), -math.log(0.25)]]))


def test_focal_gamma_zero_is_ce_and_down_weights_easy_examples():
    logits, target = torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 0])
    assert torch.allclose(losses.FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    p = torch.sigmoid(torch.tensor(4.0))
    expected = (-((1 - p) ** 2) * p.log() + -(0.5**2) * math.log(0.5)) / 2
    assert losses.FocalLoss(2.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_class_balanced_weights_inverse_frequency_mean_one():
    weights = losses.class_balanced_weights([4, 1])
    assert torch.allclose(weights, torch.tensor([0.4, 1.6]))
    logits, target = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    ref = F.cross_entropy(logits, target, weight=weights)
    assert torch.allclose(losses.WeightedCrossEntropy(weights)(logits, target), ref)


def test_class_balanced_sample_weights_equalise_class_mass():
    labels = torch.tensor([0, 0, 0, 1])
    weights = losses.class_balanced_sample_weights(labels, 2)
    assert weights[labels == 0].sum() == pytest.approx(weights[labels == 1].sum())


def test_balanced_softmax_per_example_losses_average_to_the_loss():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(7, 4, generator=gen), torch.tensor([0, 1, 2, 3, 0, 1, 3])
    loss = losses.BalancedSoftmaxLoss([40, 20, 5, 1], power=0.5)
    each = loss.per_example(logits, target)
    assert each.shape == (7,)
    assert torch.allclose(each.mean(), loss(logits, target))
    shifted = logits + 0.5 * torch.tensor([40.0, 20.0, 5.0, 1.0]).log()
    assert torch.allclose(each, F.cross_entropy(shifted, target, reduction="none"))
    with pytest.raises(ValueError, match="3 classes"):
        loss.per_example(logits[:, :3], target)
