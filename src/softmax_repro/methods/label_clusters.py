"""A partition-based extreme multi-label classifier and overlapping label clusters (chapter 07).

Liu, Chang, Yu, Hsieh & Dhillon (NeurIPS 2021) let a label sit in up to ``λ`` clusters of a
partition-based model such as XR-Linear (PECOS), so that a label whose positive instances form
several modes can be reached from each mode's cluster. ``libpecos`` does not install next to
numpy 2 here, so this module is a small model of our own with the same three stages:

1. **Indexing** (:func:`pifa_embeddings`, :func:`spherical_kmeans`): each label is embedded as the
   normalised sum of its positive instances' features (PIFA) and the labels are clustered.
2. **Matching** (:func:`fit_ridge`): one linear scorer per cluster, ``x ↦ m_k(x)``, trained on
   "does the instance have a positive label in cluster ``k``".
3. **Ranking**: one linear scorer per (label copy, cluster), trained only on the instances whose
   labels reach that cluster (teacher-forced negatives, as XR-Linear does).

Prediction (:meth:`PartitionModel.predict`) keeps the ``beam`` best clusters and scores every label
copy in them by ``m_k(x) + r_ℓ(x)``; a label's score is the maximum over its copies (labels outside
the beam score ``−∞``). Scorers are ridge regressions (closed form, deterministic) instead of
XR-Linear's L2-hinge liblinear solvers.

:func:`overlap_assignment` is the paper's reorganisation: run the base model's beam search on the
training instances, count for each label the clusters its positive instances are matched to, and
give the label its own cluster plus up to ``λ − 1`` other most-matched clusters (the copies are
pseudo-labels); the model is then refitted on the new assignment. ``λ = 1`` returns the base
assignment, so it reproduces the base model exactly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


def pifa_embeddings(x: Tensor, y: Tensor) -> Tensor:
    """Positive-instance feature aggregation: row-normalised ``Yᵀ X`` ``[L, d]``.

    ``x[N, d]`` features, ``y[N, L]`` 0/1 labels; a label without positives gets a zero row.
    """
    emb = y.T.double() @ x.double()
    return (emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def spherical_kmeans(emb: Tensor, clusters: int, iterations: int, seed: int) -> Tensor:
    """Cluster unit rows ``emb[L, d]`` by cosine similarity; returns ``[L]`` cluster ids.

    Centres start at ``clusters`` distinct rows drawn with ``seed``; an emptied cluster keeps its
    previous centre.
    """
    if not 1 <= clusters <= emb.shape[0]:
        raise ValueError(f"clusters={clusters} must lie in [1, {emb.shape[0]}]")
    generator = torch.Generator().manual_seed(seed)
    centres = emb[torch.randperm(emb.shape[0], generator=generator)[:clusters]].clone()
    assign = torch.zeros(emb.shape[0], dtype=torch.long)
    for _ in range(iterations):
        assign = (emb @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, emb)
        norms = sums.norm(dim=1, keepdim=True)
        centres = torch.where(norms > 0, sums / norms.clamp_min(1e-12), centres)
    return assign


def fit_ridge(x: Tensor, targets: Tensor, alpha: float) -> Tensor:
    """Ridge regression with an unpenalised bias: weights ``[d + 1, T]`` (bias last row) for
    ``x[N, d]`` and targets ``[N, T]`` (float64 normal equations)."""
    x1 = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    gram = x1.T @ x1
    penalty = torch.eye(x1.shape[1], dtype=torch.float64) * alpha
    penalty[-1, -1] = 0.0
    return torch.linalg.solve(gram + penalty, x1.T @ targets.double()).float()


def apply_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``[x, 1] @ weight`` for weights from :func:`fit_ridge`."""
    return x @ weight[:-1] + weight[-1]


@dataclasses.dataclass(frozen=True)
class PartitionModel:
    """A fitted one-level partition model over label copies.

    Attributes:
        copy_label: ``[M]`` the label of each copy.
        copy_cluster: ``[M]`` the cluster of each copy.
        matcher: ``[d + 1, K]`` cluster scorers.
        ranker: ``[d + 1, M]`` copy scorers.
        num_labels: ``L``.
    """

    copy_label: Tensor
    copy_cluster: Tensor
    matcher: Tensor
    ranker: Tensor
    num_labels: int

    @property
    def num_clusters(self) -> int:
        return int(self.matcher.shape[1])

    def beam_clusters(self, x: Tensor, beam: int) -> Tensor:
        """Indices ``[N, beam]`` of the best-matching clusters."""
        return apply_linear(x, self.matcher).topk(min(beam, self.num_clusters), dim=1).indices

    def predict(self, x: Tensor, beam: int) -> Tensor:
        """Label scores ``[N, L]`` (``−inf`` for labels none of whose copies is in the beam)."""
        match = apply_linear(x, self.matcher)
        chosen = torch.zeros_like(match, dtype=torch.bool)
        chosen.scatter_(1, match.topk(min(beam, self.num_clusters), dim=1).indices, True)
        copy_scores = apply_linear(x, self.ranker) + match[:, self.copy_cluster]
        copy_scores = torch.where(chosen[:, self.copy_cluster], copy_scores,
                                  torch.full((), float("-inf")))
        out = torch.full((x.shape[0], self.num_labels), float("-inf"))
        index = self.copy_label.expand(x.shape[0], -1)
        return out.scatter_reduce(1, index, copy_scores, reduce="amax", include_self=True)


