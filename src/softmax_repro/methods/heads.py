"""Output layers of a language model: hidden states ``h[N, H]`` in, log-probabilities ``[N, V]``
out.

Every head is an :class:`OutputHead`: ``forward(h)`` returns log-probabilities over the vocabulary
(natural log, rows sum to 1 after ``exp``) and ``nll(h, target)`` the per-token negative
log-likelihood in nats, which a head may compute without materialising all ``V`` columns.

- :class:`SoftmaxHead`: one output embedding per word, a full softmax.
- :class:`KerBSHead`: Kernelized Bayesian Softmax (Miao et al., 2019): several sense embeddings per
  word, a learned kernel per sense instead of the dot product, ``P(word) = Σ_{senses of word}
  softmax over all senses``, and :meth:`KerBSHead.reallocate` to move senses between words.
- :class:`MixtureOfSoftmaxesHead`: the mixture-of-softmaxes baseline (Yang et al., 2018).
- :class:`AdaptiveSoftmaxHead`: a wrapper of :class:`torch.nn.AdaptiveLogSoftmaxWithLoss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MAX_SENSES = 4
"""Most senses a word may hold (the official KerBS code's bound)."""

MIN_SENSES = 1
"""Fewest senses a word may hold."""

THETA_RAW_RANGE = (-5.0, 4.0)
"""Soft bounds of the raw kernel parameter (θ = exp(θ_raw)), as in the official code."""

CHUNK_ELEMENTS = 2**22
"""Largest ``[rows, columns]`` logit block :meth:`OutputHead.nll` builds at once (16 MB in float32).

glibc serves allocations above 32 MB with fresh ``mmap`` pages that fault on every touch; measured
here, a KerBS head over 20,000 senses ran 2–3× slower per token when its ``[N, S]`` blocks crossed
that size. Splitting the rows keeps every block on the reused heap; rows are independent, so the
result is the same up to float rounding of the smaller matrix products."""

REALLOCATION_ORDERS = ("paper", "code")
"""``paper``: poorly predicted words gain senses first (the paper's text); ``code``: the ascending
sort of the official ``reallocate.py``, which serves the best-predicted frequent words first."""


class OutputHead(nn.Module):
    """Base class: ``forward(h[N, H]) -> log-probabilities[N, V]``; ``nll(h, target[N]) -> [N]``."""

    vocab_size: int

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood (nats) of ``target[N]`` under the head, shape ``[N]``."""
        return -self(h).gather(1, target.unsqueeze(1)).squeeze(1)


def row_chunks(rows: int, columns: int) -> list[slice]:
    """Row slices of ``[rows, columns]`` blocks of at most :data:`CHUNK_ELEMENTS` elements."""
    step = max(1, CHUNK_ELEMENTS // max(columns, 1))
    return [slice(begin, begin + step) for begin in range(0, rows, step)]


def chunked_nll(nll: Callable[[Tensor, Tensor], Tensor], h: Tensor, target: Tensor,
                columns: int) -> Tensor:
    """``nll(h, target)`` row block by row block (see :data:`CHUNK_ELEMENTS`), shape ``[N]``."""
    parts = row_chunks(h.shape[0], columns)
    if len(parts) == 1:
        return nll(h, target)
    return torch.cat([nll(h[part], target[part]) for part in parts])


class SoftmaxHead(OutputHead):
    """A linear layer and a full softmax: ``log_softmax(h W^T + b)``."""

    def __init__(self, hidden: int, vocab: int, bias: bool = True) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.proj = nn.Linear(hidden, vocab, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        return F.log_softmax(self.proj(h), dim=-1)

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        return chunked_nll(self._nll, h, target, self.vocab_size)

    def _nll(self, h: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self.proj(h), target, reduction="none")


def soft_clip_theta_raw(theta_raw: Tensor) -> Tensor:
    """The official code's soft clipping of θ_raw into about (−5, 4).

    Identity on [−4, 3]; above 3 it becomes ``4 − exp(3 − x)``; below −4 ``−5 + exp(4 + x)``
    (continuous with slope 1 at the joins).
    """
    low, high = THETA_RAW_RANGE
    upper = high - torch.exp((high - 1.0) - theta_raw)
    lower = low + torch.exp(theta_raw - (low + 1.0))
    return torch.where(theta_raw > high - 1.0, upper,
                       torch.where(theta_raw < low + 1.0, lower, theta_raw))


def kernel_coefficient(theta: Tensor) -> Tensor:
    """``a = 1 / (4 (θ⁻¹ (e^θ − 1) − 1))`` for θ > 0 (``expm1`` for accuracy at small θ)."""
    return 1.0 / (4.0 * (torch.expm1(theta) / theta - 1.0))


class SenseKernel(NamedTuple):
    """Per-sense quantities of the KerBS kernel, computed once per batch.

    ``unit[S, H]``: sense vectors divided by their norms; ``norm[S]``: ``|w| + 1e-7``;
    ``theta[S]``; ``positive_scale[S]``: ``2a·|w|`` with ``a`` from :func:`kernel_coefficient`.
    """

    unit: Tensor
    norm: Tensor
    theta: Tensor
    positive_scale: Tensor


def prepare_kernel(weight: Tensor, theta: Tensor) -> SenseKernel:
    """The :class:`SenseKernel` of senses ``weight[S, H]`` with kernel parameters ``theta[S]``."""
    norm = weight.norm(dim=-1) + 1e-7
    return SenseKernel(weight / norm[:, None], norm, theta, 2.0 * kernel_coefficient(theta) * norm)


def apply_kernel(h: Tensor, kernel: SenseKernel) -> Tensor:
    """Sense logits ``[N, S]`` of hidden states ``h[N, H]`` (see :func:`kernel_logits`)."""
    h_norm = h.norm(dim=-1, keepdim=True) + 1e-7
    cos = (h / h_norm) @ kernel.unit.T
    shape = torch.where(cos > 0, torch.expm1(kernel.theta * cos) * kernel.positive_scale,
                        cos * kernel.norm)
    return shape * h_norm


def kernel_logits(h: Tensor, weight: Tensor, theta: Tensor) -> Tensor:
    """KerBS sense logits ``[N, S]`` for hidden states ``h[N, H]`` and senses ``weight[S, H]``.

    With ``cos = cos(h, w)``: ``2a |h||w| (e^{θ cos} − 1)`` where ``cos > 0``, else the dot product
    ``h·w = |h||w| cos``; ``theta[S] > 0`` and ``a`` from :func:`kernel_coefficient`. As θ → 0 the
    positive branch tends to ``h·w``. As in the official code the norms carry ``+1e-7``; ``cos``
    comes from normalised vectors, and the per-sense factors ``2a|w|`` and ``|w|`` are computed
    once (:func:`prepare_kernel`), which saves full-size ``[N, S]`` passes.
    """
    return apply_kernel(h, prepare_kernel(weight, theta))


def senses_table(sense_word: Tensor, vocab: int) -> tuple[Tensor, Tensor]:
    """Per-word sense indices padded to :data:`MAX_SENSES`.

    Args:
        sense_word: ``[S]`` the word each sense belongs to.
        vocab: number of words ``V``.

    Returns:
        ``(index[V, MAX_SENSES], mask[V, MAX_SENSES])``: sense ids of each word (padding points to
        sense 0) and which entries are real.
    """
    counts = torch.bincount(sense_word, minlength=vocab)
    if counts.numel() != vocab or counts.min() < MIN_SENSES or counts.max() > MAX_SENSES:
        raise ValueError(
            f"every word needs between {MIN_SENSES} and {MAX_SENSES} senses; got counts in "
            f"[{int(counts.min())}, {int(counts.max())}] over {counts.numel()} words "
            f"(vocab={vocab})"
        )
    order = torch.argsort(sense_word, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(sense_word.numel()) - starts[sense_word[order]]
    index = torch.zeros(vocab, MAX_SENSES, dtype=torch.long)
    mask = torch.zeros(vocab, MAX_SENSES, dtype=torch.bool)
    index[sense_word[order], slot] = order
    mask[sense_word[order], slot] = True
    return index, mask


class KerBSHead(OutputHead):
    """Kernelized Bayesian Softmax over multi-sense output embeddings.

    ``log P(w | h) = logsumexp_{s ∈ senses(w)} z_s − logsumexp_{all s} z_s`` with sense logits
    ``z = kernel_logits(h, W, θ) + b``, computed in log space.

    Args:
        hidden: hidden size ``H``.
        vocab: number of words ``V``.
        senses_per_word: every word starts with this many senses (1..4).
        allocation: alternatively, senses per word ``[V]`` (each 1..4).
        kernel: ``learned`` (θ = exp(θ_raw) per sense, θ_raw initialised at 0, soft-clipped) or
            ``dot`` (the θ → 0 limit: plain dot products, no θ parameter).
        bias: add a learned bias per sense (the official code has none).

    During training, :meth:`nll` accumulates the statistics :meth:`reallocate` uses: per sense its
    summed posterior probability at the target (``usage``), per word its count and summed predicted
    probability since the last reallocation, and per word its count over all training so far
    (``word_total``, the frequency that decides who may gain a sense).
    """

    def __init__(
        self,
        hidden: int,
        vocab: int,
        senses_per_word: int | None = None,
        allocation: Sequence[int] | Tensor | None = None,
        kernel: str = "learned",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if (senses_per_word is None) == (allocation is None):
            raise ValueError("give exactly one of senses_per_word= or allocation=")
        if kernel not in ("learned", "dot"):
            raise ValueError(f"kernel={kernel!r} is not allowed; choose 'learned' or 'dot'")
        if allocation is None:
            allocation = [senses_per_word] * vocab
        counts = torch.as_tensor(allocation, dtype=torch.long)
        if counts.shape != (vocab,):
            raise ValueError(f"allocation has shape {tuple(counts.shape)}; expected ({vocab},)")
        sense_word = torch.repeat_interleave(torch.arange(vocab), counts)
        self.vocab_size = vocab
        self.kernel = kernel
        num_senses = sense_word.numel()
        self.weight = nn.Parameter(torch.empty(num_senses, hidden))
        nn.init.uniform_(self.weight, -hidden**-0.5, hidden**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_senses)) if bias else None
        self.theta_raw = nn.Parameter(torch.zeros(num_senses)) if kernel == "learned" else None
        self.register_buffer("sense_word", sense_word)
        index, mask = senses_table(sense_word, vocab)
        self.register_buffer("sense_index", index)
        self.register_buffer("sense_mask", mask)
        self.register_buffer("usage", torch.zeros(num_senses))
        self.register_buffer("word_count", torch.zeros(vocab))
        self.register_buffer("word_prob_sum", torch.zeros(vocab))
        self.register_buffer("word_total", torch.zeros(vocab))

    @property
    def num_senses(self) -> int:
        return self.weight.shape[0]

    def senses_per_word(self) -> Tensor:
        """Current number of senses of every word, ``[V]``."""
        return torch.bincount(self.sense_word, minlength=self.vocab_size)

    def theta(self) -> Tensor:
        """θ per sense ``[S]`` (zeros for the ``dot`` kernel)."""
        if self.theta_raw is None:
            return torch.zeros_like(self.weight[:, 0])
        return torch.exp(soft_clip_theta_raw(self.theta_raw))

    def prepared_kernel(self) -> SenseKernel | None:
        """The learned kernel's per-sense factors (``None`` for the ``dot`` kernel)."""
        return None if self.theta_raw is None else prepare_kernel(self.weight, self.theta())

    def sense_logits(self, h: Tensor, kernel: SenseKernel | None = None) -> Tensor:
        """Sense logits ``z[N, S]``; ``kernel`` from :meth:`prepared_kernel` (made if absent)."""
        if self.theta_raw is None:
            z = h @ self.weight.T
        else:
            z = apply_kernel(h, kernel if kernel is not None else self.prepared_kernel())
        return z if self.bias is None else z + self.bias

    def forward(self, h: Tensor) -> Tensor:
        z = self.sense_logits(h)
        padded = z[:, self.sense_index]  # [N, V, MAX_SENSES]
        padded = padded.masked_fill(~self.sense_mask, float("-inf"))
        return F.log_softmax(torch.logsumexp(padded, dim=-1), dim=-1)

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        kernel = self.prepared_kernel()
        return chunked_nll(lambda hp, tp: self._nll(hp, tp, kernel), h, target, self.num_senses)

    def _nll(self, h: Tensor, target: Tensor, kernel: SenseKernel | None = None) -> Tensor:
        z = self.sense_logits(h, kernel)
        total = torch.logsumexp(z, dim=-1)
        senses = self.sense_index[target]  # [N, MAX_SENSES]
        mask = self.sense_mask[target]
        target_z = z.gather(1, senses).masked_fill(~mask, float("-inf"))
        target_lse = torch.logsumexp(target_z, dim=-1)
        if self.training:
            self._record(target, senses, mask, target_z.detach() - total.detach()[:, None])
        return total - target_lse

    @torch.no_grad()
    def _record(self, target: Tensor, senses: Tensor, mask: Tensor, log_probs: Tensor) -> None:
        """Accumulate reallocation statistics from sense log-probabilities ``[N, MAX_SENSES]``."""
        probs = log_probs.exp().masked_fill(~mask, 0.0)
        self.usage.index_add_(0, senses[mask], probs[mask])
        ones = torch.ones_like(target, dtype=probs.dtype)
        self.word_count.index_add_(0, target, ones)
        self.word_total.index_add_(0, target, ones)
        self.word_prob_sum.index_add_(0, target, probs.sum(dim=1))

    @torch.no_grad()
    def sense_posterior(self, h: Tensor, target: Tensor) -> Tensor:
        """``P(sense | word=target, h)`` over the target's padded senses, ``[N, MAX_SENSES]``."""
        z = self.sense_logits(h).gather(1, self.sense_index[target])
        z = z.masked_fill(~self.sense_mask[target], float("-inf"))
        return torch.softmax(z, dim=-1)

    def reset_statistics(self) -> None:
        """Zero the usage/count/probability accumulators of the current window (not
        ``word_total``)."""
        self.usage.zero_()
        self.word_count.zero_()
        self.word_prob_sum.zero_()

    @torch.no_grad()
    def reallocate(self, max_moves: int, order: str = "paper") -> int:
        """Move the least-used senses to words that need them; returns the number moved.

        Follows the official ``reallocate.py``: words are ranked by
        ``(1 / mean predicted probability) / √count`` over the statistics gathered since the last
        call; only words with fewer than :data:`MAX_SENSES` senses and a training frequency so far
        (``word_total``) above the median may gain one sense each (a median over the last window
        alone is ~0 at small windows and let rare words in); senses are taken in ascending order
        of usage from words that keep at least :data:`MIN_SENSES`. A moved sense keeps its vector,
        θ and bias. The total number of senses never changes. The window's statistics are reset
        afterwards.

        Args:
            max_moves: at most this many senses move (the paper: 0.5% of the vocabulary).
            order: ``paper`` ranks the worst-predicted words first (descending score); ``code``
                ranks ascending, as the official implementation does.
        """
        if order not in REALLOCATION_ORDERS:
            raise ValueError(f"order={order!r} is not allowed; choose one of {REALLOCATION_ORDERS}")
        count = self.word_count.cpu().double()
        inefficiency = (count + 1e-7) / (self.word_prob_sum.cpu().double() + 1e-7)
        score = inefficiency / (count.sqrt() + 1e-7)
        ranked = torch.argsort(score, descending=order == "paper", stable=True).tolist()
        frequency = self.word_total.cpu().double()
        threshold = torch.sort(frequency).values[self.vocab_size - int(self.vocab_size * 0.5)]
        per_word = self.senses_per_word().cpu().tolist()
        sense_word = self.sense_word.cpu().clone()
        donors = torch.argsort(self.usage.cpu(), stable=True).tolist()
        donor_pos = moved = 0
        for word in ranked:
            if moved >= max_moves or donor_pos >= len(donors):
                break
            if per_word[word] >= MAX_SENSES or frequency[word] <= threshold:
                continue
            while donor_pos < len(donors):
                sense = donors[donor_pos]
                donor_pos += 1
                owner = int(sense_word[sense])
                if owner == word or per_word[owner] <= MIN_SENSES:
                    continue
                per_word[owner] -= 1
                per_word[word] += 1
                sense_word[sense] = word
                moved += 1
                break
        self._set_sense_word(sense_word)
        self.reset_statistics()
        return moved

    def _set_sense_word(self, sense_word: Tensor) -> None:
        index, mask = senses_table(sense_word, self.vocab_size)
        device = self.sense_word.device
        self.sense_word.copy_(sense_word.to(device))
        self.sense_index.copy_(index.to(device))
        self.sense_mask.copy_(mask.to(device))


class MixtureOfSoftmaxesHead(OutputHead):
    """Mixture of softmaxes: ``log Σ_k π_k(h) softmax(tanh(P_k h) W^T + b)``.

    Args:
        hidden: hidden size ``H``.
        vocab: number of words ``V``.
        components: number of mixture components ``K`` (the output layer costs ``K`` softmaxes).
    """

    def __init__(self, hidden: int, vocab: int, components: int = 3) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.components = components
        self.prior = nn.Linear(hidden, components)
        self.latent = nn.Linear(hidden, components * hidden)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, h: Tensor) -> Tensor:
        n, hidden = h.shape
        latent = torch.tanh(self.latent(h)).view(n, self.components, hidden)
        log_probs = F.log_softmax(self.decoder(latent), dim=-1)  # [N, K, V]
        log_prior = F.log_softmax(self.prior(h), dim=-1).unsqueeze(-1)
        return torch.logsumexp(log_prior + log_probs, dim=1)


