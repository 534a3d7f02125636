"""β-softmax (gradient decay) loss, its helpers and chapter 06's experiment (config, splits,
determinism, LR selection, the paper profile's code path, a smoke run against the claims file)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softmax_repro.config import ConfigError
from softmax_repro.experiments import ch06_gradient_decay as chapter
from softmax_repro.methods import gradient_decay as gd
from softmax_repro.pipeline import claims


def _logits(n: int = 64, c: int = 10, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * scale


# --------------------------------------------------------------------------- the loss


def test_beta_one_is_cross_entropy() -> None:
    z = _logits()
    y = torch.arange(64) % 10
    torch.testing.assert_close(gd.beta_softmax_loss(z, y, 1.0), F.cross_entropy(z, y),
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(gd.beta_softmax_per_example(z, y, 1.0),
                               F.cross_entropy(z, y, reduction="none"), rtol=1e-13, atol=1e-13)
    z32 = z.float()
    torch.testing.assert_close(gd.beta_softmax_loss(z32, y, 1.0), F.cross_entropy(z32, y))


def test_hand_computed_value_and_the_direct_form() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0])
    expected = math.log(0.1 + math.exp(-2.0) + math.exp(-3.0))
    assert gd.beta_softmax_loss(z, y, 0.1).item() == pytest.approx(expected, rel=1e-14)
    # −log p̃_y with p̃_y = e^{z_y} / (Σ_{j≠y} e^{z_j} + β e^{z_y}), the transcribed form
    z, y = _logits(scale=1.0), torch.arange(64) % 10
    for beta in (0.01, 0.1, 3.0, 10.0):
        e = z.exp()
        target = e.gather(1, y[:, None]).squeeze(1)
        direct = -torch.log(target / (e.sum(1) - target + beta * target))
        torch.testing.assert_close(gd.beta_softmax_per_example(z, y, beta), direct)


def test_gradient_matches_the_closed_form() -> None:
    y = torch.arange(64) % 10
    for beta in (0.01, 0.1, 1.0, 3.0, 10.0):
        z = _logits().requires_grad_(True)
        gd.beta_softmax_per_example(z, y, beta).sum().backward()
        grad = z.grad
        p = z.detach().softmax(1)
        py = p.gather(1, y[:, None]).squeeze(1)
        torch.testing.assert_close(grad.gather(1, y[:, None]).squeeze(1),
                                   gd.beta_softmax_target_grad(z.detach(), y, beta))
        others = p / (1 - py + beta * py)[:, None]
        mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
        torch.testing.assert_close(grad[mask], others[mask])


def test_small_beta_keeps_confident_gradients_large() -> None:
    z = torch.tensor([[6.0, 0.0, 0.0]], dtype=torch.float64)  # p_y ≈ 0.995
    y = torch.tensor([0])
    grads = [abs(gd.beta_softmax_target_grad(z, y, b).item()) for b in (0.01, 0.1, 1.0, 10.0)]
    assert grads == sorted(grads, reverse=True)
    assert grads[0] > 10 * grads[2]
    assert grads[2] > 9 * grads[3]  # ≈ β-fold decay for p_y → 1


def test_stable_for_huge_logits() -> None:
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = gd.beta_softmax_loss(z, y, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert gd.beta_softmax_per_example(z.detach(), y, 0.01)[1].item() == pytest.approx(2e4)


def test_bad_inputs_are_rejected() -> None:
    z, y = _logits(4), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ConfigError, match="beta"):
        gd.beta_softmax_loss(z, y, 0.0)
    with pytest.raises(ConfigError, match="beta"):
        gd.BetaSoftmaxLoss(-1.0)
    with pytest.raises(ValueError, match="target"):
        gd.beta_softmax_loss(z, y[:3], 1.0)
    with pytest.raises(ValueError, match="logits"):
        gd.beta_softmax_loss(z[:, :1], y, 1.0)
    with pytest.raises(ConfigError, match="warmup share"):
        gd.beta_warmup(0.01, 10.0, 1.5)


def test_warmup_schedule_and_step_counting() -> None:
    schedule = gd.beta_warmup(0.01, 10.0, 0.5)
    assert schedule(0, 100) == pytest.approx(0.01)
    assert schedule(25, 100) == pytest.approx(math.sqrt(0.01 * 10.0))
    assert schedule(50, 100) == schedule(99, 100) == 10.0
    assert gd.beta_warmup(0.01, 10.0, 0.0)(0, 100) == 10.0
    loss = gd.BetaSoftmaxLoss(schedule, total_steps=100)
    z, y = _logits(4), torch.tensor([0, 1, 2, 3])
    loss(z.requires_grad_(True), y)
    loss(z, y)
    assert loss.step == 2
    with torch.no_grad():
        loss(z, y)  # evaluation does not advance the schedule
    assert loss.step == 2
    assert loss.current_beta == pytest.approx(schedule(2, 100))


def test_margin_and_temperature() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 4.0, 1.0]])
    torch.testing.assert_close(gd.logit_margin(z, torch.tensor([0, 0])), torch.tensor([1.0, -4.0]))
    # labels drawn from softmax(z / 2): the fitted temperature recovers 2
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20_000, 5, generator=g) * 3
    y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)
    t = gd.fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.05)
    grid = torch.linspace(1.5, 2.5, 201)
    best = grid[torch.stack([F.cross_entropy(z / s, y) for s in grid]).argmin()]
    assert t == pytest.approx(float(best), abs=0.01)


def test_ece_agrees_with_a_hand_computed_value() -> None:
    # two bins used: confidences 0.9 (both correct) and 0.6 (one of two correct)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    target = torch.tensor([0, 0, 0, 0])
    out = chapter.calibration(probs.log(), target, bins=10)
    expected = 0.5 * abs(0.9 - 1.0) + 0.5 * abs(0.6 - 0.5)
    assert out["ece"] == pytest.approx(expected, abs=1e-6)
    assert out["nll"] == pytest.approx(float(-(probs[:, 0].log()).mean()), rel=1e-6)


def test_half_rise_time() -> None:
    assert chapter.half_rise_time(np.array([0.0, 0.5, 1.0])) == pytest.approx(0.5)
    assert chapter.half_rise_time(np.array([0.0, 0.25, 0.75, 1.0])) == pytest.approx(0.5)
    assert chapter.half_rise_time(np.array([0.0, 1.0, 1.0, 1.0])) == pytest.approx(1 / 6)
    assert chapter.half_rise_time(np.array([0.5, 0.4])) == 1.0  # never rises: as late as can be


# --------------------------------------------------------------------------- the experiment


def test_profiles_build_and_cpu_has_five_seeds() -> None:
    for profile in chapter.PROFILES:
        chapter.make_config(profile)
    cpu = chapter.make_config("cpu")
    assert len(cpu.seeds) >= 5
    assert cpu.betas == (0.01, 0.1, 1.0, 3.0, 10.0)
    assert cpu.methods[-1] == chapter.WARMUP
    assert chapter.make_config("paper").dataset == "cifar10"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"betas": [0.1, 10.0]}, "must contain 1"),
        ({"betas": [0.0, 1.0]}, "betas item"),
        ({"lrs": []}, "lrs is empty"),
        ({"dataset": "mnist"}, "dataset='mnist'"),
        ({"patch": 3}, "patch=3"),
        ({"normalisers": ["softmax", "relu"]}, "normalisers item"),
        ({"scales": []}, "scales is empty"),
        ({"val_fraction": 0.9}, "val_fraction"),
        ({"data_files": "/tmp/x"}, "only used with a hub dataset"),
        ({"warmup_share": 2.0}, "warmup_share"),
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
    ],
)
def test_bad_values_raise_config_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chapter.make_config("smoke", overrides=overrides)


TINY = {"num_samples": 400, "epochs": 2, "lrs": [0.05, 0.1], "tracked": 50, "scales": [1.0, 16.0],
        "normalisers": ["softmax", "cosmax"], "att_epochs": 1, "probe_size": 40, "hidden": 16,
        "att_dim": 8}


def test_split_is_exact_and_fixed() -> None:
    config = chapter.make_config("smoke", overrides={"num_samples": 400})
    a, b = chapter.load_data(config), chapter.load_data(config)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert len(a.y_train) + len(a.y_val) == 320 and len(a.y_val) == 64
    rows = {tuple(r.tolist()) for r in a.x_train}
    assert not rows & {tuple(r.tolist()) for r in a.x_val}
    tracked = chapter.tracked_indices(config, a)
    assert len(tracked) == len(set(tracked.tolist())) == min(config.tracked, 256)


def test_select_learning_rates_keeps_the_best_validation_rate() -> None:
    base = {"part": "beta", "dataset": "d", "series": "lr_search", "seed": 0}
    rows = []
    for method, vals in (("beta_1", (0.5, 0.7, 0.7)), ("beta_10", (0.6, 0.4, 0.5))):
        for lr, val in zip((0.03, 0.1, 0.3), vals, strict=True):
            rows.append({**base, "method": method, "lr": lr, "metric": "val_top1", "value": val})
            rows.append({**base, "method": method, "lr": lr, "metric": "ece", "value": lr})
            rows.append({**base, "series": "trajectory", "method": method, "lr": lr,
                         "quintile": 1, "epoch": 0, "metric": "p_y", "value": lr})
    rows.append({**base, "method": "beta_10", "lr": 1.0, "metric": "diverged", "value": 1.0})
    out = chapter.select_learning_rates(rows, (0.03, 0.1, 0.3, 1.0))
    chosen = {r["method"]: r["value"] for r in out if r["metric"] == "lr"}
    assert chosen == {"beta_1": 0.1, "beta_10": 0.03}  # tie -> the earlier rate; 1.0 diverged
    tuned = [r for r in out if r["series"] == "tuned" and r["metric"] == "ece"]
    assert {r["method"]: r["value"] for r in tuned} == chosen
    assert all("lr" not in r for r in out if r["series"] != "lr_search")
    assert len([r for r in out if r["series"] == "trajectory"]) == 2
    assert len([r for r in out if r["series"] == "lr_search"]) == 7
    only_diverged = [{**base, "method": "beta_3", "lr": 1.0, "metric": "diverged", "value": 1.0}]
    with pytest.raises(FloatingPointError, match="every learning rate"):
        chapter.select_learning_rates(rows + only_diverged, (0.03, 0.1, 0.3, 1.0))


def test_tiny_run_is_deterministic_and_complete(tmp_path: Path) -> None:
    config = chapter.make_config("smoke", seeds=[0, 1], device="cpu", overrides=TINY)
    first = chapter.run(config, results_dir=str(tmp_path / "a")).rows
    second = chapter.run(config, results_dir=str(tmp_path / "b")).rows
    cols = [c for c in first.columns if c != "wall_s"]
    pd_equal = first[cols].fillna(-1).reset_index(drop=True).equals(
        second[cols].fillna(-1).reset_index(drop=True))
    assert pd_equal
    tuned = first[first["series"] == "tuned"]
    assert set(tuned["method"]) == {*config.methods, chapter.CE_TS}
    attention = first[first["part"] == "attention"]
    assert set(attention["method"]) == {"softmax", "cosmax"}
    assert set(attention["scale"]) == {1.0, 16.0}
    traj = first[first["series"] == "trajectory"]
    assert set(traj["quintile"]) == {1, 2, 3, 4, 5}
    assert set(traj["epoch"]) == {0, 1, 2}


def test_smoke_rows_satisfy_the_claims_file(tmp_path: Path) -> None:
    """Every test and health check of the chapter's claims finds rows in a smoke run."""
    config = chapter.make_config("smoke", seeds=[0, 1], device="cpu",
                                 overrides={**TINY, "normalisers": list(chapter.att.NORMALISERS),
                                            "scales": [1.0, 64.0]})
    rows = chapter.run(config, results_dir=str(tmp_path)).rows
    selected = claims.chapter_claims(chapter.CHAPTER)
    assert any(c.tests for c in selected)
    for claim in selected:
        if claim.not_attempted:
            continue
        claims.check_vocabulary(claim, rows)
        verdict = claims.evaluate_claim(claim, rows, strict=True)
        assert len(verdict.outcomes) == len(claim.tests)
        for check in claim.health:
            assert claims.comparison_values(check, rows, claim.id) is not None, check.label


