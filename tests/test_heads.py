"""Output heads: KerBS kernel and mixture, reallocation invariants, and the other heads."""

from __future__ import annotations

import math

import pytest
import torch

from softmax_repro.methods.heads import (
    MAX_SENSES,
    AdaptiveSoftmaxHead,
    KerBSHead,
    MixtureOfSoftmaxesHead,
    SoftmaxHead,
    kernel_coefficient,
    kernel_logits,
    senses_table,
    soft_clip_theta_raw,
)


def _heads(hidden: int, vocab: int) -> list[torch.nn.Module]:
    return [
        SoftmaxHead(hidden, vocab),
        KerBSHead(hidden, vocab, allocation=[1, 2, 3, 4, 1, 2, 1, 1]),
        KerBSHead(hidden, vocab, senses_per_word=2, kernel="dot"),
        MixtureOfSoftmaxesHead(hidden, vocab, components=3),
        AdaptiveSoftmaxHead(hidden, vocab, cutoffs=[3]),
    ]


def test_every_head_returns_normalised_log_probs_and_matching_nll() -> None:
    torch.manual_seed(0)
    h = torch.randn(6, 5)
    target = torch.tensor([0, 1, 2, 3, 7, 5])
    for head in _heads(5, 8):
        log_probs = head(h)
        assert log_probs.shape == (6, 8)
        torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(6))
        expected = -log_probs.gather(1, target[:, None]).squeeze(1)
        torch.testing.assert_close(head.nll(h, target), expected, rtol=1e-5, atol=1e-5)


