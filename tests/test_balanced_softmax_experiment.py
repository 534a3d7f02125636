"""Chapter 01 (Balanced Softmax / BALMS): helpers by hand, the smoke run, the paper code path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.data.fashion_mnist import DEFAULT_ROOT
from softmax_repro.experiments import ch01_balanced_softmax as bs
from softmax_repro.methods import losses
from softmax_repro.pipeline import claims
from softmax_repro.pipeline.results import ChapterResult


def test_shot_groups_are_thirds_by_training_count() -> None:
    groups = bs.shot_groups([500, 300, 180, 100, 60, 36, 21, 12, 7, 5])
    assert groups == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    shuffled = bs.shot_groups([5, 500, 60, 300])
    assert shuffled == {"many": [1], "medium": [2, 3], "few": [0]}
    hundred = bs.shot_groups(list(range(100, 0, -1)))
    assert [len(hundred[g]) for g in bs.SHOT_GROUPS] == [33, 34, 33]


def test_evaluate_by_hand() -> None:
    counts = [9, 5, 1]
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 1, 0, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    rows = {(r["metric"], r.get("class_index")): r["value"]
            for r in bs.evaluate(logits, target, counts)}
    assert rows[("top1", None)] == pytest.approx(4 / 6)
    assert rows[("many", None)] == 1.0 and rows[("medium", None)] == 0.5
    assert rows[("few", None)] == 0.5
    assert [rows[("class_accuracy", c)] for c in range(3)] == [1.0, 0.5, 0.5]


def test_build_loss_matches_the_paper_definitions() -> None:
    counts = [100, 10, 1]
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 2])
    config = bs.make_config("smoke")
    log_n = torch.tensor(counts, dtype=torch.float32).log()
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(bs.build_loss("balanced_softmax", counts, config)(logits, target),
                          ce(logits + log_n, target))
    assert torch.allclose(bs.build_loss("balanced_softmax_quarter", counts, config)(logits, target),
                          ce(logits + 0.25 * log_n, target))
    assert torch.allclose(bs.build_loss("softmax", counts, config)(logits, target),
                          ce(logits, target))
    assert bs.uses_cb_sampler("bs_cb_sampling") and not bs.uses_cb_sampler("balanced_softmax")


def test_derived_rows_by_hand() -> None:
    records = []
    values = {  # (imbalance, method) -> (top1, many, few)
        (10, "softmax"): (0.8, 0.9, 0.7), (10, "balanced_softmax"): (0.82, 0.88, 0.78),
        (100, "softmax"): (0.6, 0.95, 0.2), (100, "balanced_softmax"): (0.7, 0.9, 0.5),
    }
    for (imbalance, method), triple in values.items():
        for metric, value in zip(("top1", "many", "few"), triple, strict=True):
            records.append({"dataset": "d-lt", "imbalance": imbalance, "seed": 0,
                            "method": method, "metric": metric, "value": value})
    derived = {(r["metric"], r["imbalance"]): r["value"]
               for r in bs.derived_rows(pd.DataFrame(records))}
    assert derived[("gain_growth", 100)] == pytest.approx(0.10 - 0.02)
    assert derived[("few_minus_many_gain", 10)] == pytest.approx(0.08 - (-0.02))
    assert derived[("few_minus_many_gain", 100)] == pytest.approx(0.30 - (-0.05))


def test_grid_adds_softmax_for_the_methods_built_on_it() -> None:
    config = bs.make_config("smoke", overrides={"methods": ["balms"], "datasets": ["mnist1d"],
                                                "gauss_imbalances": []})
    runs = bs.grid(config)
    assert {r["method"] for r in runs} == {"softmax"}
    assert len(runs) == len(config.imbalances) * len(config.seeds)
    # MNIST-1D: 3 methods at 3 factors + 4 table-only methods at IF 100 (cpu: 3, no focal);
    # Digits 7 × 2 (cpu: 6 × 2); Gauss 2 × 3; the probe: 3 variants × 2 methods × its seeds
    full = bs.grid(bs.make_config("cpu"))
    assert len(full) == (3 * 3 + 3 + 2 * 6 + 3 * 2) * 5 + 3 * 2 * 3
    assert len(bs.grid(bs.make_config("smoke"))) == (3 * 3 + 4 + 2 * 7 + 3 * 2) * 2 + 3 * 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"digits_imbalances": [200]}, "imbalance=200 with n_max=120 leaves class 9 empty"),
    ({"imbalances": []}, "imbalances is empty"),
    ({"methods": ["bals"]}, "methods item='bals'"),
    ({"meta_init_power": 3.0}, "meta_init_power=3.0"),
    ({"gauss_imbalances": [100], "gauss_n_max": 50}, "leaves class 4 empty"),
    ({"datasets": ["digits"]}, "probe_variants need 'mnist1d'"),
    ({"probe_variants": ["deeper"]}, "probe_variants item='deeper'"),
])
def test_bad_settings_fail_before_work(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        bs.make_config("cpu", overrides=overrides)
    assert message in str(error.value)


def test_fit_balms_learns_separable_features_and_moves_the_rates() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = [200, 40, 8]
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    features = 3.0 * torch.eye(3)[labels] + 0.3 * torch.randn(labels.numel(), 3, generator=gen)
    config = bs.make_config("smoke", overrides={"decoupled_steps": 60, "meta_lr": 0.05,
                                                "decoupled_batch_size": 64})
    torch.manual_seed(0)
    classifier = torch.nn.Linear(3, 3)
    rates = bs.fit_balms(classifier, features, labels, counts, config, seed=0)
    with torch.no_grad():
        accuracy = (classifier(features).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95
    initial = np.array(counts) / sum(counts)
    assert rates["head_rate"] != pytest.approx(initial[0], abs=1e-3)
    assert 0.0 < rates["tail_rate"] < 1.0


def test_fit_balms_draws_a_fresh_meta_batch_and_steps_like_its_optimizer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One class-balanced meta batch per step, and the inner step gets the optimizer's current
    learning rate, momentum, weight decay and (from the second step) momentum buffers."""
    counts = [30, 10, 3]
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    features = torch.randn(labels.numel(), 4, generator=torch.Generator().manual_seed(0))
    config = bs.make_config("smoke", overrides={"decoupled_steps": 5, "decoupled_batch_size": 8,
                                                "meta_batch_size": 6})
    batches, calls = [], []
    original_batch, original_step = bs.meta_sampler.balanced_batch, bs.meta_sampler.meta_step

    def spy_batch(groups, size, generator=None):
        batches.append(original_batch(groups, size, generator))
        return batches[-1]

    def spy_step(*args, **kwargs):
        calls.append(kwargs)
        return original_step(*args, **kwargs)

    monkeypatch.setattr(bs.meta_sampler, "balanced_batch", spy_batch)
    monkeypatch.setattr(bs.meta_sampler, "meta_step", spy_step)
    bs.fit_balms(torch.nn.Linear(4, 3), features, labels, counts, config, seed=0)
    assert len(batches) == 5 and all(b.numel() == 6 for b in batches)
    assert all(torch.bincount(labels[b], minlength=3).tolist() == [2, 2, 2] for b in batches)
    assert len({tuple(b.tolist()) for b in batches}) > 1
    assert [c["momentum"] for c in calls] == [0.9] * 5
    assert [c["weight_decay"] for c in calls] == [config.weight_decay] * 5
    assert calls[0]["inner_lr"] == pytest.approx(config.decoupled_lr)
    assert calls[-1]["inner_lr"] < calls[0]["inner_lr"]  # cosine
    assert all(v is None for v in calls[0]["momentum_buffers"].values())
    assert all(v is not None for v in calls[1]["momentum_buffers"].values())


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> ChapterResult:
    out = tmp_path_factory.mktemp("results")
    return bs.run(bs.make_config("smoke", device="cpu"), results_dir=str(out))


