"""Chapter 03: KerBS, Kernelized Bayesian Softmax for text generation (Miao et al. 2019).

Two settings, one LSTM/GRU language model with exchangeable output heads:

- ``synthetic``: a polysemous language (:func:`text.make_polysemous_language`) whose word senses are
  known by construction, drawn afresh for every seed. Measures test NLL on polysemous and
  monosemous target tokens, how well KerBS's senses separate the true senses (adjusted mutual
  information, with a planted-senses positive control), senses allocated per true sense count,
  and a 2-D projection of sense vectors. The allocation runs get a sense budget equal to the true
  number of senses, spread at random over the words (:func:`random_allocation`); the oracle holds
  the true allocation, the positive control of every reallocation test.
- a corpus (``brown`` embedded; ``wikitext2``/``ptb`` from the hub at the ``paper`` profile): test
  perplexity and NLL, validation curves, tokens/s of each head and senses per word against word
  frequency.

Every trained model also reports its validation-NLL curve (``valid_nll_curve`` at ``progress`` =
1/``curve_points`` … 1 of training) and ``val_change_last_fifth``, the absolute change of the
validation NLL over the last fifth of training (the convergence health check).

Methods: ``softmax``; ``mos`` (mixture of softmaxes); ``adaptive`` (adaptive softmax, a speed
reference); ``kerbs`` (two senses per word as the released run, learned kernel, reallocation in
the paper's order); ``kerbs_dot`` (θ → 0: plain dot products, otherwise as ``kerbs``); and on the
sense budget: ``kerbs_fixed`` (random allocation, never moved), ``kerbs_paper_order`` /
``kerbs_code_order`` (random allocation, reallocated in the paper's / the official code's order)
and ``kerbs_oracle`` (the true allocation, never moved). Pseudo-methods without training of their
own: ``oracle`` (Bayes NLL), ``kerbs_untrained_senses`` (sense vectors as initialised) and
``kerbs_planted_senses`` (sense vectors planted at the mean hidden state of each true sense).
``<method>`` rows with metric ``nll_vs_softmax`` (corpus) hold the per-seed difference to the
softmax head. Rows: ``dataset, method, seed, metric, value`` plus ``true_senses`` /
``freq_decile`` / ``progress`` / projection columns where relevant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import adjusted_mutual_info_score
from torch import Tensor

from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_choice,
    check_in_range,
    check_int,
    check_positive,
    check_subset,
    config_factory,
)
from softmax_repro.data import text
from softmax_repro.engine import training
from softmax_repro.engine.language_model import RNNLanguageModel, evaluate_nll, train_lm
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods.heads import (
    MAX_SENSES,
    AdaptiveSoftmaxHead,
    KerBSHead,
    MixtureOfSoftmaxesHead,
    OutputHead,
    SoftmaxHead,
)
from softmax_repro.pipeline import results

CHAPTER = "03_kerbs"
METHODS = ("softmax", "mos", "adaptive", "kerbs", "kerbs_dot", "kerbs_fixed", "kerbs_paper_order",
           "kerbs_code_order", "kerbs_oracle")
CORPORA = ("brown", "wikitext2", "ptb")
CELLS = ("lstm", "gru")
REALLOCATION = {"kerbs": "paper", "kerbs_dot": "paper", "kerbs_fixed": None,
                "kerbs_paper_order": "paper", "kerbs_code_order": "code", "kerbs_oracle": None}
"""Reallocation order of each KerBS variant (``None``: the allocation stays fixed)."""
BUDGET_METHODS = ("kerbs_fixed", "kerbs_paper_order", "kerbs_code_order")
"""KerBS variants that start from :func:`random_allocation` of the true sense budget."""


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 03 settings.

    Attributes:
        synthetic_methods: heads compared on the synthetic polysemous language (all seeds).
        corpus_methods: heads compared on the corpus.
        corpus_num_seeds: the corpus runs use the first this many seeds (all of them if there are
            fewer; 0 skips the corpus).
        corpus: ``brown`` (embedded), ``wikitext2`` or ``ptb`` (hub).
        corpus_files: three local parquet files (train, valid, test) in the hub schema for a hub
            corpus; empty = the hub id.
        vocab_size: corpus vocabulary cap, ``<unk>`` included.
        train_tokens / eval_tokens: corpus tokens used for training / for each of valid and test
            (0 = the whole split).
        corpus_embed / corpus_hidden / corpus_layers / corpus_epochs / corpus_dropout: the
            corpus LM.
        syn_words: words of the synthetic language.
        syn_polysemous_fraction: share of words with 2..``syn_max_senses`` senses.
        syn_max_senses: most true senses of a word (≤ 4).
        syn_branching: successors of each concept in the Markov chain.
        syn_train_tokens / syn_valid_tokens / syn_test_tokens: synthetic stream lengths.
        syn_hidden / syn_epochs: the synthetic LM (embedding size = hidden size, no dropout).
        cell: ``lstm`` or ``gru``.
        batch_size / bptt: contiguous LM batches ``batch_size × bptt``.
        lr: Adam learning rate (cosine schedule).
        curve_points: validation NLL is measured this many times, evenly over training (≥ 5, so
            that the last fifth of training is one interval).
        senses_per_word: KerBS senses every word starts with.
        mos_components: mixture components of ``mos``.
        realloc_every: reallocate every this many optimizer steps.
        realloc_fraction: at most this share of the vocabulary's words gain a sense per
            reallocation (at least one).
        projection_words: polysemous words whose senses are projected to 2-D (first seed).
        threads: torch CPU threads during the chapter (0 = leave torch's setting); these small
            models run fastest on one thread, and several threads on shared cores spin and stall.
    """

    synthetic_methods: tuple[str, ...] = ("softmax", "kerbs", "kerbs_dot", "kerbs_fixed",
                                          "kerbs_paper_order", "kerbs_code_order", "kerbs_oracle")
    corpus_methods: tuple[str, ...] = ("softmax", "mos", "kerbs")
    corpus_num_seeds: int = 5
    corpus: str = "brown"
    corpus_files: tuple[str, ...] = ()
    vocab_size: int = 1000
    train_tokens: int = 40_000
    eval_tokens: int = 10_000
    corpus_embed: int = 64
    corpus_hidden: int = 64
    corpus_layers: int = 1
    corpus_epochs: int = 5
    corpus_dropout: float = 0.0
    syn_words: int = 60
    syn_polysemous_fraction: float = 0.3
    syn_max_senses: int = 4
    syn_branching: int = 3
    syn_train_tokens: int = 50_000
    syn_valid_tokens: int = 5_000
    syn_test_tokens: int = 10_000
    syn_hidden: int = 16
    syn_epochs: int = 8
    cell: str = "lstm"
    batch_size: int = 64
    bptt: int = 10
    lr: float = 1e-2
    curve_points: int = 5
    senses_per_word: int = 2
    mos_components: int = 3
    realloc_every: int = 10
    realloc_fraction: float = 0.05
    projection_words: int = 4
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("synthetic_methods", self.synthetic_methods, METHODS)
        check_subset("corpus_methods", self.corpus_methods, METHODS)
        check_int("corpus_num_seeds", self.corpus_num_seeds, 0)
        check_choice("corpus", self.corpus, CORPORA)
        if self.corpus_files and (self.corpus == "brown" or len(self.corpus_files) != 3):
            raise ConfigError("corpus_files must be empty or 3 parquet paths (train, valid, test) "
                              "of a hub corpus ('wikitext2' or 'ptb')")
        check_int("vocab_size", self.vocab_size, 2)
        check_int("train_tokens", self.train_tokens, 0)
        check_int("eval_tokens", self.eval_tokens, 0)
        for name in ("corpus_embed", "corpus_hidden", "corpus_layers", "corpus_epochs",
                     "syn_words", "syn_branching", "syn_hidden", "syn_epochs", "batch_size",
                     "bptt", "mos_components", "realloc_every", "projection_words"):
            check_int(name, getattr(self, name), 1)
        check_int("syn_train_tokens", self.syn_train_tokens, 100)
        check_int("syn_valid_tokens", self.syn_valid_tokens, 100)
        check_int("syn_test_tokens", self.syn_test_tokens, 100)
        check_int("curve_points", self.curve_points, 5)
        check_int("threads", self.threads, 0)
        check_in_range("corpus_dropout", self.corpus_dropout, 0.0, 0.9)
        check_in_range("syn_polysemous_fraction", self.syn_polysemous_fraction, 0.0, 1.0)
        check_in_range("syn_max_senses", self.syn_max_senses, 2, MAX_SENSES)
        check_in_range("senses_per_word", self.senses_per_word, 1, MAX_SENSES)
        check_in_range("realloc_fraction", self.realloc_fraction, 0.0, 1.0)
        check_choice("cell", self.cell, CELLS)
        check_positive("lr", self.lr)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "corpus_num_seeds": 2, "vocab_size": 300, "train_tokens": 6000,
              "eval_tokens": 2000, "corpus_hidden": 32, "corpus_embed": 16, "corpus_epochs": 2,
              "syn_words": 30, "syn_train_tokens": 6000, "syn_valid_tokens": 1000,
              "syn_test_tokens": 2000, "syn_epochs": 2, "batch_size": 16, "realloc_every": 5},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "corpus_num_seeds": 5, "corpus": "wikitext2",
              "vocab_size": 40_000, "train_tokens": 0, "eval_tokens": 0, "corpus_embed": 400,
              "corpus_hidden": 400, "corpus_layers": 2, "corpus_epochs": 40, "cell": "gru",
              "corpus_dropout": 0.4, "batch_size": 20, "bptt": 35, "lr": 1e-3, "threads": 0,
              "realloc_every": 100, "realloc_fraction": 0.005},
}


