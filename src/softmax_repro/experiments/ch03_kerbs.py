"""Chapter 03: KerBS, Kernelized Bayesian Softmax for text generation (Miao et al. 2019).

Two settings, one LSTM/GRU language model with exchangeable output heads:

- ``synthetic``: a polysemous language (:func:`text.make_polysemous_language`) whose word senses are
  known by construction, drawn afresh for every seed. Measures test NLL on polysemous and
  monosemous target tokens, how well KerBS's senses separate the true senses (adjusted mutual
  information), senses allocated per true sense count, and a 2-D projection of sense vectors.
- a corpus (``brown`` embedded; ``wikitext2``/``ptb`` from the hub at the ``paper`` profile): test
  perplexity, tokens/s of each head and senses per word against word frequency.

Methods: ``softmax``; ``mos`` (mixture of softmaxes); ``kerbs`` (learned kernel, reallocation in the
paper's order); ``kerbs_code_order`` (reallocation in the official code's order); ``kerbs_fixed``
(no reallocation); ``kerbs_dot`` (θ → 0: plain dot products, reallocation as ``kerbs``);
``adaptive`` (adaptive softmax, a speed reference). Rows: ``dataset, method, seed, metric, value``
plus ``true_senses`` / ``freq_decile`` / projection columns where relevant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
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
)
from softmax_repro.config import (
    make_config as _make_config,
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
METHODS = ("softmax", "mos", "kerbs", "kerbs_code_order", "kerbs_fixed", "kerbs_dot", "adaptive")
CORPORA = ("brown", "wikitext2", "ptb")
CELLS = ("lstm", "gru")
REALLOCATION = {"kerbs": "paper", "kerbs_code_order": "code", "kerbs_fixed": None,
                "kerbs_dot": "paper"}
"""Reallocation order of each KerBS variant (``None``: the allocation stays fixed)."""


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
        syn_train_tokens / syn_test_tokens: synthetic stream lengths.
        syn_hidden / syn_epochs: the synthetic LM (embedding size = hidden size, no dropout).
        cell: ``lstm`` or ``gru``.
        batch_size / bptt: contiguous LM batches ``batch_size × bptt``.
        lr: Adam learning rate (cosine schedule).
        senses_per_word: KerBS senses every word starts with.
        mos_components: mixture components of ``mos``.
        realloc_every: reallocate every this many optimizer steps.
        realloc_fraction: at most this share of the vocabulary's words gain a sense per
            reallocation (at least one).
        projection_words: polysemous words whose senses are projected to 2-D (first seed).
        threads: torch CPU threads during the chapter (0 = leave torch's setting); these small
            models run fastest on one thread, and several threads on shared cores spin and stall.
    """

    synthetic_methods: tuple[str, ...] = ("softmax", "mos", "kerbs", "kerbs_code_order",
                                          "kerbs_fixed", "kerbs_dot")
    corpus_methods: tuple[str, ...] = ("softmax", "mos", "kerbs", "adaptive")
    corpus_num_seeds: int = 3
    corpus: str = "brown"
    corpus_files: tuple[str, ...] = ()
    vocab_size: int = 2000
    train_tokens: int = 100_000
    eval_tokens: int = 20_000
    corpus_embed: int = 64
    corpus_hidden: int = 64
    corpus_layers: int = 1
    corpus_epochs: int = 1
    corpus_dropout: float = 0.0
    syn_words: int = 60
    syn_polysemous_fraction: float = 0.3
    syn_max_senses: int = 4
    syn_branching: int = 3
    syn_train_tokens: int = 100_000
    syn_test_tokens: int = 10_000
    syn_hidden: int = 16
    syn_epochs: int = 4
    cell: str = "lstm"
    batch_size: int = 64
    bptt: int = 20
    lr: float = 1e-2
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
        check_int("syn_test_tokens", self.syn_test_tokens, 100)
        check_int("threads", self.threads, 0)
        check_in_range("corpus_dropout", self.corpus_dropout, 0.0, 0.9)
        check_in_range("syn_polysemous_fraction", self.syn_polysemous_fraction, 0.0, 1.0)
        check_in_range("syn_max_senses", self.syn_max_senses, 2, MAX_SENSES)
        check_in_range("senses_per_word", self.senses_per_word, 1, MAX_SENSES)
        check_in_range("realloc_fraction", self.realloc_fraction, 0.0, 1.0)
        check_choice("cell", self.cell, CELLS)
        check_positive("lr", self.lr)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "corpus_num_seeds": 1, "vocab_size": 300, "train_tokens": 6000,
              "eval_tokens": 2000, "corpus_hidden": 32, "corpus_embed": 16,
              "syn_words": 30, "syn_train_tokens": 6000, "syn_test_tokens": 2000,
              "syn_epochs": 2, "batch_size": 16, "realloc_every": 5},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": (0, 1, 2, 3, 4), "corpus_num_seeds": 5, "corpus": "wikitext2",
              "vocab_size": 40_000, "train_tokens": 0, "eval_tokens": 0, "corpus_embed": 400,
              "corpus_hidden": 400, "corpus_layers": 2, "corpus_epochs": 40, "cell": "gru",
              "corpus_dropout": 0.4, "batch_size": 20, "bptt": 35, "lr": 1e-3, "threads": 0,
              "realloc_every": 100, "realloc_fraction": 0.005},
}


