"""BALMS meta sampler: the draw, the meta set, the hypergradient, the direction of meta steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softmax_repro.methods.losses import BalancedSoftmaxLoss, softmax_cross_entropy
from softmax_repro.methods.meta_sampler import (
    MetaSampler,
    balanced_batch,
    class_balanced_indices,
    draw_examples,
    index_by_class,
    meta_step,
    per_example_loss,
    sgd_step,
)


def test_initial_rates_follow_counts_power() -> None:
    counts = torch.tensor([400.0, 40.0, 4.0])
    assert torch.allclose(MetaSampler(counts).rates(), counts / counts.sum(), atol=1e-6)
    assert torch.allclose(MetaSampler(counts, init_power=1.0).rates(), torch.full((3,), 1 / 3))
    over = MetaSampler(counts, init_power=2.0).rates()
    assert torch.allclose(over, (1 / counts) / (1 / counts).sum(), atol=1e-6)


def test_draw_frequencies_weights_and_gradient() -> None:
    sampler = MetaSampler([50, 30, 20])
    draw = sampler.draw(20_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draw.classes, minlength=3).float() / 20_000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)
    assert torch.equal(draw.weights.detach(), torch.ones(20_000))
    (grad,) = torch.autograd.grad(draw.weights[:5].sum(), [sampler.logits])
    assert grad.abs().sum() > 0
    assert grad.sum().abs() < 1e-5  # softmax gradients are invariant to a common shift


def test_draw_is_reproducible_with_a_generator() -> None:
    sampler = MetaSampler([5, 5, 5, 5])
    a = sampler.draw(64, generator=torch.Generator().manual_seed(3)).classes
    b = sampler.draw(64, generator=torch.Generator().manual_seed(3)).classes
    assert torch.equal(a, b)


def test_draw_examples_stays_within_the_class() -> None:
    labels = torch.tensor([2, 0, 1, 2, 2, 0])
    groups = index_by_class(labels, 3)
    classes = torch.tensor([2, 2, 0, 1, 2, 0, 1] * 20)
    idx = draw_examples(classes, groups, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels[idx], classes)
    assert set(idx[classes == 2].tolist()) == {0, 3, 4}


def test_class_balanced_meta_set_counts_and_repeats() -> None:
    labels = torch.tensor([0] * 100 + [1] * 10 + [2] * 2)
    idx = class_balanced_indices(labels, 3, size=32, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx], minlength=3).tolist() == [11, 11, 10]
    head = idx[labels[idx] == 0]
    assert head.unique().numel() == 11  # no repeats while a class has enough examples
    tail = idx[labels[idx] == 2]
    assert torch.bincount(tail - 110).tolist() == [5, 5]  # a 2-example class is cycled evenly
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        index_by_class(torch.tensor([0, 2]), 3)


def test_per_example_loss_matches_reduction_none() -> None:
    logits = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    ours = per_example_loss(softmax_cross_entropy, logits, target)
    assert torch.allclose(ours, F.cross_entropy(logits, target, reduction="none"))
    bsm = per_example_loss(BalancedSoftmaxLoss([8, 4, 2, 1]), logits, target)
    ref = F.cross_entropy(logits + torch.tensor([8.0, 4, 2, 1]).log(), target, reduction="none")
    assert torch.allclose(bsm, ref, atol=1e-6)


def test_meta_step_equals_the_hand_derived_hypergradient() -> None:
    """d L_meta / dθ = −(lr/B) Σ_b ⟨∇_W L_meta(W'), ∇_W ℓ_b(W)⟩ · d soft_b / dθ."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=gen), torch.tensor([0, 1, 2, 0, 1, 0])
    meta_x, meta_y = torch.randn(9, 3, generator=gen), torch.tensor([0, 1, 2] * 3)
    torch.manual_seed(0)
    classifier = torch.nn.Linear(3, 3)
    sampler = MetaSampler([30, 20, 10])
    draw = sampler.draw(6, generator=gen)
    lr = 0.5
    before = sampler.logits.detach().clone()
    w0 = [p.detach().clone() for p in classifier.parameters()]

    per_grads = []
    for b in range(6):
        per_grads.append(torch.autograd.grad(
            F.cross_entropy(classifier(x[b : b + 1]), y[b : b + 1]), list(classifier.parameters())))
    mean_grad = [sum(g[i] for g in per_grads) / 6 for i in range(2)]
    stepped_w, stepped_b = (w - lr * g for w, g in zip(w0, mean_grad, strict=True))
    stepped_w.requires_grad_(True)
    stepped_b.requires_grad_(True)
    meta_grad = torch.autograd.grad(
        F.cross_entropy(meta_x @ stepped_w.T + stepped_b, meta_y), [stepped_w, stepped_b])
    expected = torch.zeros(3)
    for b in range(6):
        dot = sum((gm * gb).sum() for gm, gb in zip(meta_grad, per_grads[b], strict=True))
        (d_soft,) = torch.autograd.grad(draw.weights[b], [sampler.logits], retain_graph=True)
        expected += -(lr / 6) * dot * d_soft

    optimizer = torch.optim.SGD(sampler.parameters(), lr=1.0)
    meta_step(sampler, optimizer, classifier, softmax_cross_entropy, x, y, draw.weights,
              meta_x, meta_y, inner_lr=lr)
    assert torch.allclose(before - sampler.logits.detach(), expected, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(classifier.parameters(), w0, strict=True))


def test_sgd_step_matches_torch_sgd_with_momentum_and_weight_decay() -> None:
    """Two steps: the first without a momentum buffer, the second continuing from SGD's."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=0.01)
    named = dict(model.named_parameters())
    for _ in range(2):
        buffers = {n: optimizer.state.get(p, {}).get("momentum_buffer") for n, p in named.items()}
        params = {n: p.detach().clone().requires_grad_(True) for n, p in named.items()}
        loss = F.cross_entropy(x @ params["weight"].T + params["bias"], y)
        grads = torch.autograd.grad(loss, list(params.values()))
        expected = sgd_step(params, list(grads), 0.3, 0.9, 0.01, buffers)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        for name, p in named.items():
            assert torch.allclose(expected[name], p.detach(), atol=1e-6), name


def test_balanced_batch_draws_every_class_equally() -> None:
    groups = [torch.arange(0, 50), torch.arange(50, 53)]
    batch = balanced_batch(groups, 10, torch.Generator().manual_seed(0))
    assert (batch < 50).sum() == 5 and (batch >= 50).sum() == 5
    assert set((batch[batch >= 50]).tolist()) == {50, 51, 52}  # the tail cycles its 3 examples


def _toy_long_tail(counts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    return means[y] + 1.2 * torch.randn(y.numel(), 2, generator=gen), y


def _trained_classifier(loss_fn, x, y, weights=None) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.multinomial(weights if weights is not None else torch.ones(y.numel()), 256,
                                replacement=True, generator=gen)
        optimizer.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model


def _run_meta_steps(sampler, classifier, loss_fn, x, y, steps: int = 20) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    groups = index_by_class(y, 3)
    meta_idx = class_balanced_indices(y, 3, size=300, generator=gen)
    optimizer = torch.optim.Adam(sampler.parameters(), lr=0.05)
    for _ in range(steps):
        draw = sampler.draw(256, generator=gen)
        idx = draw_examples(draw.classes, groups, generator=gen)
        meta_step(sampler, optimizer, classifier, loss_fn, x[idx], y[idx], draw.weights,
                  x[meta_idx], y[meta_idx], inner_lr=0.5)
    return sampler.rates().detach()


def test_meta_steps_raise_tail_rates_for_a_head_biased_ce_classifier() -> None:
    counts = [800, 80, 8]
    x, y = _toy_long_tail(counts, seed=0)
    classifier = _trained_classifier(softmax_cross_entropy, x, y)
    sampler = MetaSampler(counts)
    start = sampler.rates().detach()
    rates = _run_meta_steps(sampler, classifier, softmax_cross_entropy, x, y)
    assert rates[2] > 2 * start[2] and rates[1] > start[1] and rates[0] < start[0]


def test_meta_steps_undo_over_balance_for_balanced_softmax() -> None:
    """BS + a 1/n² sampler over-weights the tail (paper Eq. 11-12): rates move back to the head."""
    counts = [800, 80, 8]
    x, y = _toy_long_tail(counts, seed=0)
    loss = BalancedSoftmaxLoss(counts)
    inverse = 1.0 / torch.tensor(counts, dtype=torch.float64)[y]
    classifier = _trained_classifier(loss, x, y, weights=inverse)
    sampler = MetaSampler(counts, init_power=1.0)
    rates = _run_meta_steps(sampler, classifier, loss, x, y)
    assert rates[0] > 1 / 3 + 0.05 and rates[2] < 1 / 3 - 0.05
