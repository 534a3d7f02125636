"""Chapter 07's partition model and overlapping label clusters (Liu et al. 2021)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from softmax_repro.data.multilabel import planted_multilabel
from softmax_repro.methods import label_clusters as lc

SIZES = {"topics": 6, "labels": 60, "features": 120, "words_per_topic": 15,
         "multimodal_fraction": 0.4, "tokens": 30, "labels_per_instance": 2}


@pytest.fixture(scope="module")
def fitted():
    train, test = planted_multilabel(600, 300, seed=0, **SIZES)
    clusters = lc.spherical_kmeans(lc.pifa_embeddings(train.x, train.y.float()), 6, 10, seed=0)
    base = lc.fit_partition_model(train.x, train.y, lc.base_assignment(clusters), 6, 1.0)
    return train, test, clusters, base


def test_planted_data_has_two_topic_labels_and_is_deterministic():
    a, _ = planted_multilabel(50, 10, seed=3, **SIZES)
    b, _ = planted_multilabel(50, 10, seed=3, **SIZES)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.multimodal.numel() == round(0.4 * 60)
    two = a.label_topics[a.multimodal]
    assert (two[:, 0] != two[:, 1]).all() and (two >= 0).all()
    assert (a.y.sum(dim=1) == 2).all()
    assert torch.allclose(a.x.norm(dim=1), torch.ones(50), atol=1e-5)


def test_lambda_one_reproduces_the_base_model_exactly(fitted):
    train, test, clusters, base = fitted
    assignment = lc.overlap_assignment(base, train.x, train.y, clusters, beam=2, max_clusters=1)
    assert assignment == lc.base_assignment(clusters)
    again = lc.fit_partition_model(train.x, train.y, assignment, 6, 1.0)
    assert torch.equal(again.predict(test.x, 2), base.predict(test.x, 2))


def test_overlap_gives_each_label_its_own_cluster_plus_at_most_one_more(fitted):
    train, _, clusters, base = fitted
    assignment = lc.overlap_assignment(base, train.x, train.y, clusters, beam=2, max_clusters=2)
    assert all(a[0] == int(c) and len(a) <= 2 and len(set(a)) == len(a)
               for a, c in zip(assignment, clusters, strict=True))
    assert sum(len(a) == 2 for a in assignment) > 0


def test_overlap_reaches_the_second_mode_of_planted_labels():
    gains = []
    for seed in range(2):
        train, test = planted_multilabel(400, 200, seed=seed, **SIZES)
        clusters = lc.spherical_kmeans(lc.pifa_embeddings(train.x, train.y.float()), 6, 10, seed)
        base = lc.fit_partition_model(train.x, train.y, lc.base_assignment(clusters), 6, 1.0)
        overlap = lc.fit_partition_model(
            train.x, train.y, lc.overlap_assignment(base, train.x, train.y, clusters, 1, 2), 6,
            1.0)
        recall = [lc.recall_at_k_of(m.predict(test.x, 1), test.y, 5, test.multimodal)
                  for m in (base, overlap)]
        gains.append(recall[1] - recall[0])
    assert np.mean(gains) > 0


def test_prediction_takes_the_best_copy_and_hides_labels_outside_the_beam():
    # two clusters, label 0 copied in both, label 1 only in cluster 1; features pick the cluster
    matcher = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # [d + 1, K] with d = 1
    ranker = torch.tensor([[0.5, 2.0, 0.0], [0.0, 0.0, 1.0]])  # copies: (0,c0), (0,c1), (1,c1)
    model = lc.PartitionModel(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), matcher, ranker, 2)
    x = torch.tensor([[1.0], [-1.0]])
    scores = model.predict(x, beam=1)
    assert scores[0, 0].item() == pytest.approx(1.0 + 0.5)  # cluster 0 only: copy (0, c0)
    assert math.isinf(scores[0, 1].item())
    assert scores[1, 0].item() == pytest.approx(1.0 - 2.0)  # cluster 1: copy (0, c1)
    assert scores[1, 1].item() == pytest.approx(1.0 + 1.0)
    both = model.predict(x, beam=2)
    assert both[0, 0].item() == pytest.approx(max(1.0 + 0.5, -1.0 + 2.0))


def test_ridge_equals_sklearn_ridge():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(80, 4, generator=g), torch.randn(80, 2, generator=g)
    ours = lc.fit_ridge(x, t, alpha=2.0)
    peer = Ridge(alpha=2.0).fit(x.numpy(), t.numpy())
    assert np.allclose(ours[:-1].numpy(), peer.coef_.T, atol=1e-4)
    assert np.allclose(ours[-1].numpy(), peer.intercept_, atol=1e-4)


def test_precision_and_recall_at_k_hand_values():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, float("-inf")]])
    y = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.uint8)
    assert lc.precision_at_k(scores, y, 1) == pytest.approx(0.5)
    assert lc.precision_at_k(scores, y, 2) == pytest.approx(0.25)
    assert lc.recall_at_k_of(scores, y, 2, torch.tensor([0, 2])) == pytest.approx(0.5)
    assert lc.recall_at_k_of(scores, y, 4, torch.tensor([3])) == 0.0  # −inf is never retrieved


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="clusters=9"):
        lc.spherical_kmeans(torch.randn(5, 2), 9, 3, seed=0)
    with pytest.raises(ValueError, match="one non-empty list"):
        lc.fit_partition_model(torch.randn(4, 2), torch.ones(4, 2), [[0]], 1, 1.0)
    with pytest.raises(ValueError, match="labels_per_instance"):
        planted_multilabel(5, 5, topics=2, labels=2, features=10, words_per_topic=5,
                           multimodal_fraction=0.0, tokens=5, labels_per_instance=3, seed=0)