def test_smoke_run_rows(smoke_result: ChapterResult) -> None:
    rows = smoke_result.rows
    config = bs.make_config("smoke")
    top1 = rows[rows["metric"] == "top1"]
    assert set(top1["method"]) == set(bs.METHODS)
    probes = {f"mnist1d-lt+{v}" for v in bs.PROBE_VARIANTS}
    assert set(top1["dataset"]) == {"mnist1d-lt", "digits-lt"} | probes
    main = top1[~top1["dataset"].isin(probes)]
    per_setting = main.groupby(["dataset", "imbalance", "method"]).size()
    assert (per_setting == len(config.seeds)).all()
    probe = top1[top1["dataset"].isin(probes)]
    assert set(probe["method"]) == set(bs.PROBE_METHODS)
    assert (probe.groupby(["dataset", "method"]).size() == len(config.probe_seeds)).all()
    assert top1["value"].between(0, 1).all()
    classes = rows[rows["metric"] == "class_accuracy"]
    assert len(classes) == 10 * len(top1)
    # the table-only methods run at IF 100 only, the decoupled ones at IF 100 and 200, not on Digits
    mnist = main[main["dataset"] == "mnist1d-lt"]
    assert set(mnist.loc[mnist["method"] == "focal", "imbalance"]) == {100}
    assert set(mnist.loc[mnist["method"] == "balms", "imbalance"]) == {100, 200}
    assert "balms" not in set(main.loc[main["dataset"] == "digits-lt", "method"])
    moved = rows[rows["metric"] == "top1_moved_last_fifth"]
    assert len(moved) == len(top1[top1["method"].isin(bs.END_TO_END)])
    assert moved["value"].between(0, 1).all()
    tail = rows[(rows["metric"] == "tail_count") & (rows["dataset"] == "digits-lt")]
    assert set(tail["value"]) == {10.0, 1.0}  # n_max 100 at IF 10 and IF 100
    gauss = rows[rows["dataset"] == "gaussian-lt"]
    assert {"tv_balanced", "tv_shifted", "tail_posterior"} <= set(gauss["metric"])
    assert gauss.loc[gauss["metric"] != "tail_posterior", "value"].between(0, 1).all()
    assert {"gain_growth", "few_minus_many_gain"} <= set(rows["metric"])
    assert smoke_result.provenance["profile"] == "smoke"


