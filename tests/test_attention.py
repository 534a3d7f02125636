"""Attention normalisers (softmax and the periodic alternatives), the probe and the small model."""

from __future__ import annotations

import math

import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.methods import attention as att


def _scores(shape: tuple[int, ...] = (4, 6, 9), scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("name", att.NORMALISERS)
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_rows_sum_to_one_where_promised(name: str, scale: float) -> None:
    weights, guarded = att.normalise(name, _scores(scale=scale))
    assert weights.shape == (4, 6, 9) and guarded.shape == (4, 6)
    assert torch.isfinite(weights).all()
    ok = ~guarded
    torch.testing.assert_close(weights.sum(-1)[ok], torch.ones_like(weights.sum(-1)[ok]))
    if name in att.NON_NEGATIVE:
        assert (weights >= 0).all()


def test_forms_match_their_definitions() -> None:
    x = _scores()
    torch.testing.assert_close(att.normalise("softmax", x)[0], torch.softmax(x, -1))
    torch.testing.assert_close(att.normalise("sin_softmax", x)[0], torch.softmax(torch.sin(x), -1))
    s2 = torch.sin(x + math.pi / 4) ** 2
    torch.testing.assert_close(att.normalise("sin2max_shifted", x)[0],
                               s2 / s2.sum(-1, keepdim=True))
    c = torch.cos(x)
    torch.testing.assert_close(att.normalise("cosmax", x)[0], c / c.sum(-1, keepdim=True))
    # hand-computed: a row (0, π/4) gives sin²(π/4), sin²(π/2) = 1/2, 1 -> 1/3, 2/3
    w, _ = att.normalise("sin2max_shifted", torch.tensor([[0.0, math.pi / 4]], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([[1 / 3, 2 / 3]], dtype=torch.float64))


def test_prenorm_standardises_and_makes_forms_scale_invariant() -> None:
    x = _scores()
    z = att.prenorm(x)
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, 6, dtype=torch.float64))
    torch.testing.assert_close(z.var(-1), torch.ones(4, 6, dtype=torch.float64), rtol=1e-4,
                               atol=1e-4)
    for name in ("norm_softmax", "norm_cosmax"):
        small, _ = att.normalise(name, x)
        large, _ = att.normalise(name, 100 * x)
        torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rows of >= 2"):
        att.prenorm(torch.zeros(3, 1))


def test_cosmax_denominator_is_guarded_and_counted() -> None:
    row = torch.tensor([[0.0, math.pi], [0.0, 0.0]], dtype=torch.float64)  # cos sums: 0 and 2
    weights, guarded = att.normalise("cosmax", row)
    assert guarded.tolist() == [True, False]
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[1], torch.tensor([0.5, 0.5], dtype=torch.float64))
    w, _ = att.normalise("cosmax", torch.tensor([[0.0, 2.0, 2.5]]))
    assert (w < 0).any()  # the cos forms can go negative


def test_softmax_gradient_vanishes_when_saturated_and_periodic_forms_do_not() -> None:
    def jacobian_norm(name: str, scale: float) -> float:
        x = (_scores((1, 1, 8), seed=3) * scale).requires_grad_(True)
        weights, _ = att.normalise(name, x)
        (weights * torch.arange(8.0, dtype=torch.float64)).sum().backward()
        return float(x.grad.norm())

    assert jacobian_norm("softmax", 100.0) < 1e-6 * jacobian_norm("softmax", 1.0)
    for name in ("sin2max_shifted", "sin_softmax"):
        assert jacobian_norm(name, 100.0) > 1e-2


def test_unknown_normaliser_is_rejected() -> None:
    with pytest.raises(ConfigError, match="normaliser"):
        att.normalise("relumax", _scores())
    with pytest.raises(ConfigError, match="scale"):
        att.AttentionClassifier(8, 5, 10, "softmax", scale=0.0)


def test_to_tokens() -> None:
    x = torch.arange(2 * 40, dtype=torch.float32).reshape(2, 40)
    tokens = att.to_tokens(x, 5)
    assert tokens.shape == (2, 8, 5)
    assert torch.equal(tokens[1, 2], torch.arange(50.0, 55.0))
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = att.to_tokens(img, 2)
    assert patches.shape == (2, 4, 12)
    assert torch.equal(patches[0, 1].reshape(3, 2, 2), img[0, :, 0:2, 2:4])
    with pytest.raises(ValueError, match="multiple"):
        att.to_tokens(x, 3)
    with pytest.raises(ValueError, match="to_tokens"):
        att.to_tokens(torch.zeros(2, 3, 4), 2)


def test_model_shapes_and_probe() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 8, 5), torch.randint(0, 10, (16,))
    for scale in (1.0, 50.0):
        model = att.AttentionClassifier(8, 5, 10, "softmax", scale, dim=16, depth=2)
        assert model(x).shape == (16, 10)
        probe = att.score_probe(model, x, y)
        assert probe["qk_grad"] == pytest.approx(scale * probe["score_grad"], rel=1e-6)
        assert probe["row_sum_error"] < 1e-5
        assert probe["guarded_share"] == probe["negative_share"] == 0.0
        assert all(p.grad is None for p in model.parameters())
        assert all(layer.weights is None for layer in model.layers)
    saturated = att.score_probe(att.AttentionClassifier(8, 5, 10, "softmax", 500.0), x, y)
    assert saturated["saturated_share"] > 0.5
    with pytest.raises(ValueError, match="tokens"):
        model(torch.randn(16, 40))
