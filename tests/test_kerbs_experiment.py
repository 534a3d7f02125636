"""Chapter 03 (KerBS): configuration checks, analysis helpers and tiny end-to-end runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from softmax_repro.config import ConfigError
from softmax_repro.experiments import ch03_kerbs as kerbs
from softmax_repro.methods.heads import KerBSHead
from softmax_repro.pipeline import claims


@pytest.mark.parametrize(("overrides", "message"), [
    ({"synthetic_methods": ["softmax", "rbf"]}, "synthetic_methods item"),
    ({"corpus_methods": []}, "corpus_methods is empty"),
    ({"corpus": "imdb"}, "corpus"),
    ({"syn_max_senses": 5}, "syn_max_senses"),
    ({"senses_per_word": 0}, "senses_per_word"),
    ({"realloc_every": 0}, "realloc_every"),
    ({"cell": "rnn"}, "cell"),
    ({"corpus_files": ["a.parquet"]}, "corpus_files"),
    ({"hidden": 3}, "unknown key"),
    ({"curve_points": 4}, "curve_points"),
])
def test_bad_configuration_is_rejected_before_work(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        kerbs.make_config("smoke", overrides=overrides)


def test_profiles_build_and_cpu_meets_the_seed_budget() -> None:
    for profile in kerbs.PROFILES:
        kerbs.make_config(profile)
    cpu = kerbs.make_config("cpu")
    assert len(cpu.seeds) >= 5 and cpu.corpus_num_seeds >= 5
    with pytest.raises(ConfigError, match="profile"):
        kerbs.make_config("gpu")


def test_sense_ami_is_one_for_senses_aligned_with_true_senses() -> None:
    head = KerBSHead(2, 2, allocation=[2, 1], kernel="dot", bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    concepts = torch.tensor([0, 1] * 15)
    h = torch.stack([torch.tensor([1.0, 0.0]) if c == 0 else torch.tensor([0.0, 1.0])
                     for c in concepts])
    words = torch.zeros(30, dtype=torch.long)
    assert kerbs.sense_ami(head, h, words, concepts, torch.tensor([0])) == pytest.approx(1.0)
    single = KerBSHead(2, 2, senses_per_word=1)
    assert kerbs.sense_ami(single, h, words, concepts, torch.tensor([0])) == 0.0
    points = kerbs.sense_projection(head, h, words, concepts, torch.tensor([0]), num_words=1)
    assert sorted((p["kind"], p["label"]) for p in points) == [
        ("context", "c0"), ("context", "c1"), ("sense", "s0"), ("sense", "s1")]


def test_planted_senses_recover_senses_the_hidden_states_carry() -> None:
    """The positive control of the sense-recovery test scores 1 when the hidden states before
    each true sense form separate clusters, and about 0 when they carry no sense."""
    true_senses = np.array([2, 1])  # word 0: concepts 0 and 1; word 1: concept 2
    rng = np.random.default_rng(0)
    concepts = torch.from_numpy(rng.integers(0, 3, size=300))
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    h = centres[concepts] + 0.3 * torch.from_numpy(rng.standard_normal((300, 2))).float()
    words = torch.where(concepts < 2, 0, 1)
    planted = kerbs.planted_senses(h, concepts, true_senses)
    assert planted.senses_per_word().tolist() == [2, 1]
    assert kerbs.sense_ami(planted, h, words, concepts, torch.tensor([0])) == pytest.approx(1.0)
    noise = torch.from_numpy(rng.standard_normal((300, 2))).float()
    blind = kerbs.planted_senses(noise, concepts, true_senses)
    assert kerbs.sense_ami(blind, noise, words, concepts, torch.tensor([0])) < 0.1


def test_random_allocation_spends_the_true_budget_blindly() -> None:
    true_senses = np.array([1, 1, 4, 1, 3, 1, 1, 2])
    first = kerbs.random_allocation(true_senses, seed=3)
    assert first.sum() == true_senses.sum()
    assert first.min() >= 1 and first.max() <= 4
    np.testing.assert_array_equal(first, kerbs.random_allocation(true_senses, seed=3))
    assert not np.array_equal(first, true_senses)


def test_curve_steps_end_at_the_last_step_and_mark_the_last_fifth() -> None:
    assert kerbs.curve_steps(100, 5) == [20, 40, 60, 80, 100]
    trained = kerbs.TrainedModel(None, 1.0, None, [(0.2, 3.0), (0.4, 2.5), (0.6, 2.2),
                                                   (0.8, 2.1), (1.0, 2.13)])
    assert trained.last_fifth_change() == pytest.approx(0.03)


def test_versus_softmax_rows_pair_by_seed() -> None:
    rows = [{"dataset": "brown", "method": m, "seed": s, "metric": "nll", "value": v}
            for m, s, v in (("softmax", 0, 3.0), ("mos", 0, 3.2), ("softmax", 1, 2.9),
                            ("mos", 1, 2.8), ("kerbs", 0, 3.1))]
    got = {(r["method"], r["seed"]): r["value"] for r in kerbs.versus_softmax_rows(rows, "brown")}
    assert got == pytest.approx({("mos", 0): 0.2, ("mos", 1): -0.1, ("kerbs", 0): 0.1})


def test_reallocation_hook_fires_every_m_steps_for_dynamic_variants_only() -> None:
    config = kerbs.make_config("smoke", overrides={"realloc_every": 3, "realloc_fraction": 0.5})
    model = kerbs.RNNLanguageModel(4, 2, 2, KerBSHead(2, 4, senses_per_word=2))
    assert kerbs.reallocation_hook(model, "kerbs_fixed", config) is None
    assert kerbs.reallocation_hook(model, "kerbs_oracle", config) is None
    hook = kerbs.reallocation_hook(model, "kerbs", config)
    calls = []
    model.head.reallocate = lambda max_moves, order: calls.append((max_moves, order))
    for step in range(7):
        hook(step)
    assert calls == [(2, "paper"), (2, "paper")]
    calls.clear()
    code = kerbs.reallocation_hook(model, "kerbs_code_order", config)
    code(3)
    assert calls == [(2, "code")]


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory):
    return kerbs.run(kerbs.make_config("smoke", device="cpu"),
                     results_dir=str(tmp_path_factory.mktemp("results")))


def test_smoke_run_rows(smoke_result) -> None:
    rows = smoke_result.rows
    assert smoke_result.provenance["profile"] == "smoke"
    syn = rows[rows["dataset"] == "synthetic"]
    config = kerbs.make_config("smoke")
    for method in config.synthetic_methods:
        got = syn[(syn["method"] == method) & (syn["metric"] == "nll")]
        assert sorted(got["seed"]) == list(config.seeds)
        assert (got["value"] > 0).all()
    nll = syn[syn["metric"] == "nll"].pivot_table(index="seed", columns="method", values="value")
    assert (nll["oracle"] < nll["softmax"]).all()  # the Bayes floor is below any model
    ami = syn[syn["metric"] == "sense_ami"]
    assert {"kerbs", "kerbs_untrained_senses", "kerbs_planted_senses"} <= set(ami["method"])
    curve = rows[rows["metric"] == "valid_nll_curve"]
    points = curve.groupby(["dataset", "method", "seed"])["progress"].apply(sorted)
    assert all(p[-1] == 1.0 and len(p) == config.curve_points for p in points)
    change = rows[rows["metric"] == "val_change_last_fifth"]
    assert len(change) == len(points) and (change["value"] >= 0).all()
    held = syn[(syn["metric"] == "senses_held") & (syn["method"] == "kerbs")]
    assert set(held["true_senses"].dropna()) <= {1, 2, 3, 4}
    brown = rows[rows["dataset"] == "brown"]
    ppl = brown[brown["metric"] == "ppl"]
    assert set(ppl["method"]) == set(config.corpus_methods)
    assert ((ppl["value"] > 1) & (ppl["value"] < config.vocab_size)).all()
    nll = brown[brown["metric"] == "nll"].set_index(["method", "seed"])["value"]
    assert np.allclose(np.exp(nll), ppl.set_index(["method", "seed"])["value"].loc[nll.index])
    versus = brown[brown["metric"] == "nll_vs_softmax"]
    assert set(versus["method"]) == set(config.corpus_methods) - {"softmax"}
    deciles = brown[brown["metric"] == "senses_per_word"]
    for _, per_seed in deciles.groupby("seed"):
        assert sorted(per_seed["freq_decile"]) == list(range(10))
    # total senses are conserved: mean senses over the deciles ≈ senses_per_word
    assert math.isclose(deciles["value"].mean(), config.senses_per_word, rel_tol=0.05)
    projection = kerbs.projection_frame(rows)
    assert {"word", "kind", "label", "pc1", "pc2"} <= set(projection.columns)


def test_every_chapter_claim_finds_its_rows(smoke_result) -> None:
    verdicts = claims.chapter_verdicts(kerbs.CHAPTER, smoke_result.rows)
    assert sum(len(v.outcomes) for v in verdicts) >= 10
    assert not [v.claim.id for v in verdicts if v.verdict == "no results"]
    for verdict in verdicts:
        claims.check_vocabulary(verdict.claim, smoke_result.rows)
        for test in verdict.claim.tests:  # falsification control: no test passes on its null
            null = claims.null_outcome(test, smoke_result.rows, verdict.claim.id)
            assert null is not None and null.outcome != "passed", (verdict.claim.id, test.label)


def test_paper_profile_path_runs_on_a_tiny_local_hub_file(tmp_path) -> None:
    files = []
    rng = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(30)]
    for split in ("train", "validation", "test"):
        lines = [" ".join(words[j] for j in torch.randint(0, 30, (12,), generator=rng).tolist())
                 for _ in range(60)]
        path = tmp_path / f"{split}.parquet"
        pd.DataFrame({"text": lines}).to_parquet(path)
        files.append(str(path))
    overrides = {"corpus_files": files, "corpus_methods": ["softmax", "kerbs"],
                 "synthetic_methods": ["softmax"], "vocab_size": 25, "corpus_embed": 8,
                 "corpus_hidden": 8, "corpus_layers": 2, "corpus_epochs": 1, "syn_words": 10,
                 "syn_train_tokens": 400, "syn_valid_tokens": 200, "syn_test_tokens": 200,
                 "syn_hidden": 4,
                 "syn_epochs": 1, "batch_size": 4, "bptt": 5}
    config = kerbs.make_config("paper", seeds=[0], device="cpu", overrides=overrides)
    result = kerbs.run(config, results_dir=str(tmp_path / "results"))
    ppl = result.rows[(result.rows["dataset"] == "wikitext2") & (result.rows["metric"] == "ppl")]
    assert set(ppl["method"]) == {"softmax", "kerbs"}
    assert ((ppl["value"] > 1) & (ppl["value"] < 2 * 25)).all()