def test_kerbs_with_one_sense_and_dot_kernel_equals_full_softmax_values_and_gradients() -> None:
    torch.manual_seed(1)
    softmax = SoftmaxHead(4, 7)
    kerbs = KerBSHead(4, 7, senses_per_word=1, kernel="dot")
    with torch.no_grad():
        kerbs.weight.copy_(softmax.proj.weight)
        kerbs.bias.copy_(softmax.proj.bias)
    h1 = torch.randn(5, 4, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    target = torch.tensor([0, 6, 3, 3, 1])
    torch.testing.assert_close(kerbs(h2), softmax(h1))
    softmax.nll(h1, target).sum().backward()
    kerbs.nll(h2, target).sum().backward()
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(kerbs.weight.grad, softmax.proj.weight.grad)
    torch.testing.assert_close(kerbs.bias.grad, softmax.proj.bias.grad)


def test_kernel_tends_to_dot_product_as_theta_goes_to_zero_with_gradients() -> None:
    torch.manual_seed(2)
    h = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    theta = torch.full((5,), 1e-6, dtype=torch.float64)
    kernel = kernel_logits(h, w, theta)
    dot = h @ w.T
    torch.testing.assert_close(kernel, dot, rtol=1e-5, atol=1e-6)
    grads_kernel = torch.autograd.grad(kernel.sum(), (h, w))
    grads_dot = torch.autograd.grad(dot.sum(), (h, w))
    for a, b in zip(grads_kernel, grads_dot, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # a large theta is visibly different from the dot product on positive-cosine pairs
    assert not torch.allclose(kernel_logits(h, w, torch.full((5,), 3.0, dtype=torch.float64)), dot)


def test_kernel_matches_formula_at_hand_picked_points() -> None:
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    weight = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    theta = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    got = kernel_logits(h, weight, theta)[0]
    a1 = 1.0 / (4.0 * ((math.e - 1.0) - 1.0))  # theta = 1
    a2 = 1.0 / (4.0 * ((math.exp(2.0) - 1.0) / 2.0 - 1.0))  # theta = 2
    cos4 = 1.0 / math.sqrt(2.0)
    expected = [
        2 * a1 * 2.0 * (math.e - 1.0),  # cos = 1, |h||w| = 2
        -1.0,  # cos < 0: the dot product
        0.0,  # cos = 0
        2 * a2 * math.sqrt(2.0) * (math.exp(2.0 * cos4) - 1.0),
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6,
                               atol=1e-6)
    assert kernel_coefficient(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(a1)


def test_soft_clip_of_theta_raw() -> None:
    x = torch.tensor([-6.0, -4.0, 0.0, 2.5, 3.0, 5.0, 100.0, -100.0], dtype=torch.float64)
    expected = [-5 + math.exp(-2.0), -4.0, 0.0, 2.5, 3.0, 4 - math.exp(-2.0), 4.0, -5.0]
    torch.testing.assert_close(soft_clip_theta_raw(x),
                               torch.tensor(expected, dtype=torch.float64))


def test_kerbs_probability_is_the_sum_over_a_words_senses() -> None:
    torch.manual_seed(3)
    head = KerBSHead(3, 3, allocation=[2, 1, 3])
    with torch.no_grad():
        head.theta_raw.uniform_(-1.0, 1.0)
    h = torch.randn(4, 3)
    sense_probs = torch.softmax(head.sense_logits(h), dim=1)
    owner = head.sense_word
    expected = torch.stack([sense_probs[:, owner == w].sum(dim=1) for w in range(3)], dim=1)
    torch.testing.assert_close(head(h).exp(), expected)


def test_kerbs_log_space_is_stable_for_huge_logits() -> None:
    torch.manual_seed(4)
    head = KerBSHead(4, 6, senses_per_word=3)
    h = 1e4 * torch.randn(5, 4)
    target = torch.arange(5)
    assert torch.isfinite(head.nll(h, target)).all()
    log_probs = head(h)
    assert torch.isfinite(log_probs.logsumexp(dim=1)).all()
    torch.testing.assert_close(log_probs.logsumexp(dim=1), torch.zeros(5), atol=1e-4, rtol=0)


def test_senses_table_pads_and_validates() -> None:
    index, mask = senses_table(torch.tensor([0, 1, 1, 0, 2]), 3)
    assert mask.sum(dim=1).tolist() == [2, 2, 1]
    assert sorted(index[0][mask[0]].tolist()) == [0, 3]
    assert sorted(index[1][mask[1]].tolist()) == [1, 2]
    assert index[2][mask[2]].tolist() == [4]
    with pytest.raises(ValueError, match="between 1 and 4"):
        senses_table(torch.tensor([0, 0]), 2)  # word 1 has no sense
    with pytest.raises(ValueError, match="between 1 and 4"):
        senses_table(torch.zeros(MAX_SENSES + 1, dtype=torch.long), 1)


def _head_with_statistics(mean_probs: dict[int, float]) -> KerBSHead:
    """8 words × 2 senses; counts 100..103 for words 0-3 and 1 for words 4-7, in the window and
    in total.

    The official eligibility rule (frequency above the (V - V//2 + 1)-th smallest, here 100)
    leaves words 1, 2 and 3 able to gain senses.
    """
    head = KerBSHead(2, 8, senses_per_word=2)
    head.word_count.copy_(torch.tensor([100.0, 101.0, 102.0, 103.0] + [1.0] * 4))
    head.word_total.copy_(head.word_count)
    mean_prob = torch.full((8,), 0.5)
    for word, prob in mean_probs.items():
        mean_prob[word] = prob
    head.word_prob_sum.copy_(head.word_count * mean_prob)
    head.usage.copy_(torch.arange(16, dtype=torch.float32).flip(0))  # sense 15 least used
    return head


@pytest.mark.parametrize(("order", "winner"), [("paper", 1), ("code", 2)])
def test_reallocation_orders_serve_poorly_or_well_predicted_words_first(order: str,
                                                                        winner: int) -> None:
    head = _head_with_statistics({1: 0.01, 2: 0.99})
    moved = head.reallocate(max_moves=1, order=order)
    assert moved == 1
    counts = head.senses_per_word()
    assert counts[winner] == 3
    assert counts.sum() == 16
    assert head.sense_word[15] == winner  # the least-used sense moved


def test_reallocation_invariants() -> None:
    torch.manual_seed(5)
    head = _head_with_statistics({})
    weight_before = head.weight.detach().clone()
    for _ in range(10):
        head.usage.copy_(torch.rand(head.num_senses))
        head.word_count.copy_(torch.tensor([100.0, 101.0, 102.0, 103.0] + [1.0] * 4))
        head.word_prob_sum.copy_(head.word_count * 0.1)
        head.reallocate(max_moves=3, order="paper")
        counts = head.senses_per_word()
        assert counts.sum() == 16
        assert counts.min() >= 1 and counts.max() <= MAX_SENSES
        assert counts[0] <= 2 and (counts[4:] <= 2).all()  # ineligible words never gain
    final = head.senses_per_word()
    assert final[[0, 4, 5, 6, 7]].tolist() == [1] * 5  # every donor drained to one sense
    assert final[1:4].sum() == 16 - 5
    torch.testing.assert_close(head.weight, weight_before)  # moved senses keep their vectors
    assert head.usage.sum() == 0 and head.word_count.sum() == 0  # statistics reset
    # the padded table follows the allocation
    assert head.sense_mask.sum(dim=1).tolist() == head.senses_per_word().tolist()


def test_reallocation_eligibility_uses_training_frequency_not_the_window() -> None:
    # in the last window only the rare words 4-7 were seen; over all training, 0-3 dominate
    head = _head_with_statistics({})
    head.word_count.copy_(torch.tensor([0.0] * 4 + [5.0] * 4))
    head.word_prob_sum.copy_(head.word_count * 0.1)
    head.word_total.copy_(torch.tensor([1000.0, 1001.0, 1002.0, 1003.0] + [5.0] * 4))
    assert head.reallocate(max_moves=8, order="paper") == 3
    assert head.senses_per_word()[4:].tolist() == [2, 1, 1, 1]  # least-used senses 15, 13, 11
    assert (head.senses_per_word()[1:4] == 3).all()  # only frequent words gained
    assert head.word_count.sum() == 0 and head.word_total.sum() == 4026  # total is kept


def test_reallocation_respects_max_moves_and_unknown_order() -> None:
    assert _head_with_statistics({}).reallocate(max_moves=2) == 2
    assert _head_with_statistics({}).reallocate(max_moves=0) == 0
    with pytest.raises(ValueError, match="order"):
        _head_with_statistics({}).reallocate(max_moves=1, order="random")


def test_training_nll_accumulates_reallocation_statistics() -> None:
    torch.manual_seed(6)
    head = KerBSHead(3, 4, senses_per_word=2)
    h = torch.randn(5, 3)
    target = torch.tensor([0, 0, 1, 3, 3])
    nll = head.nll(h, target)
    assert head.word_count.tolist() == [2.0, 1.0, 0.0, 2.0]
    assert head.word_total.tolist() == [2.0, 1.0, 0.0, 2.0]
    torch.testing.assert_close(head.word_prob_sum[0], torch.exp(-nll[:2]).sum())
    torch.testing.assert_close(head.usage.sum(), torch.exp(-nll).sum())
    head.eval()
    head.nll(h, target)
    assert head.word_count.sum() == 5  # evaluation does not count


def test_kerbs_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        KerBSHead(2, 3)
    with pytest.raises(ValueError, match="kernel"):
        KerBSHead(2, 3, senses_per_word=1, kernel="rbf")
    with pytest.raises(ValueError, match="between 1 and 4"):
        KerBSHead(2, 3, senses_per_word=5)