def fit_partition_model(x: Tensor, y: Tensor, assignment: list[list[int]], clusters: int,
                        alpha: float) -> PartitionModel:
    """Fit matcher and rankers for a label → clusters ``assignment`` (one list per label).

    Args:
        x: features ``[N, d]``.
        y: 0/1 labels ``[N, L]``.
        assignment: ``assignment[ℓ]`` the clusters holding a copy of label ``ℓ`` (non-empty).
        clusters: ``K``.
        alpha: ridge penalty of every scorer.
    """
    if len(assignment) != y.shape[1] or any(not a for a in assignment):
        raise ValueError("assignment needs one non-empty list of clusters per label")
    copy_label = torch.tensor([ell for ell, cs in enumerate(assignment) for _ in cs])
    copy_cluster = torch.tensor([c for cs in assignment for c in cs])
    yf = y.float()
    member = torch.zeros(copy_label.numel(), clusters)
    member[torch.arange(copy_label.numel()), copy_cluster] = 1.0
    reaches = (yf[:, copy_label] @ member) > 0  # [N, K]: instance has a copy in cluster k
    matcher = fit_ridge(x, reaches.float(), alpha)
    ranker = torch.zeros(x.shape[1] + 1, copy_label.numel())
    for k in range(clusters):
        copies = (copy_cluster == k).nonzero().squeeze(1)
        rows = reaches[:, k].nonzero().squeeze(1)
        if copies.numel() == 0 or rows.numel() == 0:
            continue
        ranker[:, copies] = fit_ridge(x[rows], yf[rows][:, copy_label[copies]], alpha)
    return PartitionModel(copy_label, copy_cluster, matcher, ranker, int(y.shape[1]))


def base_assignment(cluster_of_label: Tensor) -> list[list[int]]:
    """One cluster per label: ``[[c_0], [c_1], ...]``."""
    return [[int(c)] for c in cluster_of_label]


def overlap_assignment(model: PartitionModel, x: Tensor, y: Tensor, cluster_of_label: Tensor,
                       beam: int, max_clusters: int) -> list[list[int]]:
    """Liu et al.'s reorganisation: each label keeps its cluster and gains up to
    ``max_clusters − 1`` (``λ − 1``) other clusters, those its positive training instances are
    matched to most often by ``model``'s beam search (ties to the lower index; a cluster matched
    by none of them is never added)."""
    if max_clusters < 1:
        raise ValueError(f"max_clusters={max_clusters} must be >= 1")
    beams = model.beam_clusters(x, beam)
    hits = torch.zeros(x.shape[0], model.num_clusters)
    hits.scatter_(1, beams, 1.0)
    counts = y.float().T @ hits  # [L, K]: positives of label ℓ matched to cluster k
    out = []
    for ell, own in enumerate(cluster_of_label.tolist()):
        extra = counts[ell].clone()
        extra[own] = -1.0
        order = sorted(range(extra.numel()), key=lambda k: (-float(extra[k]), k))
        chosen = [k for k in order[: max_clusters - 1] if extra[k] > 0]
        out.append([own, *chosen])
    return out


def precision_at_k(scores: Tensor, y: Tensor, k: int) -> float:
    """Mean over instances of (true labels among the top ``k``) / ``k``."""
    top = scores.topk(k, dim=1).indices
    hit = y.gather(1, top).float() * torch.isfinite(scores.gather(1, top)).float()
    return float(hit.sum(dim=1).div(k).mean())


def recall_at_k_of(scores: Tensor, y: Tensor, k: int, labels: Tensor) -> float:
    """Share of the positive (instance, label) pairs with ``label ∈ labels`` that rank in the top
    ``k`` of their instance (NaN when there are none)."""
    top = scores.topk(k, dim=1).indices
    in_top = torch.zeros_like(y, dtype=torch.bool).scatter_(1, top, True)
    in_top &= torch.isfinite(scores)
    pos = y[:, labels].bool()
    total = int(pos.sum())
    return float((in_top[:, labels] & pos).sum()) / total if total else float("nan")