def test_posthoc_rows_are_the_softmax_model_with_log_prior_removed(
        smoke_result: ChapterResult) -> None:
    rows = smoke_result.rows
    top1 = rows[rows["metric"] == "top1"].set_index(["dataset", "imbalance", "seed", "method"])
    # same trained model, same stage-1 wall time: the adjustment costs no training
    wall = top1["wall_s"].unstack("method").dropna(subset=["posthoc_adjustment"])
    assert len(wall) and (wall["posthoc_adjustment"] == wall["softmax"]).all()
    counts = [100, 10, 1]
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    adjusted = losses.posthoc_logit_adjustment(logits, counts)
    assert adjusted.argmax().item() == 2  # 2 − log(100/111) < −1 − log(1/111)


def test_every_chapter_claim_finds_its_rows(smoke_result: ChapterResult) -> None:
    chapter = [c for c in claims.load_claims() if c.chapter == bs.CHAPTER]
    assert len(chapter) >= 6
    rows = smoke_result.rows
    for claim in chapter:
        for test in claim.tests:
            assert claims.evaluate_test(test, rows) is not None, (claim.id, test.label)
    verdicts = claims.chapter_verdicts(bs.CHAPTER, rows)
    assert "no results" not in {v.verdict for v in verdicts}


def _write_tiny_cifar10(folder: Path, per_class: int, seed: int, split: str) -> None:
    datasets = pytest.importorskip("datasets")
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    labels = [c for c in range(10) for _ in range(per_class)]
    pixels = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(num_classes=10)})
    table = datasets.Dataset.from_dict(
        {"img": [image.fromarray(p) for p in pixels], "label": labels}, features=features)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(folder / f"{split}-00000.parquet"))


