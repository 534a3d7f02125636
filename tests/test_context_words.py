"""Chapter 07's Brown context-bag task: co-occurrence, PPMI, SVD features, document split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softmax_repro.data import context_words as cw


def test_cooccurrence_counts_pairs_within_the_window_of_each_document():
    docs = [np.array([0, 1, 2, 0]), np.array([1, 1, 5])]  # id 5 is out of vocabulary (V = 3)
    counts = cw.cooccurrence(docs, vocab=3, window=1).toarray()
    expected = np.array([[0, 1, 1], [1, 2, 1], [1, 1, 0]])
    assert (counts == expected).all()
    wider = cw.cooccurrence(docs, vocab=3, window=2).toarray()
    assert wider[0, 2] == 2 and wider[0, 0] == 0  # (0,2) at distance 1 twice; 0..0 is 3 apart


def test_ppmi_matches_hand_computed_values():
    counts = cw.sparse.csr_matrix(np.array([[2.0, 1.0], [1.0, 0.0]]))
    got = cw.ppmi(counts, smoothing=1.0).toarray()
    total = 4.0
    pmi_00 = math.log((2 / total) / ((3 / total) * (3 / total)))
    pmi_01 = math.log((1 / total) / ((3 / total) * (1 / total)))
    assert got[0, 0] == pytest.approx(max(pmi_00, 0.0))
    assert got[0, 1] == pytest.approx(pmi_01)
    assert got[1, 1] == 0.0


def test_context_bags_average_the_in_vocabulary_neighbours():
    embedding = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ids = np.array([0, 1, 7, 0])  # 7 has no embedding
    bags = cw.context_bags(ids, embedding, window=1, positions=np.array([0, 2, 3]))
    assert np.allclose(bags[0], [0.0, 1.0])  # right neighbour 1
    assert np.allclose(bags[1], [0.5, 0.5])  # neighbours 1 and 0
    assert np.allclose(bags[2], [0.0, 0.0])  # only neighbour 7: no embedding


def toy_documents(seed: int = 0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(30)]

    def doc():
        return [[words[int(rng.zipf(1.5)) % 30] for _ in range(12)] for _ in range(5)]

    return {"train": [doc() for _ in range(8)], "valid": [doc() for _ in range(2)],
            "test": [doc() for _ in range(2)]}


def test_build_task_fits_features_on_training_documents_only():
    docs = toy_documents()
    task = cw.build_task(docs, num_labels=10, context_vocab=20, dim=4, window=2,
                         max_examples={})
    altered = {**docs, "test": [[["zzz"] * 12] * 5] * 2}  # test text never reaches the SVD
    again = cw.build_task(altered, num_labels=10, context_vocab=20, dim=4, window=2,
                          max_examples={})
    assert torch.equal(task.embedding, again.embedding)
    assert torch.equal(task.x["train"], again.x["train"])
    assert task.y["test"].numel() > 0 and again.y["test"].numel() == 0  # zzz is no label
    assert task.words[0] == max(task.words, key=lambda w: sum(
        s.count(w) for d in docs["train"] for s in d))
    assert (task.label_counts[:-1] >= task.label_counts[1:]).all()
    assert abs(float(task.x["train"].mean())) < 1e-4  # standardised on training examples


def test_build_task_subsamples_deterministically_and_rejects_bad_sizes():
    docs = toy_documents(1)
    kwargs = {"num_labels": 10, "context_vocab": 20, "dim": 4, "window": 2,
              "max_examples": {"train": 50}}
    a, b = cw.build_task(docs, seed=2, **kwargs), cw.build_task(docs, seed=2, **kwargs)
    assert a.x["train"].shape == (50, 4) and torch.equal(a.x["train"], b.x["train"])
    with pytest.raises(ValueError, match="num_labels=500"):
        cw.build_task(docs, num_labels=500, context_vocab=20, dim=4, window=2, max_examples={})
    with pytest.raises(ValueError, match=">= 1"):
        cw.build_task(docs, num_labels=10, context_vocab=20, dim=0, window=2, max_examples={})


def test_brown_documents_are_split_by_file():
    from softmax_repro.data import text

    try:
        docs = cw.brown_documents()
    except text.CorpusUnavailableError:
        pytest.skip("Brown corpus not cached and npm missing")
    assert {k: len(v) for k, v in docs.items()} == {"train": 400, "valid": 50, "test": 50}
