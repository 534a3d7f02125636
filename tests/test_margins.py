"""Chapter 05 (margins): HASeparator, L-Softmax and D-Softmax losses, the embedding geometry,
the experiment's config, splits and determinism, the paper-profile path and a smoke run whose rows
every claim test finds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_balanced_softmax_experiment import _write_tiny_cifar10  # tests/ is on sys.path

from softmax_repro.config import ConfigError
from softmax_repro.experiments import ch05_margins as chapter
from softmax_repro.methods import margins
from softmax_repro.pipeline import claims
from softmax_repro.pipeline.results import without_timings


def _batch(n: int = 32, dim: int = 6, classes: int = 5, seed: int = 0,
           dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=dtype)
    return x, torch.randint(0, classes, (n,), generator=generator)


# ---------------------------------------------------------------------------------------------
# L-Softmax


def test_cos_multiple_angle_matches_cos_of_m_theta() -> None:
    theta = torch.linspace(0.0, math.pi, 101, dtype=torch.float64)
    for m in (1, 2, 3, 4, 5):
        got = margins.cos_multiple_angle(torch.cos(theta), m)
        torch.testing.assert_close(got, torch.cos(m * theta), rtol=0, atol=1e-12)


def test_psi_is_continuous_decreasing_and_hand_values() -> None:
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    for m in (2, 3, 4):
        values = margins.psi(torch.cos(theta), m)
        assert (values.diff() <= 1e-9).all(), m
        assert values.diff().abs().max() < 0.05  # no jumps at kπ/m
    # m = 2 at θ = 60°: k = 0, cos 120° = −0.5; at θ = 120°: k = 1, −cos 240° − 2 = −1.5
    cos = torch.tensor([0.5, -0.5], dtype=torch.float64)
    torch.testing.assert_close(margins.psi(cos, 2), torch.tensor([-0.5, -1.5], dtype=torch.float64))


def test_lsoftmax_m1_is_bias_free_cross_entropy_exactly() -> None:
    x, y = _batch(dtype=torch.float32)
    loss = margins.LargeMarginSoftmaxLoss(6, 5, margin=1)
    assert torch.equal(loss(x, y), F.cross_entropy(x @ loss.weight.T, y))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_lsoftmax_matches_pytorch_metric_learning(m: int) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    x, y = _batch(n=64, dim=8, classes=7, seed=m)
    ours = margins.LargeMarginSoftmaxLoss(8, 7, margin=m).double()
    peer = pml.LargeMarginSoftmaxLoss(num_classes=7, embedding_size=8, margin=m, scale=1).double()
    with torch.no_grad():
        peer.W.copy_(ours.weight.T)
    torch.testing.assert_close(ours(x, y), peer(x, y), rtol=1e-10, atol=1e-10)


def test_lsoftmax_margin_raises_loss_and_annealing_interpolates() -> None:
    x, y = _batch()
    plain = margins.LargeMarginSoftmaxLoss(6, 5, margin=1)
    values = []
    for m in (1, 2, 3, 4):
        loss = margins.LargeMarginSoftmaxLoss(6, 5, margin=m)
        loss.weight.data.copy_(plain.weight.data)
        values.append(loss(x.float(), y).item())
    assert values == sorted(values) and values[0] < values[-1]
    schedule = margins.LambdaSchedule()
    assert schedule(0) == 1000.0 and schedule(10**7) < 1e-6
    annealed = margins.LargeMarginSoftmaxLoss(6, 5, margin=4, schedule=schedule)
    annealed.weight.data.copy_(plain.weight.data)
    start = annealed(x.float(), y).item()  # λ = 1000: almost softmax
    assert abs(start - values[0]) < 0.02 * abs(values[-1] - values[0])
    assert annealed.step == 1
    logits = annealed.margin_logits(x.float(), y, lam=1.0)
    both = (plain.logits(x.float()) + annealed.margin_logits(x.float(), y, lam=0.0)) / 2
    torch.testing.assert_close(logits, both)


def test_lambda_schedule_compression_reaches_one_at_the_half_point() -> None:
    config = chapter.make_config("cpu")
    schedule = chapter.lambda_schedule(config, total_steps=400)
    assert schedule(200) == pytest.approx(1.0, rel=1e-6)
    assert schedule(0) == config.lambda_base and schedule(400) < 0.01


def test_lsoftmax_gradient_matches_finite_differences() -> None:
    x, y = _batch(n=8, dim=4, classes=3, seed=3)
    loss = margins.LargeMarginSoftmaxLoss(4, 3, margin=3).double()
    x = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, y), (x,))


# ---------------------------------------------------------------------------------------------
# HASeparator


def test_hyperplane_margins_hand_computed() -> None:
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # x̂ = (2, 1)/√5
    got = margins.hyperplane_margins(x, weight, torch.tensor([0]))
    unit = x[0] / x[0].norm()
    expected = [math.inf, float(unit @ torch.tensor([1.0, -1.0], dtype=torch.float64))
                / math.sqrt(2), float(unit @ torch.tensor([2.0, 0.0], dtype=torch.float64)) / 2]
    torch.testing.assert_close(got[0], torch.tensor(expected, dtype=torch.float64))


def test_haseparator_loss_is_ce_plus_hinge_over_other_classes() -> None:
    x, y = _batch(n=16, dim=4, classes=3, seed=1)
    loss = margins.CosineSoftmaxLoss(4, 3, scale=1.0, hinge_margin=0.1).double()
    unit_x, unit_w = F.normalize(x, dim=1), F.normalize(loss.weight, dim=1)
    penalty = torch.zeros(len(y), dtype=torch.float64)
    for i, label in enumerate(y.tolist()):
        for j in range(3):
            if j != label:
                direction = F.normalize(unit_w[label] - unit_w[j], dim=0)
                penalty[i] += torch.clamp(0.1 - unit_x[i] @ direction, min=0.0)
    expected = F.cross_entropy(unit_x @ unit_w.T, y) + penalty.mean()
    torch.testing.assert_close(loss(x, y), expected)
    no_hinge = margins.CosineSoftmaxLoss(4, 3, scale=1.0).double()
    no_hinge.weight.data.copy_(loss.weight.data)
    assert loss(x, y) >= no_hinge(x, y)


def test_cosine_logits_ignore_embedding_and_weight_norms() -> None:
    x, y = _batch()
    loss = margins.CosineSoftmaxLoss(6, 5, scale=16.0, hinge_margin=0.1).double()
    scaled = margins.CosineSoftmaxLoss(6, 5, scale=16.0, hinge_margin=0.1).double()
    scaled.weight.data.copy_(3.0 * loss.weight.data)
    torch.testing.assert_close(loss(x, y), scaled(7.0 * x, y))


# ---------------------------------------------------------------------------------------------
# D-Softmax


def test_dsoftmax_full_inter_term_is_logsumexp_of_non_target_logits() -> None:
    x, y = _batch(n=20, dim=5, classes=9, seed=2)
    loss = margins.DSoftmaxLoss(5, 9, scale=8.0, d=0.9).double()
    cos = margins.cosine_matrix(x, loss.weight)
    for i, label in enumerate(y.tolist()):
        others = torch.cat([cos[i, :label], cos[i, label + 1:]]) * 8.0
        inter = torch.logsumexp(torch.cat([torch.zeros(1, dtype=torch.float64), others]), dim=0)
        intra = math.log1p(math.exp(8.0 * (0.9 - cos[i, label].item())))
        intra_t, inter_t = margins.dsoftmax_terms(cos[i:i + 1, label], others[None] / 8.0, 8.0,
                                                  0.9)
        assert inter_t.item() == pytest.approx(inter.item(), rel=1e-12)
        assert intra_t.item() == pytest.approx(intra, rel=1e-12)
    # the loss is the mean of the two terms over the batch
    intra, inter = margins.dsoftmax_terms(cos.gather(1, y[:, None]).squeeze(1), cos, 8.0, 0.9,
                                          F.one_hot(y, 9).bool())
    torch.testing.assert_close(loss(x, y), (intra + inter).mean())


def test_dsoftmax_sampling_every_class_equals_the_full_loss() -> None:
    x, y = _batch(n=24, dim=5, classes=11, seed=4)
    full = margins.DSoftmaxLoss(5, 11).double()
    sampled = margins.DSoftmaxLoss(5, 11, negatives_per_batch=11).double()
    sampled.weight.data.copy_(full.weight.data)
    torch.testing.assert_close(sampled(x, y), full(x, y))
    few = margins.DSoftmaxLoss(5, 11, negatives_per_batch=3).double()
    few.weight.data.copy_(full.weight.data)
    assert few(x, y) < full(x, y)  # fewer negatives in the sum, no re-weighting


def test_dsoftmax_sampled_gradients_touch_only_sampled_and_target_rows() -> None:
    x, y = _batch(n=4, dim=5, classes=50, seed=5, dtype=torch.float32)
    loss = margins.DSoftmaxLoss(5, 50, negatives_per_batch=3,
                                generator=torch.Generator().manual_seed(7))
    loss(x, y).backward()
    touched = set(torch.nonzero(loss.weight.grad.abs().sum(dim=1)).flatten().tolist())
    sampled = set(torch.randperm(50, generator=torch.Generator().manual_seed(7))[:3].tolist())
    assert touched <= sampled | set(y.tolist()) and touched >= set(y.tolist())


# ---------------------------------------------------------------------------------------------
# geometry


def test_angles_hand_computed() -> None:
    x = torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.0, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    spread = math.degrees(math.atan(0.2))
    assert margins.within_class_angle(x, labels) == pytest.approx(
        (spread + math.degrees(math.atan(0.2)) / 2) / 2, rel=1e-6)
    # class 1's unit vectors lie at 0° and atan(0.2) from the y axis: its mean halfway between
    assert margins.min_class_mean_angle(x, labels) == pytest.approx(90.0 - spread / 2, rel=1e-6)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="margin"):
        margins.LargeMarginSoftmaxLoss(4, 3, margin=0)
    with pytest.raises(ValueError, match="scale"):
        margins.CosineSoftmaxLoss(4, 3, scale=0.0)
    with pytest.raises(ValueError, match="negatives_per_batch"):
        margins.DSoftmaxLoss(4, 3, negatives_per_batch=4)
    with pytest.raises(ValueError, match="d="):
        margins.DSoftmaxLoss(4, 3, d=1.5)
    loss = margins.CosineSoftmaxLoss(4, 3)
    with pytest.raises(ValueError, match="target labels"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="embeddings must be"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------
# the experiment


def test_profiles_build_and_cpu_has_five_seeds() -> None:
    for profile in chapter.PROFILES:
        chapter.make_config(profile)
    cpu = chapter.make_config("cpu")
    assert len(cpu.seeds) >= 5 and cpu.threads == 1
    assert cpu.speed_classes >= 10_000 and cpu.negative_ratio == 64
    assert cpu.hinge_margin == 0.1 and cpu.class_counts == (5, 10) and cpu.small_embedding == 3
    paper = chapter.make_config("paper")
    assert (paper.dataset, paper.model, paper.epochs) == ("cifar10", "resnet", 150)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"parts": ["margins"]}, "parts item"),
        ({"dataset": "mnist"}, "dataset='mnist'"),
        ({"lr_grid": []}, "lr_grid is empty"),
        ({"lsoftmax_margins": [2, 3]}, "must include 1"),
        ({"class_counts": [10, 5]}, "class_counts"),
        ({"negative_ratio": 100_000}, "negative_ratio"),
        ({"model": "resnet"}, "needs model='mlp'"),
        ({"dsoftmax_d": 2.0}, "dsoftmax_d"),
        ({"epochs": 0}, "epochs"),
        ({"unknown": 1}, "unknown key"),
    ],
)
def test_bad_config_values_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chapter.make_config("smoke", overrides=overrides)


def test_validation_split_is_exact_and_disjoint() -> None:
    config = chapter.make_config("smoke")
    data = chapter.load_splits(config)
    assert len(data.y_val) == config.val_size
    assert len(data.y_train) == config.train_subset - config.val_size
    rows = {tuple(r) for r in data.x_train.numpy().round(6).tolist()}
    assert not rows & {tuple(r) for r in data.x_val.numpy().round(6).tolist()}
    again = chapter.load_splits(config)
    assert torch.equal(again.x_val, data.x_val)
    five = data.classes_below(5)
    assert set(five.y_train.tolist()) == set(range(5)) and set(five.y_test.tolist()) == set(
        range(5))


def test_synthetic_head_data_shapes_and_determinism() -> None:
    config = chapter.make_config("smoke")
    a, b = chapter.synthetic_head_data(config, 3), chapter.synthetic_head_data(config, 3)
    assert torch.equal(a.x_train, b.x_train)
    assert a.x_train.shape == (config.speed_classes * config.speed_train_per_class,
                               config.speed_dim)
    assert torch.bincount(a.y_test).tolist() == [1] * config.speed_classes


def test_best_learning_rate_uses_validation_accuracy() -> None:
    raw = [{"part": "p", "method": "a", "lr": lr, "metric": metric, "value": value}
           for lr, metric, value in [(0.1, "val_top1", 0.5), (0.1, "top1", 0.9),
                                     (0.3, "val_top1", 0.6), (0.3, "top1", 0.1)]]
    assert chapter.best_learning_rates(raw) == {("p", "a"): 0.3}


@pytest.fixture(scope="module")
def smoke_rows(tmp_path_factory: pytest.TempPathFactory):
    config = chapter.make_config("smoke", device="cpu")
    return chapter.run(config, results_dir=str(tmp_path_factory.mktemp("results"))).rows


def test_smoke_run_rows_satisfy_every_claim_test(smoke_rows) -> None:
    rows = smoke_rows
    final = rows[rows["series"] == "final"]
    assert set(final["seed"]) == {0, 1}
    for part in chapter.PARTS:
        assert part in set(final["part"])
    for claim in claims.chapter_claims(chapter.CHAPTER):
        if claim.not_attempted:
            continue
        claims.check_vocabulary(claim, rows)
        for test in claim.tests:
            assert claims.evaluate_test(test, rows, claim) is not None, (claim.id, test.label)
    top1 = final[final["metric"] == "top1"]["value"]
    assert top1.between(0, 1).all()
    search = rows[rows["series"] == "lr_search"]
    assert set(search["lr"].dropna()) == set(chapter.make_config("smoke").lr_grid) | set(
        chapter.make_config("smoke").speed_lr_grid)
    # the chosen rate is the validation argmax, and seed 0's final run is the search's run
    for (part, method), group in search.groupby(["part", "method"]):
        chosen = final[(final["part"] == part) & (final["method"] == method)
                       & (final["metric"] == "lr")]["value"]
        assert set(chosen) == {group.loc[group["value"].idxmax(), "lr"]}


def test_same_seed_gives_identical_rows(tmp_path: Path) -> None:
    config = chapter.make_config("smoke", device="cpu", overrides={
        "parts": ["lsoftmax", "dsoftmax_speed"], "lsoftmax_margins": [1, 2], "epochs": 1,
        "train_subset": 400, "val_size": 100, "speed_classes": 256})
    first = without_timings(chapter.run(config, results_dir=str(tmp_path / "a")).rows)
    second = without_timings(chapter.run(config, results_dir=str(tmp_path / "b")).rows)
    assert first.equals(second)


def test_paper_profile_code_path_on_tiny_hub_parquet(tmp_path: Path, hub_offline: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _write_tiny_cifar10(tmp_path / "hub" / "cifar10", per_class=4, seed=0, split="train")
    _write_tiny_cifar10(tmp_path / "hub" / "cifar10", per_class=2, seed=1, split="test")
    config = chapter.make_config("paper", device="cpu", seeds=[0], overrides={
        "parts": ["haseparator", "dsoftmax_classes"], "hub_data_dir": str(tmp_path / "hub"),
        "resnet_depth": 8, "epochs": 1, "batch_size": 8, "val_size": 10, "lr_grid": [0.01],
        "threads": 1})
    assert config.dataset == "cifar10" and config.optimizer == "sgd"
    rows = chapter.run(config, results_dir=str(tmp_path / "results")).rows
    top1 = rows[(rows["metric"] == "top1") & (rows["series"] == "final")]
    assert set(top1["method"]) == set(chapter.HA_METHODS) | {
        "softmax_k5", "softmax_k10", "dsoftmax_k5", "dsoftmax_k10"}
    assert (tmp_path / "results" / "paper" / f"{chapter.CHAPTER}.json").exists()
    assert np.isfinite(rows["value"].to_numpy(dtype=float)).all()