def test_paper_profile_code_path_on_tiny_hub_parquet(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _write_tiny_cifar10(tmp_path / "hub" / "cifar10", per_class=4, seed=0, split="train")
    _write_tiny_cifar10(tmp_path / "hub" / "cifar10", per_class=2, seed=1, split="test")
    config = bs.make_config("paper", device="cpu", seeds=[0], overrides={
        "datasets": ["cifar10"], "imbalances": [2], "hub_data_dir": str(tmp_path / "hub"),
        "methods": ["softmax", "balanced_softmax", "balms"], "steps": 2, "batch_size": 8,
        "warmup_steps": 1, "decoupled_steps": 2, "decoupled_batch_size": 8,
        "meta_batch_size": 10, "gauss_imbalances": []})
    assert config.model == "resnet32" and config.nesterov and config.n_max is None
    result = bs.run(config, results_dir=str(tmp_path / "results"))
    top1 = result.rows[result.rows["metric"] == "top1"]
    assert set(top1["method"]) == {"softmax", "balanced_softmax", "balms"}
    assert set(top1["dataset"]) == {"cifar10-lt"}
    counts = result.rows[result.rows["metric"] == "class_accuracy"]["class_count"]
    assert sorted(set(counts)) == [2, 3, 4]  # n_max = 4 (all of a class), IF 2
    assert (tmp_path / "results" / "paper" / f"{bs.CHAPTER}.json").exists()
    assert math.isfinite(top1["value"].sum())


def test_paper_comparison_puts_published_numbers_beside_ours() -> None:
    records = [{"dataset": "m-lt", "imbalance": 100, "seed": s, "method": m, "metric": "top1",
                "value": v} for s, (m, v) in enumerate([("softmax", 0.70), ("softmax", 0.72),
                                                         ("balanced_softmax", 0.80),
                                                         ("balanced_softmax", 0.80)])]
    table = bs.paper_comparison(pd.DataFrame(records), "m-lt").set_index("method")
    assert list(table.columns) == ["paper IF 100", "ours IF 100"]
    assert table.loc["softmax", "paper IF 100"] == 77.4
    assert table.loc["balanced_softmax", "paper IF 100"] == 83.1
    assert table.loc["balanced_softmax", "ours IF 100"] == "80.0 [80.0, 80.0]"
    assert table.loc["softmax", "ours IF 100"] == "71.0 [58.3, 83.7]"  # 71 ± t(0.975, 1)·1


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_optional_fashion_mnist_lt_runs(tmp_path: Path) -> None:
    config = bs.make_config("smoke", device="cpu", seeds=[0], overrides={
        "datasets": ["fashion_mnist"], "imbalances": [10], "methods": ["softmax"],
        "steps": 3, "gauss_imbalances": [], "probe_variants": []})
    rows = bs.run(config, results_dir=str(tmp_path)).rows
    counts = rows[rows["metric"] == "class_accuracy"]["class_count"].tolist()
    assert counts == [int(200 * 10 ** (-y / 9)) for y in range(10)]
    assert set(rows["dataset"]) == {"fashion_mnist-lt"}


def test_random_shift_moves_each_sequence_within_its_zero_padding() -> None:
    x = torch.arange(1, 9, dtype=torch.float32).repeat(50, 1)
    shifted = bs.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    for row in shifted:
        kept = row[row > 0]
        assert torch.equal(kept, torch.arange(kept[0].item(), kept[-1].item() + 1))
        assert 6 <= kept.numel() <= 8
    assert len({tuple(r.tolist()) for r in shifted}) == 5  # shifts −2..2 all occur
    assert torch.equal(bs.random_shift(x, 0, torch.Generator()), x)


def test_probe_table_pairs_bs_and_cbw_per_variant() -> None:
    config = bs.make_config("smoke", overrides={"probe_seeds": [0, 1], "probe_variants": ["long"]})
    records = []
    for dataset, gains in (("mnist1d-lt", (0.02, 0.04)), ("mnist1d-lt+long", (-0.01, -0.03))):
        for seed, gain in enumerate(gains):
            records += [{"dataset": dataset, "imbalance": 100, "seed": seed, "metric": "top1",
                         "method": "cb_reweighting", "value": 0.8},
                        {"dataset": dataset, "imbalance": 100, "seed": seed, "metric": "top1",
                         "method": "balanced_softmax", "value": 0.8 + gain}]
    # a third seed of the base runs is not a probe seed and is left out
    records.append({"dataset": "mnist1d-lt", "imbalance": 100, "seed": 2, "metric": "top1",
                    "method": "balanced_softmax", "value": 0.1})
    table = bs.probe_table(pd.DataFrame(records), config).set_index("variant")
    assert list(table.index) == ["base", "long"]
    assert table.loc["base", "diff_mean"] == pytest.approx(0.03)
    assert table.loc["long", "diff_mean"] == pytest.approx(-0.02)
    assert table.loc["base", "seeds"] == 2 and table.loc["base", "cbw_mean"] == pytest.approx(0.8)
