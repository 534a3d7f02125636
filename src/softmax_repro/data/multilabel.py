"""Synthetic sparse multi-label data with planted multi-modal labels (chapter 07, Liu et al.).

``topics`` topics each own a sparse word distribution over ``features`` words (Dirichlet with
``concentration`` on ``words_per_topic`` words of their own). Each label has one topic, or, for a
``multimodal_fraction`` of the labels, two distinct topics (its *modes*). An instance picks one
topic uniformly, draws ``tokens`` words from it (plus a share ``noise`` of uniform background
words), and is tagged with ``labels_per_instance`` distinct labels drawn uniformly from the labels
having that topic as a mode. Features are word counts, L2-normalised per instance (a tf vector).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class MultiLabelSet:
    """``x[N, d]`` float32 features, ``y[N, L]`` 0/1 labels (uint8), the planted label modes
    ``label_topics`` (``[L, 2]``, second column −1 for single-mode labels) and ``topic[N]``."""

    x: Tensor
    y: Tensor
    label_topics: Tensor
    topic: Tensor

    @property
    def multimodal(self) -> Tensor:
        """Indices of the labels with two modes."""
        return (self.label_topics[:, 1] >= 0).nonzero().squeeze(1)

    @property
    def unimodal(self) -> Tensor:
        """Indices of the labels with one mode."""
        return (self.label_topics[:, 1] < 0).nonzero().squeeze(1)


def planted_multilabel(n_train: int, n_test: int, *, topics: int, labels: int, features: int,
                       words_per_topic: int, multimodal_fraction: float, tokens: int,
                       labels_per_instance: int, noise: float = 0.1,
                       concentration: float = 0.5,
                       seed: int) -> tuple[MultiLabelSet, MultiLabelSet]:
    """Train and test sets of the same planted model (see the module docstring).

    Raises:
        ValueError: inconsistent sizes (e.g. a topic with fewer labels than
            ``labels_per_instance``, or too few words for the topics).
    """
    if not 0.0 <= multimodal_fraction <= 1.0 or not 0.0 <= noise < 1.0:
        raise ValueError("multimodal_fraction must lie in [0, 1] and noise in [0, 1)")
    if topics < 2 or words_per_topic * topics > features:
        raise ValueError("need >= 2 topics and words_per_topic * topics <= features")
    rng = np.random.default_rng(seed)
    word_dist = np.zeros((topics, features))
    for t in range(topics):
        own = np.arange(t * words_per_topic, (t + 1) * words_per_topic)
        word_dist[t, own] = rng.dirichlet(np.full(words_per_topic, concentration))
    word_dist = (1 - noise) * word_dist + noise / features
    label_topics = np.full((labels, 2), -1, dtype=np.int64)
    label_topics[:, 0] = np.arange(labels) % topics
    multi = rng.choice(labels, size=round(multimodal_fraction * labels), replace=False)
    second = (label_topics[multi, 0] + rng.integers(1, topics, size=multi.size)) % topics
    label_topics[multi, 1] = second
    pools = [np.flatnonzero((label_topics == t).any(axis=1)) for t in range(topics)]
    if min(p.size for p in pools) < labels_per_instance:
        raise ValueError("a topic has fewer labels than labels_per_instance; add labels")

    def draw(n: int) -> MultiLabelSet:
        topic = rng.integers(topics, size=n)
        counts = np.stack([rng.multinomial(tokens, word_dist[t]) for t in topic]).astype(
            np.float32)
        x = counts / np.linalg.norm(counts, axis=1, keepdims=True).clip(1e-12)
        y = np.zeros((n, labels), dtype=np.uint8)
        for i, t in enumerate(topic):
            y[i, rng.choice(pools[t], size=labels_per_instance, replace=False)] = 1
        return MultiLabelSet(torch.from_numpy(x), torch.from_numpy(y),
                             torch.from_numpy(label_topics), torch.from_numpy(topic))

    return draw(n_train), draw(n_test)
