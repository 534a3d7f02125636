"""Chapter 02 experiment: config validation, profiles, a tiny run, and the paper path offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.engine import incremental_loop
from softmax_repro.experiments import ch02_incremental_bsce as chapter
from softmax_repro.methods import incremental
from softmax_repro.pipeline import claims
from softmax_repro.pipeline.results import read_results


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == previous  # run() restores the thread count it changed


@pytest.mark.parametrize(("overrides", "message"), [
    ({"datasets": ["cifar10"]}, "datasets item"),
    ({"methods": ["bsce_m20", "focal_m20"]}, "focal_m20"),
    ({"methods": ["ce_m5", "ce_m5"]}, "duplicates"),
    ({"methods": ["ce_ft_m0"]}, "balanced_finetune"),
    ({"model": "cnn1d"}, "does not fit dataset 'digits'"),
    ({"model": "resnet32"}, "does not fit"),
    ({"increments": [3]}, "num_steps=3"),
    ({"base_classes": 10}, "base_classes"),
    ({"class_orders": [-1]}, "class_orders"),
    ({"lr": 0.0}, "lr"),
    ({"epochs_step": 0}, "epochs_step"),
    ({"kd_temperature": -1.0}, "kd_temperature"),
    ({"memory": 20}, "unknown key 'memory'"),
])
def test_bad_settings_raise_before_any_work(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chapter.make_config("cpu", overrides=overrides)


def test_unknown_profile_and_bad_seeds_raise() -> None:
    with pytest.raises(ConfigError, match="profile"):
        chapter.make_config("laptop")
    with pytest.raises(ConfigError, match="seeds"):
        chapter.make_config("cpu", seeds=[])


def test_profiles_build_and_cpu_covers_every_claim_of_the_chapter() -> None:
    for name in chapter.PROFILES:
        chapter.make_config(name)
    cpu = chapter.make_config("cpu")
    assert len(cpu.seeds) >= 5 and len(cpu.class_orders) >= 2
    assert set(cpu.datasets) == {"mnist1d", "digits"}
    assert {incremental.Learner.parse(m).memory_per_class for m in cpu.methods} >= {0, 5, 20}
    tests = [t for c in claims.load_claims() if c.chapter == chapter.CHAPTER for t in c.tests]
    assert len(tests) >= 4
    for test in tests:
        assert test.a in cpu.methods and test.b in cpu.methods
        assert test.where["dataset"] in cpu.datasets
    smoke = chapter.make_config("smoke")
    assert set(smoke.methods) == set(cpu.methods)  # the smoke run exercises every claim's rows


def test_paper_profile_is_the_papers_protocol() -> None:
    paper = chapter.make_config("paper")
    assert paper.datasets == ("cifar100",) and paper.model == "resnet32"
    assert paper.base_classes == 50 and paper.increments == (5, 10, 25)
    assert {incremental.Learner.parse(m).memory_per_class for m in paper.methods} == {0, 20}


def test_log_rows_summarise_the_log() -> None:
    nan = float("nan")
    log = incremental_loop.IncrementalLog(
        step_accuracy=np.array([0.9, 0.6, 0.5]), old_accuracy=np.array([nan, 0.4, 0.3]),
        new_accuracy=np.array([0.9, 0.8, 0.9]),
        task_accuracy=np.array([[0.9, nan, nan], [0.4, 0.8, nan], [0.3, 0.4, 0.9]]),
        train_s=np.array([1.0, 2.0, 3.0]), optimizer_steps=np.array([10, 20, 30]),
        memory_size=np.array([4, 8, 12]), loss_change_last_fifth=0.03)
    rows = pd.DataFrame(chapter.log_rows(log))
    value = rows.set_index(["metric", rows["step"].fillna(-1)])["value"]
    assert value[("avg_inc_acc", -1)] == pytest.approx(2.0 / 3)
    assert value[("forgetting", -1)] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.4)) / 2)
    assert value[("final_acc", -1)] == 0.5
    assert value[("train_s_inc", -1)] == 5.0 and value[("opt_steps_inc", -1)] == 50
    assert ("acc_old", 0) not in value.index and value[("acc_old", 2)] == 0.3
    assert value[("memory", 1)] == 8
    assert value[("loss_change_last_fifth", -1)] == 0.03
    unknown = dataclasses.replace(log, loss_change_last_fifth=float("nan"))
    assert "loss_change_last_fifth" not in set(pd.DataFrame(chapter.log_rows(unknown))["metric"])


def test_tiny_run_writes_rows_that_the_claims_can_use(tmp_path: Path) -> None:
    config = chapter.make_config("smoke", seeds=[0, 1], device="cpu", overrides={
        "datasets": ["digits"], "methods": ["ce_m5", "bsce_m5", "ce_ft_m5"],
        "epochs_base": 3, "epochs_step": 2})
    result = chapter.run(config, results_dir=str(tmp_path))
    rows, provenance = read_results(tmp_path / "smoke" / f"{chapter.CHAPTER}.json", "smoke")
    assert provenance["config"]["methods"] == ["ce_m5", "bsce_m5", "ce_ft_m5"]
    assert len(rows) == len(result.rows)
    runs = rows.groupby(["dataset", "increments", "order", "seed", "method"])
    assert runs.ngroups == 2 * 3
    for _, run in runs:
        acc = run[run["metric"] == "acc"].sort_values("step")["value"].to_numpy()
        assert acc.shape == (5,) and ((acc >= 0) & (acc <= 1)).all()
        summary = run[run["metric"] == "avg_inc_acc"]["value"]
        assert summary.item() == pytest.approx(acc.mean())
        memory = run[run["metric"] == "memory"].sort_values("step")["value"].tolist()
        assert memory == [10, 20, 30, 40, 50]  # 5 exemplars for each of the 2 classes per task
    # CE and BSCE differ only in the loss: same base task (BSCE = CE when counts are equal)
    base = rows[(rows["metric"] == "acc") & (rows["step"] == 0)].pivot_table(
        index="seed", columns="method", values="value")
    assert np.allclose(base["ce_m5"], base["bsce_m5"], atol=1e-6)
    steps = rows[rows["metric"] == "opt_steps_inc"].pivot_table(index="seed", columns="method",
                                                                values="value")
    assert (steps["ce_ft_m5"] > steps["ce_m5"]).all()
    table = chapter.method_table(rows)
    assert set(table.loc[table["method"] == "ce_ft_m5", "finetune"]) == {True}
    verdicts = claims.evaluate_test(
        claims.ClaimTest(label="t", kind="paired_difference", metric="avg_inc_acc", a="bsce_m5",
                         b="ce_m5", where={"dataset": "digits"}, direction="greater",
                         threshold=0.0), rows)
    assert verdicts is not None and verdicts.n == 2


def _write_cifar100(path: Path, labels: list[int], seed: int) -> None:
    datasets = pytest.importorskip("datasets")
    image = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 32, 32, 3),
                                                  dtype=np.uint8)
    features = datasets.Features({
        "img": datasets.Image(),
        "fine_label": datasets.ClassLabel(names=[f"f{i}" for i in range(100)]),
        "coarse_label": datasets.ClassLabel(names=[f"g{i}" for i in range(20)]),
    })
    table = datasets.Dataset.from_dict(
        {"img": [image.fromarray(p) for p in pixels], "fine_label": labels,
         "coarse_label": [y % 20 for y in labels]}, features=features)
    table.to_parquet(str(path))


def test_paper_path_runs_offline_on_a_tiny_local_parquet(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _write_cifar100(tmp_path / "train.parquet", list(range(100)) * 2, seed=0)
    _write_cifar100(tmp_path / "test.parquet", list(range(100)), seed=1)
    config = chapter.make_config("paper", seeds=[0], device="cpu", overrides={
        "model": "resnet8", "increments": [1], "methods": ["bsce_kd_m1", "ce_kd_ft_m1"],
        "epochs_base": 1, "epochs_step": 1, "finetune_epochs": 1, "batch_size": 64,
        "threads": 1,
        "hub_train_files": str(tmp_path / "train.parquet"),
        "hub_test_files": str(tmp_path / "test.parquet")})
    result = chapter.run(config, results_dir=str(tmp_path / "results"))
    rows = result.rows
    assert set(rows["dataset"]) == {"cifar100"} and set(rows["method"]) == set(config.methods)
    memory = rows[rows["metric"] == "memory"].groupby("method")["value"].max()
    assert (memory == 100).all()  # one exemplar for each of the 100 classes
    acc = rows[rows["metric"] == "acc"]
    assert len(acc) == 2 * 2 and acc["value"].between(0, 1).all()