make_config = config_factory(Config, PROFILES)


def random_allocation(true_senses: np.ndarray, seed: int) -> np.ndarray:
    """The true sense budget ``Σ true_senses`` spread at random: one sense per word, the rest
    given one at a time to words drawn uniformly among those below :data:`MAX_SENSES`.

    The allocation the budget variants start from: it has the oracle's total but ignores which
    words are polysemous.
    """
    rng = np.random.default_rng(seed)
    allocation = np.ones(true_senses.size, dtype=np.int64)
    for _ in range(int(true_senses.sum()) - true_senses.size):
        open_words = np.flatnonzero(allocation < MAX_SENSES)
        allocation[rng.choice(open_words)] += 1
    return allocation


def build_head(method: str, hidden: int, vocab: int, config: Config,
               allocation: Any = None) -> OutputHead:
    """The output head of ``method``; ``allocation`` (senses per word) for the budget variants
    and the oracle."""
    if method == "softmax":
        return SoftmaxHead(hidden, vocab)
    if method == "mos":
        return MixtureOfSoftmaxesHead(hidden, vocab, config.mos_components)
    if method == "adaptive":
        cutoffs = sorted({c for c in (vocab // 10, vocab // 3) if 0 < c < vocab})
        return AdaptiveSoftmaxHead(hidden, vocab, cutoffs)
    kernel = "dot" if method == "kerbs_dot" else "learned"
    if method in (*BUDGET_METHODS, "kerbs_oracle"):
        if allocation is None:
            raise ValueError(f"{method} needs an allocation (senses per word)")
        return KerBSHead(hidden, vocab, allocation=allocation, kernel=kernel)
    return KerBSHead(hidden, vocab, senses_per_word=config.senses_per_word, kernel=kernel)


def reallocation_hook(model: RNNLanguageModel, method: str,
                      config: Config) -> Callable[[int], None] | None:
    """``before_step`` callback reallocating KerBS senses every ``realloc_every`` steps."""
    order = REALLOCATION.get(method)
    if order is None:
        return None
    head = model.head
    max_moves = max(1, round(config.realloc_fraction * head.vocab_size))

    def hook(step: int) -> None:
        if step > 0 and step % config.realloc_every == 0:
            head.reallocate(max_moves, order=order)

    return hook


def curve_steps(total_steps: int, points: int) -> list[int]:
    """Optimizer steps after which the validation NLL is measured: ``points`` evenly spaced
    fractions of training, the last one the end (step ``total_steps``)."""
    return [round(total_steps * k / points) for k in range(1, points + 1)]


@dataclasses.dataclass
class TrainedModel:
    """A trained LM and what its training measured.

    ``curve``: ``(progress, validation NLL)`` pairs, progress in (0, 1]; ``speed``: training
    tokens per second (validation passes excluded); ``initial``: a CPU copy of the head as
    initialised (the control of :func:`sense_ami`).
    """

    model: RNNLanguageModel
    speed: float
    initial: OutputHead
    curve: list[tuple[float, float]]

    def last_fifth_change(self) -> float:
        """``|valid NLL at the end − valid NLL at 80% of training|`` (nats)."""
        at = dict(self.curve)
        return abs(at[1.0] - at[min(at, key=lambda p: abs(p - 0.8))])


def train_model(config: Config, method: str, seed: int, vocab: int, train: Tensor,
                valid: Tensor, *, embed: int, hidden: int, layers: int, dropout: float,
                epochs: int, device: torch.device, allocation: Any = None) -> TrainedModel:
    """Seed, build and train one LM on ``device``, measuring the validation curve on ``valid``."""
    training.seed_everything(seed)
    head = build_head(method, hidden, vocab, config, allocation)
    initial = copy.deepcopy(head)
    model = RNNLanguageModel(vocab, embed, hidden, head, layers=layers, cell=config.cell,
                             dropout=dropout).to(device)
    train, valid = train.to(device), valid.to(device)
    spec = training.TrainSpec(epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                              optimizer="adam", schedule="cosine")
    total = epochs * text.num_lm_batches(train, config.bptt)
    checkpoints = dict.fromkeys(curve_steps(total, config.curve_points)[:-1])
    realloc = reallocation_hook(model, method, config)
    curve: list[tuple[float, float]] = []
    eval_s = [0.0]

    def before_step(step: int) -> None:
        if step in checkpoints:
            began = time.perf_counter()
            curve.append((step / total, float(evaluate_nll(model, valid, config.bptt).mean())))
            eval_s[0] += time.perf_counter() - began
        if realloc is not None:
            realloc(step)

    log = train_lm(model, train, config.bptt, spec, before_step=before_step)
    curve.append((1.0, float(evaluate_nll(model, valid, config.bptt).mean())))
    tokens = epochs * (train.shape[1] - 1) * train.shape[0]
    return TrainedModel(model, tokens / max(log.wall_s - eval_s[0], 1e-9), initial, curve)


def curve_rows(base: dict[str, Any], trained: TrainedModel) -> list[dict[str, Any]]:
    """Rows of the validation curve and of ``val_change_last_fifth``."""
    rows = [{**base, "metric": "valid_nll_curve", "progress": round(p, 4), "value": v}
            for p, v in trained.curve]
    rows.append({**base, "metric": "val_change_last_fifth", "value": trained.last_fifth_change()})
    return rows


@torch.no_grad()
def hidden_states(model: RNNLanguageModel, data: Tensor, bptt: int) -> Tensor:
    """Hidden states ``[B, L - 1, H]`` predicting ``data[:, 1:]`` (eval mode, state carried)."""
    was_training = model.training
    model.eval()
    state, chunks = None, []
    for x, _ in text.lm_batches(data, bptt):
        h, state = model.features(x, state)
        chunks.append(h)
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def sense_ami(head: KerBSHead, h: Tensor, words: Tensor, concepts: Tensor,
              polysemous: Tensor, min_count: int = 20) -> float:
    """Mean over polysemous words of the adjusted mutual information between the KerBS sense with
    the highest posterior at each occurrence and the true sense (concept).

    Args:
        head: a trained KerBS head.
        h: hidden states ``[N, H]`` predicting the tokens ``words[N]`` whose concepts are
            ``concepts[N]``.
        polysemous: ids of the words with ≥ 2 true senses.
        min_count: words with fewer test occurrences are skipped.

    A word holding one sense scores 0 (its occurrences cannot be told apart).
    """
    scores = []
    for word in polysemous.tolist():
        at = (words == word).nonzero().squeeze(1)
        if at.numel() < min_count:
            continue
        assigned = head.sense_posterior(h[at], words[at]).argmax(dim=1)
        if int(head.senses_per_word()[word]) < 2:
            scores.append(0.0)
            continue
        scores.append(float(adjusted_mutual_info_score(concepts[at].numpy(), assigned.numpy())))
    return float(np.mean(scores)) if scores else float("nan")


def sense_projection(head: KerBSHead, h: Tensor, words: Tensor, concepts: Tensor,
                     polysemous: Tensor, num_words: int) -> list[dict[str, Any]]:
    """2-D PCA, per word, of a word's sense vectors and its mean context per true sense.

    For the ``num_words`` most frequent polysemous words holding ≥ 2 senses, the sense vectors and
    the mean hidden state before each true sense are scaled to unit length (the kernel acts on
    their cosine) and projected on the first two principal axes of those points. Returns one dict
    per point: ``word, kind (sense|context), label, pc1, pc2``.
    """
    counts = torch.bincount(words, minlength=head.vocab_size)
    held = head.senses_per_word()
    candidates = [w for w in polysemous.tolist() if held[w] >= 2 and counts[w] > 0]
    candidates.sort(key=lambda w: -int(counts[w]))
    points: list[dict[str, Any]] = []
    for word in candidates[:num_words]:
        senses = head.sense_index[word][head.sense_mask[word]]
        vectors = [head.weight[senses].detach()]
        labels = [("sense", f"s{i}") for i in range(senses.numel())]
        at = words == word
        for concept in torch.unique(concepts[at]).tolist():
            vectors.append(h[at & (concepts == concept)].mean(dim=0, keepdim=True))
            labels.append(("context", f"c{concept}"))
        matrix = torch.cat(vectors).double()
        matrix = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
        centred = matrix - matrix.mean(dim=0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        coords = centred @ v[:2].T
        for (kind, label), (pc1, pc2) in zip(labels, coords.tolist(), strict=True):
            points.append({"word": f"w{word}", "kind": kind, "label": label, "pc1": pc1,
                           "pc2": pc2})
    return points


def token_group_rows(base: dict[str, Any], nll: Tensor, poly: Tensor) -> list[dict[str, Any]]:
    """Rows of mean NLL (nats) over all target tokens, polysemous and monosemous ones, and the
    gap ``nll_poly − nll_mono``."""
    groups = {"nll": float(nll.mean()), "nll_poly": float(nll[poly].mean()),
              "nll_mono": float(nll[~poly].mean())}
    groups["poly_gap"] = groups["nll_poly"] - groups["nll_mono"]
    return [{**base, "metric": k, "value": v} for k, v in groups.items()]


def planted_senses(h: Tensor, concepts: Tensor, true_senses: np.ndarray) -> KerBSHead:
    """The positive control of the sense-recovery test: a head whose senses are planted.

    A dot-product KerBS head with the true allocation, so sense ``s`` is concept ``s`` (both are
    numbered word by word), whose vector is the mean hidden state ``h[N, H]`` before concept ``s``
    and whose bias is ``−|mean|²/2``: the posterior over a word's senses then picks the nearest
    class mean. If even these senses do not recover the true senses, the hidden states do not
    carry them and :func:`sense_ami` cannot show a trained head doing so.
    """
    num_concepts = int(true_senses.sum())
    head = KerBSHead(h.shape[1], true_senses.size, allocation=true_senses.tolist(), kernel="dot")
    sums = torch.zeros(num_concepts, h.shape[1]).index_add_(0, concepts, h)
    counts = torch.bincount(concepts, minlength=num_concepts).float()
    means = sums / counts.clamp_min(1.0)[:, None]
    with torch.no_grad():
        head.weight.copy_(means)
        head.bias.copy_(torch.where(counts > 0, -0.5 * means.pow(2).sum(dim=1),
                                    torch.full_like(counts, -1e4)))
    return head


def synthetic_data(config: Config, seed: int) -> dict[str, Any]:
    """The language of ``seed`` and its batched train / valid / test text (with concepts)."""
    language = text.make_polysemous_language(config.syn_words, config.syn_polysemous_fraction,
                                             config.syn_max_senses, config.syn_branching,
                                             seed=10_000 + seed)
    out: dict[str, Any] = {"language": language}
    for split, length, offset in (("train", config.syn_train_tokens, 20_000),
                                  ("valid", config.syn_valid_tokens, 40_000),
                                  ("test", config.syn_test_tokens, 30_000)):
        words, concepts = text.sample_text(language, length, seed=offset + seed)
        out[split] = text.batchify(words, config.batch_size)
        out[f"{split}_concepts"] = text.batchify(concepts, config.batch_size)[:, 1:].reshape(-1)
    return out


def run_synthetic(config: Config, method: str, seed: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """One synthetic-language run: rows of NLL per token group, curve, senses and speed."""
    data = synthetic_data(config, seed)
    language, test = data["language"], data["test"]
    allocation = None
    if method in BUDGET_METHODS:
        allocation = random_allocation(language.senses, seed=50_000 + seed)
    elif method == "kerbs_oracle":
        allocation = language.senses
    trained = train_model(config, method, seed, language.num_words, data["train"], data["valid"],
                          embed=config.syn_hidden, hidden=config.syn_hidden, layers=1,
                          dropout=0.0, epochs=config.syn_epochs, device=device,
                          allocation=None if allocation is None else allocation.tolist())
    model = trained.model.cpu()
    nll = evaluate_nll(model, test, config.bptt).reshape(-1)
    targets = test[:, 1:].reshape(-1)
    senses = torch.from_numpy(language.senses)
    poly = senses[targets] >= 2
    base = {"dataset": "synthetic", "method": method, "seed": seed}
    rows = [*token_group_rows(base, nll, poly),
            {**base, "metric": "tokens_per_s", "value": trained.speed},
            *curve_rows(base, trained)]
    if method == "softmax":
        oracle = text.oracle_nll(language, test).reshape(-1)
        rows += token_group_rows({**base, "method": "oracle"}, oracle, poly)
    if not isinstance(model.head, KerBSHead):
        return rows
    head = model.head
    h = hidden_states(model, test, config.bptt).reshape(targets.numel(), -1)
    polysemous = (senses >= 2).nonzero().squeeze(1)
    concepts = data["test_concepts"]
    rows.append({**base, "metric": "sense_ami",
                 "value": sense_ami(head, h, targets, concepts, polysemous)})
    if method == "kerbs":
        initial = trained.initial
        initial.load_state_dict({k: v.cpu() for k, v in head.state_dict().items()
                                 if k not in ("weight", "bias", "theta_raw")}, strict=False)
        rows.append({**base, "method": "kerbs_untrained_senses", "metric": "sense_ami",
                     "value": sense_ami(initial, h, targets, concepts, polysemous)})
        train_h = hidden_states(model, data["train"], config.bptt).reshape(-1, h.shape[1])
        planted = planted_senses(train_h, data["train_concepts"], language.senses)
        rows.append({**base, "method": "kerbs_planted_senses", "metric": "sense_ami",
                     "value": sense_ami(planted, h, targets, concepts, polysemous)})
    held = head.senses_per_word().cpu()
    for true in sorted(set(language.senses.tolist())):
        rows.append({**base, "metric": "senses_held", "true_senses": true,
                     "value": float(held[senses == true].float().mean())})
    if method == "kerbs" and seed == config.seeds[0]:
        for point in sense_projection(head, h, targets, concepts, polysemous,
                                      config.projection_words):
            coords = {"pc1": point.pop("pc1"), "pc2": point.pop("pc2")}
            rows.extend({**base, **point, "metric": k, "value": v} for k, v in coords.items())
    return rows


def load_corpus(config: Config) -> dict[str, list[str]]:
    """Train/valid/test token streams of the configured corpus (capped by the config)."""
    if config.corpus == "brown":
        caps = {"train": config.train_tokens, "valid": config.eval_tokens,
                "test": config.eval_tokens}
        return text.brown_splits(max_tokens={k: v for k, v in caps.items() if v > 0})
    streams = text.hub_text_splits(config.corpus, config.corpus_files or None)
    caps = {"train": config.train_tokens, "valid": config.eval_tokens, "test": config.eval_tokens}
    return {k: v[: caps[k]] if caps[k] > 0 else v for k, v in streams.items()}


def run_corpus(config: Config, method: str, seed: int, vocab: text.Vocabulary,
               data: dict[str, Tensor], device: torch.device) -> list[dict[str, Any]]:
    """One corpus run: rows of valid/test perplexity and NLL, the validation curve, speed and
    senses per frequency decile."""
    train = text.batchify(data["train"], config.batch_size)
    valid = text.batchify(data["valid"], config.batch_size)
    trained = train_model(config, method, seed, len(vocab), train, valid,
                          embed=config.corpus_embed, hidden=config.corpus_hidden,
                          layers=config.corpus_layers, dropout=config.corpus_dropout,
                          epochs=config.corpus_epochs, device=device)
    model = trained.model
    base = {"dataset": config.corpus, "method": method, "seed": seed}
    rows = [{**base, "metric": "tokens_per_s", "value": trained.speed}, *curve_rows(base, trained)]
    for split in ("valid", "test"):
        batches = text.batchify(data[split], config.batch_size).to(device)
        nll = float(evaluate_nll(model, batches, config.bptt).double().mean())
        prefix = "" if split == "test" else "valid_"
        rows.append({**base, "metric": f"{prefix}ppl", "value": math.exp(nll)})
        rows.append({**base, "metric": f"{prefix}nll", "value": nll})
    if isinstance(model.head, KerBSHead):
        held = model.head.senses_per_word().cpu().float()
        deciles = np.array_split(np.arange(len(vocab)), 10)  # ids are sorted by frequency
        for i, ids in enumerate(deciles):
            rows.append({**base, "metric": "senses_per_word", "freq_decile": i,
                         "value": float(held[torch.from_numpy(ids)].mean())})
    return rows


def versus_softmax_rows(rows: list[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """Per-seed ``nll_vs_softmax`` rows: each method's test NLL minus the softmax head's (same
    dataset and seed). The MoS health check reads them."""
    nll = {(r["method"], r["seed"]): r["value"] for r in rows
           if r["dataset"] == dataset and r["metric"] == "nll"}
    return [{"dataset": dataset, "method": method, "seed": seed, "metric": "nll_vs_softmax",
             "value": value - nll[("softmax", seed)]}
            for (method, seed), value in nll.items()
            if method != "softmax" and ("softmax", seed) in nll]


def projection_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The sense-projection points of ``rows`` as ``word, kind, label, pc1, pc2``."""
    points = rows[rows["metric"].isin(["pc1", "pc2"])]
    return (points.pivot_table(index=["word", "kind", "label"], columns="metric", values="value")
            .reset_index())


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every synthetic (method, seed) run, then every corpus (method, seed) run; rows written."""
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()
    corpus_seeds = config.seeds[: config.corpus_num_seeds]
    grid = [{"dataset": "synthetic", "method": m, "seed": s}
            for m in config.synthetic_methods for s in config.seeds]
    grid += [{"dataset": config.corpus, "method": m, "seed": s}
             for m in config.corpus_methods for s in corpus_seeds]
    corpus: dict[str, Any] = {}
    if corpus_seeds:
        with timer("data"):
            streams = load_corpus(config)
            vocab = text.Vocabulary.build(streams["train"], config.vocab_size)
            corpus = {"vocab": vocab, "data": {k: vocab.encode(v) for k, v in streams.items()}}

    def run_one(run: dict[str, Any]) -> list[dict[str, Any]]:
        if run["dataset"] == "synthetic":
            return run_synthetic(config, run["method"], run["seed"], device)
        return run_corpus(config, run["method"], run["seed"], corpus["vocab"], corpus["data"],
                          device)

    def timed(run: dict[str, Any]) -> list[dict[str, Any]]:
        with timer("synthetic" if run["dataset"] == "synthetic" else "corpus"):
            return run_one(run)

    with training.cpu_threads(config.threads):
        rows = training.run_grid(grid, timed, chapter=CHAPTER)
    rows = list(rows) + versus_softmax_rows(rows, config.corpus)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