class AdaptiveSoftmaxHead(OutputHead):
    """:class:`torch.nn.AdaptiveLogSoftmaxWithLoss` as a head (word ids sorted by frequency).

    Args:
        hidden: hidden size ``H``.
        vocab: number of words ``V`` (id 0 the most frequent).
        cutoffs: increasing cluster boundaries in ``(0, V)``.
        div_value: how much smaller each tail cluster's projection is.
    """

    def __init__(self, hidden: int, vocab: int, cutoffs: Sequence[int],
                 div_value: float = 4.0) -> None:
        super().__init__()
        self.vocab_size = vocab
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab, list(cutoffs),
                                                      div_value=div_value)

    def forward(self, h: Tensor) -> Tensor:
        return self.adaptive.log_prob(h)

    def nll(self, h: Tensor, target: Tensor) -> Tensor:
        return -self.adaptive(h, target).output


def build_head(name: str, hidden: int, vocab: int, *, senses_per_word: int = 2,
               kernel: str = "learned", mos_components: int = 3,
               cutoffs: Sequence[int] = ()) -> OutputHead:
    """A head by name: ``softmax``, ``kerbs``, ``mos`` or ``adaptive``."""
    if name == "softmax":
        return SoftmaxHead(hidden, vocab)
    if name == "kerbs":
        return KerBSHead(hidden, vocab, senses_per_word=senses_per_word, kernel=kernel)
    if name == "mos":
        return MixtureOfSoftmaxesHead(hidden, vocab, mos_components)
    if name == "adaptive":
        return AdaptiveSoftmaxHead(hidden, vocab, cutoffs)
    raise ValueError(f"head {name!r} is not known; choose softmax, kerbs, mos or adaptive")
