"""Timing ratios of the library's hot paths against plain PyTorch (``make bench``).

Each figure is a ratio of two timings measured in the same process. The two are interleaved
(``a b``, then ``b a``, ...) over :data:`REPEATS` rounds, each round gives one ratio, and the
figure is the median of those ratios: a burst of load from another process hits one or two
rounds, not the figure. The spread (the interquartile range of the per-round ratios, relative to
the median) is reported beside each figure, and a figure whose spread exceeds :data:`MAX_SPREAD`
is flagged as measured on a machine too busy to trust it. Prints a table and writes
``results/bench.json`` (figures, spreads, flags and the load average before and after).

Budgets (issue 7): shared loop ≥ 0.9× a bare loop's samples/s; Balanced Softmax / PC-softmax
training step ≤ 1.05× one with ``F.cross_entropy`` (the loss alone is reported too); KerBS head
≤ K× + 20% of the full softmax; the adaptive softmax's speed-up is reported; tensor-resident
batches vs a per-sample ``DataLoader``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from softmax_repro.engine import training
from softmax_repro.engine.models import CNN1D, MLP
from softmax_repro.methods import heads, losses

ROOT = Path(__file__).resolve().parents[1]
REPEATS = int(os.environ.get("BENCH_REPEATS", "11"))
"""Interleaved rounds per figure (``BENCH_REPEATS``; odd, so the median is one round's ratio)."""
MAX_SPREAD = 0.10
"""Largest interquartile range of the per-round ratios, relative to their median, for a figure to
be trusted; above it the figure is flagged (re-run on a quieter machine)."""


@dataclasses.dataclass(frozen=True)
class Ratio:
    """Per-round ratios ``t_a / t_b`` of two interleaved timings, summarised robustly."""

    rounds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def spread(self) -> float:
        """Interquartile range of the rounds, relative to the median."""
        if len(self.rounds) < 4:
            return (max(self.rounds) - min(self.rounds)) / self.median
        q1, _, q3 = statistics.quantiles(self.rounds, n=4)
        return (q3 - q1) / self.median

    @property
    def too_wide(self) -> bool:
        return self.spread > MAX_SPREAD


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_ratio(a: Callable[[], None], b: Callable[[], None],
                      repeats: int = REPEATS) -> Ratio:
    """``t_a / t_b`` per round over ``repeats`` rounds, alternating which of the two runs first
    (after one warm-up of each)."""
    a(), b()  # warm-up
    rounds = []
    for i in range(repeats):
        if i % 2 == 0:
            ta, tb = _seconds(a), _seconds(b)
        else:
            tb, ta = _seconds(b), _seconds(a)
        rounds.append(ta / tb)
    return Ratio(tuple(rounds))


def bench_training_loop() -> dict[str, Ratio]:
    """The shared ``fit_classifier`` vs a hand-written loop: same MLP, data, batch size, epochs."""
    x, y = torch.randn(20_000, 40), torch.randint(0, 10, (20_000,))
    spec = training.TrainSpec(epochs=2, batch_size=256, lr=0.05)

    def shared() -> None:
        torch.manual_seed(0)
        training.fit_classifier(MLP(40, 256, 10), F.cross_entropy, x, y, spec, seed=0,
                                device=torch.device("cpu"))

    def bare() -> None:
        torch.manual_seed(0)
        model = MLP(40, 256, 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            for idx in torch.randperm(x.shape[0]).split(256):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    return {"shared_loop_speed_vs_bare": interleaved_ratio(bare, shared)}


def bench_balanced_softmax_step() -> dict[str, Ratio]:
    """A training step of chapter 01's model with Balanced Softmax vs with ``F.cross_entropy``.

    The budget's figure: ``CNN1D`` on MNIST-1D-shaped inputs ``[N, 1, 40]``, 10 classes, batch 128
    (chapter 01's settings), one epoch of 4,096 examples through ``fit_classifier``. PC-softmax
    trains with the same loss object (:func:`mutual_information.training_loss`).
    """
    x, y = torch.randn(4096, 1, 40), torch.randint(0, 10, (4096,))
    spec = training.TrainSpec(epochs=1, batch_size=128, lr=0.1)
    balanced = losses.BalancedSoftmaxLoss(torch.logspace(3, 1, 10).round())

    def step(loss_fn) -> Callable[[], None]:
        def run() -> None:
            torch.manual_seed(0)
            training.fit_classifier(CNN1D(10), loss_fn, x, y, spec, seed=0,
                                    device=torch.device("cpu"))
        return run

    return {"balanced_softmax_step_vs_ce": interleaved_ratio(step(balanced), step(F.cross_entropy))}


def bench_losses() -> dict[str, Ratio]:
    """The loss alone: forward+backward of Balanced Softmax vs ``F.cross_entropy`` on [4096, 100]
    logits. Its one extra ``[B, C]`` addition costs ~20–30% of a bare CE; informative, not the
    budget (see :func:`bench_balanced_softmax_step`)."""
    logits = torch.randn(4096, 100, requires_grad=True)
    target = torch.randint(0, 100, (4096,))
    balanced = losses.BalancedSoftmaxLoss(torch.randint(1, 500, (100,)))

    def step(loss_fn) -> Callable[[], None]:
        def run() -> None:
            for _ in range(50):
                loss_fn(logits, target).backward()
        return run

    return {"balanced_softmax_loss_only_vs_ce": interleaved_ratio(step(balanced),
                                                        step(F.cross_entropy))}


def bench_heads(hidden: int = 256, vocab: int = 10_000, batch: int = 700) -> dict[str, Ratio]:
    """Forward+backward of each output head vs the full softmax at the same vocabulary.

    ``kerbs_dot_*`` isolates the cost of K× more output vectors from the learned kernel's extra
    element-wise passes over the ``[N, K·V]`` logits (about 20 per forward+backward, against about
    6 for a softmax's cross-entropy)."""
    h = torch.randn(batch, hidden)
    target = torch.randint(0, vocab, (batch,))

    def step(head: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for _ in range(5):
                head.nll(h, target).mean().backward()
        return run

    full = step(heads.SoftmaxHead(hidden, vocab))
    out = {}
    for k in (1, 2, 4):
        out[f"kerbs_k{k}_cost_vs_softmax"] = interleaved_ratio(
            step(heads.KerBSHead(hidden, vocab, senses_per_word=k)), full)
    for k in (1, 2, 4):  # θ → 0: the same head without the kernel's element-wise work
        dot = heads.KerBSHead(hidden, vocab, senses_per_word=k, kernel="dot")
        out[f"kerbs_dot_k{k}_cost_vs_softmax"] = interleaved_ratio(step(dot), full)
    adaptive = heads.AdaptiveSoftmaxHead(hidden, vocab, cutoffs=[2000, 6000])
    out["adaptive_softmax_speedup"] = interleaved_ratio(full, step(adaptive))
    return out


def bench_data_pipeline() -> dict[str, Ratio]:
    """One epoch of batches: tensor-resident index batches vs a per-sample ``DataLoader``."""
    x, y = torch.randn(20_000, 40), torch.randint(0, 10, (20_000,))
    generator = torch.Generator().manual_seed(0)

    def tensors() -> None:
        for idx in training.tensor_batches(x.shape[0], 256, generator):
            x[idx], y[idx]

    def loader() -> None:
        for _ in DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True):
            pass

    return {"tensor_batches_speedup_vs_dataloader": interleaved_ratio(loader, tensors)}


def report(figures: dict[str, Ratio], load_before: float, load_after: float) -> dict:
    """The table printed and the JSON written: figures, spreads, flags, load."""
    flagged = [name for name, r in figures.items() if r.too_wide]
    return {
        "threads": torch.get_num_threads(),
        "repeats": REPEATS,
        "max_spread": MAX_SPREAD,
        "load_average_1min": {"before": load_before, "after": load_after},
        "ratios": {name: r.median for name, r in figures.items()},
        "spread": {name: round(r.spread, 4) for name, r in figures.items()},
        "flagged_too_wide": flagged,
    }


def main() -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    load_before = os.getloadavg()[0]
    figures: dict[str, Ratio] = {}
    for bench in (bench_training_loop, bench_balanced_softmax_step, bench_losses, bench_heads,
                  bench_data_pipeline):
        figures.update(bench())
    result = report(figures, load_before, os.getloadavg()[0])
    width = max(map(len, figures))
    print(f"{'figure':<{width}}  median  spread (IQR/median)")
    for name, ratio in figures.items():
        flag = "  <- too wide: machine busy, re-run" if ratio.too_wide else ""
        print(f"{name:<{width}}  {ratio.median:6.2f}  {ratio.spread:6.1%}{flag}")
    load_after = result["load_average_1min"]["after"]
    print(f"load average (1 min): {load_before:.2f} before, {load_after:.2f} after, on "
          f"{os.cpu_count()} cores; {REPEATS} interleaved rounds per figure")
    if result["flagged_too_wide"]:
        print(f"warning: {len(result['flagged_too_wide'])} figure(s) spread more than "
              f"{MAX_SPREAD:.0%}; do not quote them")
    out = ROOT / "results" / "bench.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
