"""Negative sampling for extreme classification: Bamler & Mandt (ICLR 2020), chapter 07.

A linear classifier scores label ``y`` of features ``x[d]`` as ``ξ_y = xᵀw_y + b_y``. Instead of a
softmax over all ``C`` labels it is trained on one positive and ``n`` negatives ``y′ ~ p_n(·|x)``:

- Eq. 2: ``ℓ = −log σ(ξ_y) − (1/n) Σ log σ(−ξ_{y′})`` (:func:`negative_sampling_loss`);
- Eq. 6: ``+ λ[(ξ_y + log p_n(y|x))² + (1/n) Σ (ξ_{y′} + log p_n(y′|x))²]``;
- Eq. 5: predict ``argmax_y ξ_y + log p_n(y|x)`` (the bias correction; :func:`predict_scores`).

Its adversarial noise ``p_n`` is an auxiliary model that imitates the data: a balanced
probabilistic binary tree over the labels (Eqs. 7–9, :class:`AuxiliaryTree`). Every inner node
``ν`` sends ``x`` left with ``σ(w_νᵀz + b_ν)`` where ``z`` are PCA-reduced features (16-d in the
paper); a label's probability is the product along its root-to-leaf path, so sampling and
``log p_n(y|x)`` cost ``O(log C)``. :func:`fit_tree` fits the nodes level by level with Newton
steps on an L2-regularised logistic loss (``λ_n = 0.1``), splitting each node's labels in equal
halves, either

- ``split="paper"``: alternating — sort labels by the node's first principal direction of the label
  means, fit, re-sort by the fitted score of the label means, refit, until no label moves; or
- ``split="code"``: the official code's behaviour (``aux_model/fit_aux_model.jl``): its discrete
  re-sort uses the initial eigenvector, never the fitted weights, so the initial split stays.

Baseline noises: :class:`UniformSampler` (``1/C``), :class:`UnigramSampler` (training frequency to
the power 0.75); :func:`nce_loss` is noise-contrastive estimation with the same noise.
Training uses row-sparse Adagrad (:func:`adagrad_rows_`), as the official code does.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

SPLITS = ("paper", "code")


def negative_sampling_loss(score_pos: Tensor, score_neg: Tensor, logq_pos: Tensor,
                           logq_neg: Tensor, reg: float) -> Tensor:
    """Eq. 2 plus the Eq. 6 regulariser, per example ``[B]``.

    Args:
        score_pos: ``ξ_y`` ``[B]`` of the true labels.
        score_neg: ``ξ_{y′}`` ``[B, n]`` of the sampled negatives.
        logq_pos: ``log p_n(y|x)`` ``[B]``.
        logq_neg: ``log p_n(y′|x)`` ``[B, n]``.
        reg: ``λ`` (0 switches the regulariser off).
    """
    data = F.softplus(-score_pos) + F.softplus(score_neg).mean(dim=1)
    penalty = (score_pos + logq_pos) ** 2 + ((score_neg + logq_neg) ** 2).mean(dim=1)
    return data + reg * penalty


def nce_loss(score_pos: Tensor, score_neg: Tensor, logq_pos: Tensor, logq_neg: Tensor,
             reg: float) -> Tensor:
    """Noise-contrastive estimation with one noise sample per negative slot, per example ``[B]``.

    ``softplus(log p_n(y) − ξ_y) + (1/n) Σ softplus(ξ_{y′} − log p_n(y′))`` (the official code's
    ``supervised_nce``: ``ξ`` estimates ``log p(y|x)`` up to a constant, so predictions use ``ξ``
    alone) plus ``λ(ξ_y² + (1/n) Σ ξ_{y′}²)``.
    """
    data = F.softplus(logq_pos - score_pos) + F.softplus(score_neg - logq_neg).mean(dim=1)
    return data + reg * (score_pos**2 + (score_neg**2).mean(dim=1))


def predict_scores(scores: Tensor, log_noise: Tensor | None) -> Tensor:
    """Eq. 5: ``ξ + log p_n(·|x)`` (``[N, C]``); ``log_noise=None`` = without the correction."""
    return scores if log_noise is None else scores + log_noise


def adagrad_rows_(param: Tensor, accum: Tensor, rows: Tensor, grad: Tensor, lr: float,
                  eps: float = 1e-10) -> None:
    """Adagrad on the rows ``rows[R]`` of ``param[C, ...]`` only (in place).

    ``accum[rows] += grad²``; ``param[rows] −= lr · grad / (√accum[rows] + eps)``; ``grad`` has
    the shape of ``param[rows]`` and ``rows`` must hold no duplicates.
    """
    state = accum.index_select(0, rows) + grad * grad
    accum.index_copy_(0, rows, state)
    param.index_copy_(0, rows, param.index_select(0, rows) - lr * grad / (state.sqrt() + eps))


# ---- samplers ------------------------------------------------------------------------------


class UniformSampler:
    """``p_n(y) = 1/C``."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.log_c = math.log(num_labels)

    def sample(self, z: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(labels[B, num], log p_n[B, num])`` for ``B = len(z)`` (``z`` is ignored)."""
        labels = torch.randint(self.num_labels, (z.shape[0], num), generator=generator)
        return labels, torch.full(labels.shape, -self.log_c)

    def log_prob(self, z: Tensor, labels: Tensor) -> Tensor:
        return torch.full(labels.shape, -self.log_c)

    def log_prob_all(self, z: Tensor) -> Tensor:
        return torch.full((z.shape[0], self.num_labels), -self.log_c)


class UnigramSampler:
    """``p_n(y) ∝ count(y)^power`` (word2vec's 0.75 by default), independent of ``x``."""

    def __init__(self, counts: Tensor, power: float = 0.75) -> None:
        weights = counts.double().clamp_min(0) ** power
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError("counts must be non-negative with a positive sum")
        self.probs = weights / weights.sum()
        self.logq = self.probs.log().float()
        self.num_labels = int(counts.numel())

    def sample(self, z: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.multinomial(self.probs, z.shape[0] * num, replacement=True,
                                   generator=generator).view(z.shape[0], num)
        return labels, self.logq[labels]

    def log_prob(self, z: Tensor, labels: Tensor) -> Tensor:
        return self.logq[labels]

    def log_prob_all(self, z: Tensor) -> Tensor:
        return self.logq.expand(z.shape[0], -1)


# ---- the auxiliary tree --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TreeLevel:
    """The nodes at one depth, ordered by the first label position they hold.

    ``weight[n, k]`` / ``bias[n]``: the node's logistic regression (``σ(wᵀz + b)`` = go left);
    ``splits[n]``: whether the node has two children (a one-label node passes straight down);
    ``left[n]`` / ``right[n]``: child indices at the next depth (equal for a pass-through node).
    """

    weight: Tensor
    bias: Tensor
    splits: Tensor
    left: Tensor
    right: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class AuxiliaryTree:
    """A balanced probabilistic binary tree over ``C`` labels (Bamler & Mandt, Eqs. 7–9).

    Attributes:
        levels: the inner depths, root first.
        order: ``[C]`` the label at each leaf position (leaf ``i`` of the last depth is position
            ``i``).
        path_node / path_dir: ``[D, C]`` each label's node at every depth and its direction there
            (``+1`` left, ``−1`` right, ``0`` pass-through).
        mean / components: PCA map of the main features: ``z = (x − mean) @ components`` (``[d]``,
            ``[d, k]``).
    """

    levels: tuple[TreeLevel, ...]
    order: Tensor
    path_node: Tensor
    path_dir: Tensor
    mean: Tensor
    components: Tensor

    @property
    def num_labels(self) -> int:
        return int(self.order.numel())

    @property
    def depth(self) -> int:
        return len(self.levels)

    def project(self, x: Tensor) -> Tensor:
        """PCA features ``z[N, k]`` of main features ``x[N, d]``."""
        return (x - self.mean) @ self.components

    @functools.cached_property
    def _flat(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All depths' nodes in one table: ``weight[M, k]``, ``bias[M]``, each label's global
        node ids ``[C, D]`` and directions ``[C, D]`` (float, 0 = pass-through)."""
        offsets = torch.tensor([0, *(lv.bias.numel() for lv in self.levels)]).cumsum(0)[:-1]
        weight = torch.cat([lv.weight for lv in self.levels])
        bias = torch.cat([lv.bias for lv in self.levels])
        nodes = (self.path_node + offsets[:, None]).T.contiguous()
        return weight, bias, nodes, self.path_dir.T.to(weight.dtype).contiguous()

    def log_prob(self, z: Tensor, labels: Tensor) -> Tensor:
        """``log p_n(labels|z)`` for ``z[B, k]`` and ``labels[B, ...]``, shaped like ``labels``.

        One gather of every node on each label's path: ``Σ_depth logσ(dir · (wᵀz + b))``.
        """
        weight, bias, nodes, dirs = self._flat
        flat = labels.reshape(z.shape[0], -1)
        node = nodes[flat]  # [B, n, D]
        logit = torch.einsum("bk,bndk->bnd", z, weight[node]) + bias[node]
        sign = dirs[flat]
        return (F.logsigmoid(sign * logit) * sign.abs()).sum(dim=-1).reshape(labels.shape)

    def log_prob_all(self, z: Tensor) -> Tensor:
        """``log p_n(y|z)`` for every label, ``[N, C]`` (rows sum to 1 after ``exp``).

        Top-down over the depths: a left child adds ``logσ(s)``, a right child
        ``logσ(−s) = logσ(s) − s``, a pass-through child keeps its parent's value.
        """
        log_p = torch.zeros(z.shape[0], 1, dtype=z.dtype)
        for level in self.levels:
            split = level.splits.nonzero().squeeze(1)
            logit = z @ level.weight[split].T + level.bias[split]
            left_ls = F.logsigmoid(logit)
            right = log_p.index_select(1, split) + (left_ls - logit)
            left = log_p.index_add(1, split, left_ls)
            width = int(level.right.max()) + 1
            nxt = torch.empty(z.shape[0], width, dtype=z.dtype)
            nxt.index_copy_(1, level.left, left)
            nxt.index_copy_(1, level.right[split], right)
            log_p = nxt
        out = torch.empty_like(log_p)
        out[:, self.order] = log_p
        return out

    def sample(self, z: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Walk root to leaf ``num`` times per row: ``(labels[B, num], log p_n[B, num])``."""
        rows = z.repeat_interleave(num, dim=0) if num > 1 else z
        uniform = torch.rand(rows.shape[0], self.depth, generator=generator, dtype=z.dtype)
        node = torch.zeros(rows.shape[0], dtype=torch.long)
        log_p = torch.zeros(rows.shape[0], dtype=z.dtype)
        for depth, level in enumerate(self.levels):
            logit = (rows * level.weight[node]).sum(dim=1) + level.bias[node]
            split = level.splits[node]
            go_left = (uniform[:, depth] < torch.sigmoid(logit)) | ~split
            signed = torch.where(go_left, logit, -logit)
            log_p = log_p + F.logsigmoid(signed) * split
            node = torch.where(go_left, level.left[node], level.right[node])
        labels = self.order[node]
        return labels.view(z.shape[0], num), log_p.view(z.shape[0], num)


def pca(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean ``[d]`` and top-``k`` principal directions ``[d, k]`` of ``x[N, d]`` (float64 SVD;
    each direction's sign fixed so its largest-magnitude entry is positive)."""
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k={k} must lie in [1, {x.shape[1]}]")
    mean = x.double().mean(dim=0)
    _, _, vh = torch.linalg.svd(x.double() - mean, full_matrices=False)
    comps = vh[:k].T
    signs = torch.sign(comps.gather(0, comps.abs().argmax(dim=0, keepdim=True)))
    return mean.float(), (comps * signs).float()


def _segment_ids(lo: np.ndarray, positions: int) -> np.ndarray:
    """Node index of every label position for nodes with sorted starts ``lo``."""
    return np.searchsorted(lo, np.arange(positions), side="right") - 1


def _resort(order: np.ndarray, node_of_pos: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``order`` re-sorted inside every node's position range by ascending ``key[label]``
    (stable, so ties keep their order)."""
    return order[np.lexsort((key[order], node_of_pos))]


def _top_directions(emb: Tensor, node_of_label: Tensor, nodes: int) -> Tensor:
    """First principal direction ``[nodes, k]`` of the label means inside each node."""
    k = emb.shape[1]
    count = torch.bincount(node_of_label, minlength=nodes).double().clamp_min(1)
    mean = torch.zeros(nodes, k, dtype=torch.float64).index_add_(0, node_of_label, emb) \
        / count[:, None]
    centred = emb - mean[node_of_label]
    outer = (centred[:, :, None] * centred[:, None, :]).reshape(-1, k * k)
    cov = torch.zeros(nodes, k * k, dtype=torch.float64).index_add_(0, node_of_label, outer)
    _, vectors = torch.linalg.eigh(cov.view(nodes, k, k))
    top = vectors[:, :, -1]
    signs = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    return top * signs


def newton_logistic(z1: Tensor, outer: Tensor, node: Tensor, target: Tensor, nodes: int,
                    weight: Tensor, reg: float, steps: int, max_step: float = 10.0) -> Tensor:
    """Newton steps for ``nodes`` independent L2-regularised logistic regressions at once.

    Minimises, for every node ``ν``, ``Σ_{i ∈ ν} logloss(σ(θ_νᵀ z1_i), t_i) + (λ/2)‖θ_ν‖²``.

    Args:
        z1: features with a trailing 1 ``[N, k + 1]``.
        outer: ``z1 z1ᵀ`` flattened ``[N, (k + 1)²]`` (precomputed once).
        node: the regression each point belongs to ``[N]``.
        target: 1 = left, 0 = right ``[N]``.
        weight: the starting parameters ``θ`` ``[nodes, k + 1]`` (the bias is the last column).
        reg: ``λ_n`` on every parameter (bias included, as in the official code).
        steps: Newton iterations; each step's norm is capped at ``max_step``.

    Per-node sums are sparse products with the ``[nodes, N]`` membership matrix, so no
    ``[N, (k + 1)²]`` temporary is built per step. Returns ``θ`` after ``steps`` iterations.
    """
    dim = z1.shape[1]
    eye = torch.eye(dim, dtype=z1.dtype)
    index = torch.stack([node, torch.arange(node.numel())])

    def node_sum(values: Tensor, rows: Tensor) -> Tensor:
        member = torch.sparse_coo_tensor(index, values, (nodes, node.numel()),
                                         check_invariants=False)
        return torch.sparse.mm(member, rows)

    for _ in range(steps):
        p = torch.sigmoid((z1 * weight[node]).sum(dim=1))
        grad = node_sum(p - target, z1) + reg * weight
        hess = node_sum(p * (1 - p), outer).view(nodes, dim, dim) + reg * eye
        step = torch.cholesky_solve(grad.unsqueeze(-1), torch.linalg.cholesky(hess)).squeeze(-1)
        norm = step.norm(dim=1, keepdim=True)
        weight = weight - step * torch.clamp(max_step / norm.clamp_min(1e-30), max=1.0)
    return weight


def fit_tree(x: Tensor, labels: Tensor, num_labels: int, *, split: str = "paper",
             pca_dim: int = 16, reg: float = 0.1, newton_steps: int = 6,
             max_rounds: int = 4) -> AuxiliaryTree:
    """Fit the auxiliary tree on training features ``x[N, d]`` and labels ``labels[N]``.

    Labels are split in equal halves (the left child takes ``⌈size/2⌉``) level by level; each
    level's nodes are fitted together (:func:`newton_logistic`). The initial split of a node sorts
    its labels by their mean PCA feature projected on the node's first principal direction of those
    means (labels without training points sit at the mean); ``split="paper"`` then alternates
    (re-sort by the fitted score ``wᵀz̄_y + b``, highest left, refit) up to ``max_rounds`` times or
    until no label changes side; ``split="code"`` keeps the initial split (see the module
    docstring).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; choose one of {SPLITS}")
    if num_labels < 2:
        raise ValueError("the tree needs at least 2 labels")
    if labels.numel() == 0 or int(labels.max()) >= num_labels or int(labels.min()) < 0:
        raise ValueError(f"labels must be non-empty and lie in 0..{num_labels - 1}")
    mean, components = pca(x, pca_dim)
    z = ((x - mean) @ components).double()
    z1 = torch.cat([z, torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)
    outer = (z1[:, :, None] * z1[:, None, :]).reshape(z1.shape[0], -1)
    counts = torch.bincount(labels, minlength=num_labels).double()
    emb = torch.zeros(num_labels, pca_dim, dtype=torch.float64).index_add_(0, labels, z)
    emb1 = torch.cat([emb, counts[:, None]], dim=1)
    order = np.arange(num_labels)
    lo, hi = np.array([0]), np.array([num_labels])
    levels, path_nodes, path_dirs = [], [], []
    while (hi - lo).max() > 1:
        nodes = lo.size
        sizes = hi - lo
        mid = lo + (sizes + 1) // 2
        node_of_pos = _segment_ids(lo, num_labels)
        node_of_label = np.empty(num_labels, dtype=np.int64)
        node_of_label[order] = node_of_pos
        direction = _top_directions(emb, torch.from_numpy(node_of_label), nodes)
        key = (emb * direction[torch.from_numpy(node_of_label)]).sum(dim=1).numpy()
        order = _resort(order, node_of_pos, key)
        split_mask = sizes > 1
        weight = torch.zeros(nodes, pca_dim + 1, dtype=torch.float64)
        rounds = max_rounds if split == "paper" else 1
        point_node = torch.from_numpy(node_of_label)[labels]
        for round_ in range(rounds):
            position = np.empty(num_labels, dtype=np.int64)
            position[order] = np.arange(num_labels)
            left_label = torch.from_numpy(position < mid[node_of_label])
            weight = newton_logistic(z1, outer, point_node, left_label[labels].double(), nodes,
                                     weight, reg, newton_steps)
            if round_ == rounds - 1:
                break
            score = (emb1 * weight[torch.from_numpy(node_of_label)]).sum(dim=1).numpy()
            new_order = _resort(order, node_of_pos, -score)
            new_position = np.empty_like(position)
            new_position[new_order] = np.arange(num_labels)
            if np.array_equal(new_position < mid[node_of_label], position < mid[node_of_label]):
                break
            order = new_order
        position = np.empty(num_labels, dtype=np.int64)
        position[order] = np.arange(num_labels)
        goes_left = position < mid[node_of_label]
        # children at the next depth, in position order
        child_lo = np.sort(np.concatenate([lo, mid[split_mask]]))
        left = np.searchsorted(child_lo, lo)
        right = np.where(split_mask, np.searchsorted(child_lo, mid), left)
        levels.append(TreeLevel(
            weight=weight[:, :pca_dim].float(), bias=weight[:, pca_dim].float(),
            splits=torch.from_numpy(split_mask), left=torch.from_numpy(left),
            right=torch.from_numpy(right)))
        path_nodes.append(node_of_label)
        path_dirs.append(np.where(split_mask[node_of_label], np.where(goes_left, 1, -1), 0))
        lo, hi = child_lo, np.append(child_lo[1:], num_labels)
    return AuxiliaryTree(
        levels=tuple(levels), order=torch.from_numpy(order),
        path_node=torch.from_numpy(np.stack(path_nodes)),
        path_dir=torch.from_numpy(np.stack(path_dirs)).to(torch.int8),
        mean=mean, components=components)


class TreeSampler:
    """An :class:`AuxiliaryTree` as a noise distribution over main features ``x``."""

    def __init__(self, tree: AuxiliaryTree) -> None:
        self.tree = tree
        self.num_labels = tree.num_labels

    def sample(self, x: Tensor, num: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.tree.sample(self.tree.project(x), num, generator)

    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        return self.tree.log_prob(self.tree.project(x), labels)

    def log_prob_all(self, x: Tensor) -> Tensor:
        return self.tree.log_prob_all(self.tree.project(x))
