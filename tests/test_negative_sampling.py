"""Chapter 07's negative-sampling methods (Bamler & Mandt) and the chapter's experiment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from softmax_repro.config import ConfigError
from softmax_repro.experiments import ch07_extreme_classification as chapter
from softmax_repro.methods import negative_sampling as ns
from softmax_repro.pipeline import claims


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_negative_sampling_loss_matches_hand_computed_values():
    pos, neg = torch.tensor([0.5]), torch.tensor([[-1.0, 2.0]])
    lq_pos, lq_neg = torch.tensor([-3.0]), torch.tensor([[-2.0, -4.0]])
    data = -math.log(sig(0.5)) - 0.5 * (math.log(sig(1.0)) + math.log(sig(-2.0)))
    penalty = (0.5 - 3.0) ** 2 + 0.5 * ((-1.0 - 2.0) ** 2 + (2.0 - 4.0) ** 2)
    got = ns.negative_sampling_loss(pos, neg, lq_pos, lq_neg, reg=0.1)
    assert got.item() == pytest.approx(data + 0.1 * penalty, rel=1e-6)
    assert ns.negative_sampling_loss(pos, neg, lq_pos, lq_neg, 0.0).item() == pytest.approx(data)


def test_nce_loss_matches_hand_computed_values():
    pos, neg = torch.tensor([0.5]), torch.tensor([[-1.0]])
    lq_pos, lq_neg = torch.tensor([-3.0]), torch.tensor([[-2.0]])
    data = -math.log(sig(0.5 + 3.0)) - math.log(sig(-(-1.0 + 2.0)))
    got = ns.nce_loss(pos, neg, lq_pos, lq_neg, reg=0.2)
    assert got.item() == pytest.approx(data + 0.2 * (0.25 + 1.0), rel=1e-6)


def test_bias_correction_adds_the_noise_log_probability():
    scores, noise = torch.tensor([[1.0, 0.0]]), torch.tensor([[-5.0, -0.1]])
    assert ns.predict_scores(scores, None).argmax().item() == 0
    assert ns.predict_scores(scores, noise).argmax().item() == 1


def test_row_adagrad_equals_torch_adagrad_on_the_touched_rows():
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    rows = torch.tensor([1, 4])
    ours, accum = start.clone(), torch.zeros(6, 3)
    peer = start.clone().requires_grad_()
    optimizer = torch.optim.Adagrad([peer], lr=0.3, eps=1e-10)
    for _ in range(3):
        grad = torch.randn(2, 3)
        ns.adagrad_rows_(ours, accum, rows, grad, lr=0.3)
        full = torch.zeros(6, 3)
        full[rows] = grad
        peer.grad = full
        optimizer.step()
    assert torch.allclose(ours, peer.detach(), atol=1e-6)
    untouched = torch.tensor([0, 2, 3, 5])
    assert torch.equal(ours[untouched], start[untouched])


def test_newton_fit_equals_sklearn_logistic_regression():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g, dtype=torch.float64)
    t = ((z[:, 0] + 0.7 * torch.randn(500, generator=g, dtype=torch.float64)) > 0.2).double()
    z1 = torch.cat([z, torch.ones(500, 1, dtype=torch.float64)], dim=1)
    outer = (z1[:, :, None] * z1[:, None, :]).reshape(500, -1)
    w = ns.newton_logistic(z1, outer, torch.zeros(500, dtype=torch.long), t, 1,
                           torch.zeros(1, 4, dtype=torch.float64), reg=0.1, steps=20)
    peer = LogisticRegression(C=1 / 0.1, fit_intercept=False, tol=1e-12, max_iter=2000)
    peer.fit(z1.numpy(), t.numpy())
    assert np.allclose(w.numpy()[0], peer.coef_[0], atol=1e-6)


def clustered(num_labels: int = 11, n: int = 3000, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.5 * torch.randn(num_labels, d, generator=g)
    y = torch.randint(num_labels, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("split", ns.SPLITS)
def test_tree_is_a_balanced_normalised_distribution(split):
    x, y = clustered()
    tree = ns.fit_tree(x, y, 11, split=split, pca_dim=4)
    assert tree.depth == math.ceil(math.log2(11))
    assert sorted(tree.order.tolist()) == list(range(11))
    log_p = tree.log_prob_all(tree.project(x[:50]))
    assert torch.allclose(log_p.exp().sum(dim=1), torch.ones(50), atol=1e-5)
    labels = torch.randint(11, (50, 3), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(tree.log_prob(tree.project(x[:50]), labels), log_p.gather(1, labels),
                          atol=1e-5)
    # balanced: every label's path has ceil or floor of log2 C real decisions
    decisions = (tree.path_dir != 0).sum(dim=0)
    assert set(decisions.tolist()) <= {3, 4}
    # the tree learns the clusters: far better than the uniform 1/11
    assert (log_p.argmax(dim=1) == y[:50]).float().mean() > 0.6


def test_tree_samples_follow_its_probabilities_and_report_their_log_probability():
    x, y = clustered()
    tree = ns.fit_tree(x, y, 11, pca_dim=4)
    z = tree.project(x[:3])
    labels, log_q = tree.sample(z, 20_000, torch.Generator().manual_seed(2))
    assert labels.shape == (3, 20_000)
    assert torch.allclose(log_q, tree.log_prob(z, labels), atol=1e-5)
    freq = torch.stack([torch.bincount(row, minlength=11) / 20_000.0 for row in labels])
    assert (freq - tree.log_prob_all(z).exp()).abs().max() < 0.015


def test_code_split_is_the_initial_split_and_the_paper_split_alternates():
    x, y = clustered(num_labels=16, seed=3)
    code = ns.fit_tree(x, y, 16, split="code", pca_dim=4)
    one_round = ns.fit_tree(x, y, 16, split="paper", pca_dim=4, max_rounds=1)
    assert torch.equal(code.order, one_round.order)
    assert torch.equal(code.levels[0].weight, one_round.levels[0].weight)
    # the alternating split's root separates the labels' data at least as well (train NLL)
    paper = ns.fit_tree(x, y, 16, split="paper", pca_dim=4, max_rounds=5)
    z_code, z_paper = code.project(x), paper.project(x)
    nll_code = -code.log_prob(z_code, y).mean()
    nll_paper = -paper.log_prob(z_paper, y).mean()
    assert nll_paper <= nll_code + 0.05


def test_tree_fit_and_sampling_are_deterministic():
    x, y = clustered()
    a, b = ns.fit_tree(x, y, 11, pca_dim=4), ns.fit_tree(x, y, 11, pca_dim=4)
    assert torch.equal(a.order, b.order)
    assert all(torch.equal(p.weight, q.weight) for p, q in zip(a.levels, b.levels, strict=True))
    z = a.project(x[:5])
    first = a.sample(z, 4, torch.Generator().manual_seed(7))
    again = a.sample(z, 4, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0])


def test_baseline_samplers():
    uniform = ns.UniformSampler(5)
    labels, log_q = uniform.sample(torch.zeros(3, 2), 4, torch.Generator().manual_seed(0))
    assert labels.shape == (3, 4) and torch.allclose(log_q, torch.full((3, 4), -math.log(5)))
    unigram = ns.UnigramSampler(torch.tensor([16.0, 1.0, 0.0]))
    probs = torch.tensor([8.0, 1.0, 0.0]) / 9.0  # 16^0.75 = 8
    assert torch.allclose(unigram.probs.float(), probs)
    labels, log_q = unigram.sample(torch.zeros(2, 1), 3, torch.Generator().manual_seed(0))
    assert (labels != 2).all() and torch.allclose(log_q, unigram.log_prob(None, labels))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ns.fit_tree(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), 4,
                             split="greedy", pca_dim=2), "split='greedy'"),
        (lambda: ns.fit_tree(torch.randn(10, 3), torch.full((10,), 7), 4, pca_dim=2),
         "labels must"),
        (lambda: ns.fit_tree(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), 1),
         "at least 2 labels"),
        (lambda: ns.pca(torch.randn(10, 3), 5), "k=5"),
        (lambda: ns.UnigramSampler(torch.zeros(3)), "positive sum"),
    ],
)
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_labels": 1}, "num_labels"),
        ({"pca_dim": 100}, "pca_dim"),
        ({"lr_grid": []}, "lr_grid is empty"),
        ({"lm_cutoffs": [0.5, 0.2]}, "lm_cutoffs"),
        ({"overlap_lambda": 0}, "overlap_lambda"),
        ({"xmc_words_per_topic": 100}, "xmc_words_per_topic"),
        ({"tune_seed": 0}, "tune_seed"),
        ({"curve_points": 10_000}, "curve_points"),
        ({"labels": 3}, "unknown key 'labels'"),
    ],
)
def test_bad_config_values_raise(overrides, message):
    with pytest.raises(ConfigError, match=message):
        chapter.make_config("smoke", overrides=overrides)


def test_profiles_build_and_cpu_has_enough_labels_and_seeds():
    for profile in chapter.PROFILES:
        chapter.make_config(profile)
    cpu = chapter.make_config("cpu")
    assert cpu.num_labels >= 10_000 and len(cpu.seeds) >= 5 and cpu.threads == 1
    assert chapter.make_config("paper").num_labels >= cpu.num_labels


def test_adaptive_head_log_probabilities_sum_to_one_and_match_its_nll():
    from softmax_repro.methods.heads import AdaptiveSoftmaxHead

    torch.manual_seed(0)
    head = AdaptiveSoftmaxHead(8, 50, chapter.lm_cutoffs(chapter.make_config("smoke"), 50))
    h, target = torch.randn(6, 8), torch.randint(50, (6,))
    log_p = head(h)
    assert torch.allclose(log_p.exp().sum(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(head.nll(h, target), -log_p.gather(1, target[:, None]).squeeze(1),
                          atol=1e-5)


def test_time_to_target_censors_a_run_that_never_reaches_it():
    run = chapter.SampledRun(torch.zeros(1), torch.zeros(1), [1, 2], [1.0, 2.0], [0.1, 0.3])
    assert chapter.time_to_target(run, 0.2) == (2.0, True)
    assert chapter.time_to_target(run, 0.5) == (4.0, False)


TINY = {"num_labels": 600, "context_vocab": 800, "feature_dim": 8, "train_points": 3_000,
        "valid_points": 300, "test_points": 300, "curve_points": 200, "steps": 30,
        "eval_every": 10, "tune_steps": 10, "lr_grid": [0.1], "pca_dim": 3, "tree_points": 1_000,
        "full_softmax_steps": 10, "full_softmax_lr_grid": [0.1], "lm_vocab": 200,
        "lm_train_tokens": 2_000, "lm_eval_tokens": 600, "lm_embed": 8, "lm_hidden": 16,
        "xmc_topics": 4, "xmc_words_per_topic": 10, "xmc_labels": 40, "xmc_features": 80,
        "xmc_train": 200, "xmc_test": 100, "xmc_clusters": 4, "xmc_kmeans_iterations": 3}


@pytest.fixture(scope="module")
def smoke_rows(tmp_path_factory):
    config = chapter.make_config("smoke", overrides=TINY)
    return chapter.run(config, results_dir=str(tmp_path_factory.mktemp("r07"))).rows


def test_smoke_run_has_every_method_and_every_claim_test_finds_rows(smoke_rows):
    negatives = set(smoke_rows.loc[smoke_rows["part"] == "negatives", "method"])
    assert {*chapter.SAMPLED_METHODS, "full_softmax", "unigram", "tree", "tree_code_split",
            "adversarial_uncorrected"} <= negatives
    for claim in claims.chapter_claims(chapter.CHAPTER):
        claims.check_vocabulary(claim, smoke_rows)
        for test in claim.tests:
            assert claims.comparison_values(test, smoke_rows, claim.id) is not None, test.label
            null = claims.null_outcome(test, smoke_rows, claim.id)
            assert null is None or null.outcome != "passed", (claim.id, test.label)


def test_paper_profile_code_path_runs_at_tiny_size(tmp_path):
    config = chapter.make_config("paper", seeds=[3], overrides={**TINY, "threads": 1,
                                                                 "full_softmax_seeds": 1})
    rows = chapter.run(config, results_dir=str(tmp_path)).rows
    assert set(rows["part"]) == {"negatives", "adaptive", "clusters"}
    assert (rows.loc[rows["metric"] == "top1", "value"].between(0, 1)).all()
    assert chapter.PAPER_DATASETS  # the page names the paper's data sets and where they are


def tiny_data() -> chapter.NegativesData:
    x, y = clustered(num_labels=8, n=600)
    split = {"train": slice(0, 400), "valid": slice(400, 500), "test": slice(500, 600)}
    from softmax_repro.data.context_words import ContextWordTask

    task = ContextWordTask(x={k: x[v] for k, v in split.items()},
                           y={k: y[v] for k, v in split.items()}, words=tuple("abcdefgh"),
                           label_counts=torch.bincount(y[:400], minlength=8).double(),
                           embedding=torch.zeros(1, 6))
    tree = ns.fit_tree(task.x["train"], task.y["train"], 8, pca_dim=3)
    samplers = {"adversarial": ns.TreeSampler(tree), "uniform": ns.UniformSampler(8),
                "nce": ns.UnigramSampler(task.label_counts)}
    noise = {"adversarial": samplers["adversarial"].log_prob_all(task.x["valid"])}
    return chapter.NegativesData(task, samplers, {"adversarial": 0.5}, noise)


def test_sampled_training_is_deterministic_and_learns():
    data = tiny_data()
    config = chapter.make_config("smoke", overrides={"batch_size": 32, "curve_points": 100,
                                                     "eval_every": 20, "valid_points": 100})
    for method in ("adversarial", "nce"):
        start = data.fit_s.get(method, 0.0)  # the tree's fitting time for the adversarial noise
        first = chapter.train_sampled(method, data, config, 0.1, 40, seed=4, clock_start=start)
        again = chapter.train_sampled(method, data, config, 0.1, 40, seed=4, clock_start=start)
        assert torch.equal(first.weight, again.weight) and first.curve_top1 == again.curve_top1
        assert first.curve_top1[-1] > 1 / 8 + 0.2, method
        # the clock starts at clock_start and only moves forward (no bound on the machine's speed)
        assert first.curve_seconds[0] >= start
        assert list(first.curve_seconds) == sorted(first.curve_seconds)
