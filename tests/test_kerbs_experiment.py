"""Chapter 03 (KerBS): configuration checks, analysis helpers and tiny end-to-end runs."""

from __future__ import annotations

import math

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
])
def test_bad_configuration_is_rejected_before_work(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        kerbs.make_config("smoke", overrides=overrides)


def test_profiles_build_and_cpu_meets_the_seed_budget() -> None:
    for profile in kerbs.PROFILES:
        kerbs.make_config(profile)
    cpu = kerbs.make_config("cpu")
    assert len(cpu.seeds) >= 5 and cpu.corpus_num_seeds >= 3
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


def test_reallocation_hook_fires_every_m_steps_for_dynamic_variants_only() -> None:
    config = kerbs.make_config("smoke", overrides={"realloc_every": 3, "realloc_fraction": 0.5})
    model = kerbs.RNNLanguageModel(4, 2, 2, KerBSHead(2, 4, senses_per_word=2))
    assert kerbs.reallocation_hook(model, "kerbs_fixed", config) is None
    hook = kerbs.reallocation_hook(model, "kerbs", config)
    calls = []
    model.head.reallocate = lambda max_moves, order: calls.append((max_moves, order))
    for step in range(7):
        hook(step)
    assert calls == [(2, "paper"), (2, "paper")]


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
    held = syn[(syn["metric"] == "senses_held") & (syn["method"] == "kerbs")]
    assert set(held["true_senses"].dropna()) <= {1, 2, 3, 4}
    brown = rows[rows["dataset"] == "brown"]
    ppl = brown[brown["metric"] == "ppl"]
    assert set(ppl["method"]) == set(config.corpus_methods)
    assert ((ppl["value"] > 1) & (ppl["value"] < config.vocab_size)).all()
    deciles = brown[brown["metric"] == "senses_per_word"]
    assert sorted(deciles["freq_decile"]) == list(range(10))
    # total senses are conserved: mean senses over the deciles ≈ senses_per_word
    assert math.isclose(deciles["value"].mean(), config.senses_per_word, rel_tol=0.05)
    projection = kerbs.projection_frame(rows)
    assert {"word", "kind", "label", "pc1", "pc2"} <= set(projection.columns)


def test_every_chapter_claim_finds_its_rows(smoke_result) -> None:
    table = claims.chapter_verdicts(kerbs.CHAPTER, smoke_result.rows)
    assert len(table) >= 10
    assert not (table["verdict"] == "no results").any(), table.to_string()


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
                 "syn_train_tokens": 400, "syn_test_tokens": 200, "syn_hidden": 4,
                 "syn_epochs": 1, "batch_size": 4, "bptt": 5}
    config = kerbs.make_config("paper", seeds=[0], device="cpu", overrides=overrides)
    result = kerbs.run(config, results_dir=str(tmp_path / "results"))
    ppl = result.rows[(result.rows["dataset"] == "wikitext2") & (result.rows["metric"] == "ppl")]
    assert set(ppl["method"]) == {"softmax", "kerbs"}
    assert ((ppl["value"] > 1) & (ppl["value"] < 2 * 25)).all()