def test_paper_profile_code_path_on_tiny_hub_parquet(tmp_path: Path,
                                                     hub_offline: None) -> None:
    datasets = pytest.importorskip("datasets")
    image = pytest.importorskip("PIL.Image")
    features = datasets.Features({
        "img": datasets.Image(),
        "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)]),
    })
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        pixels = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        table = datasets.Dataset.from_dict(
            {"img": [image.fromarray(p) for p in pixels], "label": [i % 10 for i in range(n)]},
            features=features)
        table.to_parquet(str(tmp_path / f"{split}-00000.parquet"))
    config = chapter.make_config(
        "paper", seeds=[0], device="cpu",
        overrides={"data_files": str(tmp_path), "epochs": 1, "lrs": [0.1], "batch_size": 16,
                   "resnet_depth": 8, "tracked": 10, "att_epochs": 1, "att_dim": 8,
                   "att_depth": 1, "scales": [1.0], "normalisers": ["softmax"], "probe_size": 8,
                   "betas": [1.0], "warmup_share": 0.0, "threads": 1})
    rows = chapter.run(config, results_dir=str(tmp_path / "results")).rows
    assert set(rows["dataset"]) == {"cifar10"}
    assert {"beta_1", "ce_ts", "softmax"} <= set(rows["method"])