def make_config(profile: str = "cpu", seeds: Any = None, device: str = "auto",
                overrides: dict[str, Any] | None = None) -> Config:
    """A validated :class:`Config` from a profile plus overrides."""
    return _make_config(Config, PROFILES, profile, seeds, device, overrides)


def build_head(method: str, hidden: int, vocab: int, config: Config) -> OutputHead:
    """The output head of ``method``."""
    if method == "softmax":
        return SoftmaxHead(hidden, vocab)
    if method == "mos":
        return MixtureOfSoftmaxesHead(hidden, vocab, config.mos_components)
    if method == "adaptive":
        cutoffs = sorted({c for c in (vocab // 10, vocab // 3) if 0 < c < vocab})
        return AdaptiveSoftmaxHead(hidden, vocab, cutoffs)
    kernel = "dot" if method == "kerbs_dot" else "learned"
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


def train_model(config: Config, method: str, seed: int, vocab: int, train: Tensor, *,
                embed: int, hidden: int, layers: int, dropout: float, epochs: int,
                device: torch.device) -> tuple[RNNLanguageModel, float, OutputHead]:
    """Seed, build and train one LM on ``device``.

    Returns the model, its training tokens per second and a CPU copy of its head as initialised
    (the control of :func:`sense_ami`: untrained sense vectors)."""
    training.seed_everything(seed)
    head = build_head(method, hidden, vocab, config)
    initial = copy.deepcopy(head)
    model = RNNLanguageModel(vocab, embed, hidden, head, layers=layers, cell=config.cell,
                             dropout=dropout).to(device)
    train = train.to(device)
    spec = training.TrainSpec(epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                              optimizer="adam", schedule="cosine")
    log = train_lm(model, train, config.bptt, spec,
                   before_step=reallocation_hook(model, method, config))
    tokens = epochs * (train.shape[1] - 1) * train.shape[0]
    return model, tokens / log.wall_s, initial


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


def run_synthetic(config: Config, method: str, seed: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """One synthetic-language run: rows of NLL per token group, senses and speed."""
    language = text.make_polysemous_language(config.syn_words, config.syn_polysemous_fraction,
                                             config.syn_max_senses, config.syn_branching,
                                             seed=10_000 + seed)
    train_words, _ = text.sample_text(language, config.syn_train_tokens, seed=20_000 + seed)
    test_words, test_concepts = text.sample_text(language, config.syn_test_tokens,
                                                 seed=30_000 + seed)
    train = text.batchify(train_words, config.batch_size)
    test = text.batchify(test_words, config.batch_size)
    concepts = text.batchify(test_concepts, config.batch_size)[:, 1:].reshape(-1)
    model, speed, initial = train_model(config, method, seed, language.num_words, train,
                                        embed=config.syn_hidden, hidden=config.syn_hidden,
                                        layers=1, dropout=0.0, epochs=config.syn_epochs,
                                        device=device)
    model.cpu()
    nll = evaluate_nll(model, test, config.bptt).reshape(-1)
    targets = test[:, 1:].reshape(-1)
    senses = torch.from_numpy(language.senses)
    poly = senses[targets] >= 2
    base = {"dataset": "synthetic", "method": method, "seed": seed}
    rows = [*token_group_rows(base, nll, poly), {**base, "metric": "tokens_per_s", "value": speed}]
    if method == "softmax":
        oracle = text.oracle_nll(language, test).reshape(-1)
        rows += token_group_rows({**base, "method": "oracle"}, oracle, poly)
    if isinstance(model.head, KerBSHead):
        head = model.head
        h = hidden_states(model, test, config.bptt).reshape(targets.numel(), -1)
        polysemous = (senses >= 2).nonzero().squeeze(1)
        rows.append({**base, "metric": "sense_ami",
                     "value": sense_ami(head, h, targets, concepts, polysemous)})
        if method == "kerbs":
            initial.load_state_dict({k: v.cpu() for k, v in head.state_dict().items()
                                     if k not in ("weight", "bias", "theta_raw")}, strict=False)
            rows.append({**base, "method": "kerbs_untrained_senses", "metric": "sense_ami",
                         "value": sense_ami(initial, h, targets, concepts, polysemous)})
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
    """One corpus run: rows of valid/test perplexity, speed and senses per frequency decile."""
    train = text.batchify(data["train"], config.batch_size)
    model, speed, _ = train_model(config, method, seed, len(vocab), train,
                               embed=config.corpus_embed, hidden=config.corpus_hidden,
                               layers=config.corpus_layers, dropout=config.corpus_dropout,
                               epochs=config.corpus_epochs, device=device)
    base = {"dataset": config.corpus, "method": method, "seed": seed}
    rows = [{**base, "metric": "tokens_per_s", "value": speed}]
    for split in ("valid", "test"):
        batches = text.batchify(data[split], config.batch_size).to(device)
        nll = evaluate_nll(model, batches, config.bptt)
        name = "ppl" if split == "test" else "valid_ppl"
        rows.append({**base, "metric": name, "value": math.exp(float(nll.double().mean()))})
    if isinstance(model.head, KerBSHead):
        held = model.head.senses_per_word().cpu().float()
        deciles = np.array_split(np.arange(len(vocab)), 10)  # ids are sorted by frequency
        for i, ids in enumerate(deciles):
            rows.append({**base, "metric": "senses_per_word", "freq_decile": i,
                         "value": float(held[torch.from_numpy(ids)].mean())})
    return rows


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

    with training.cpu_threads(config.threads), timer("train+evaluate"):
        rows = training.run_grid(grid, run_one, chapter=CHAPTER)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)
