"""Timing ratios of the library's hot paths against plain PyTorch (``make bench``).

Each figure is a ratio of two timings measured in the same process, interleaved over repeats, so
machine noise largely cancels. Prints a table and writes ``results/bench.json``.

Budgets (issue 7): shared loop ≥ 0.9× a bare loop's samples/s; Balanced Softmax / PC-softmax
training step ≤ 1.05× one with ``F.cross_entropy`` (the loss alone is reported too); KerBS head
≤ K× + 20% of the full softmax; the adaptive softmax's speed-up is reported; tensor-resident
batches vs a per-sample ``DataLoader``.
"""

from __future__ import annotations

import json
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
REPEATS = 5


def _best_of(fn: Callable[[], None], repeats: int = REPEATS) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _paired(a: Callable[[], None], b: Callable[[], None]) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(REPEATS):
        ta += _best_of(a, 1)
        tb += _best_of(b, 1)
    return statistics.median(ta), statistics.median(tb)


def bench_training_loop() -> dict[str, float]:
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

    t_shared, t_bare = _paired(shared, bare)
    return {"shared_loop_speed_vs_bare": t_bare / t_shared}


def bench_balanced_softmax_step() -> dict[str, float]:
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

    t_bs, t_ce = _paired(step(balanced), step(F.cross_entropy))
    return {"balanced_softmax_step_vs_ce": t_bs / t_ce}


def bench_losses() -> dict[str, float]:
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

    t_bs, t_ce = _paired(step(balanced), step(F.cross_entropy))
    return {"balanced_softmax_loss_only_vs_ce": t_bs / t_ce}


def bench_heads(hidden: int = 256, vocab: int = 10_000, batch: int = 700) -> dict[str, float]:
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
        t_kerbs, t_full = _paired(step(heads.KerBSHead(hidden, vocab, senses_per_word=k)), full)
        out[f"kerbs_k{k}_cost_vs_softmax"] = t_kerbs / t_full
    for k in (1, 2, 4):  # θ → 0: the same head without the kernel's element-wise work
        dot = heads.KerBSHead(hidden, vocab, senses_per_word=k, kernel="dot")
        t_dot, t_full = _paired(step(dot), full)
        out[f"kerbs_dot_k{k}_cost_vs_softmax"] = t_dot / t_full
    adaptive = heads.AdaptiveSoftmaxHead(hidden, vocab, cutoffs=[2000, 6000])
    t_adaptive, t_full = _paired(step(adaptive), full)
    out["adaptive_softmax_speedup"] = t_full / t_adaptive
    return out


def bench_data_pipeline() -> dict[str, float]:
    """One epoch of batches: tensor-resident index batches vs a per-sample ``DataLoader``."""
    x, y = torch.randn(20_000, 40), torch.randint(0, 10, (20_000,))
    generator = torch.Generator().manual_seed(0)

    def tensors() -> None:
        for idx in training.tensor_batches(x.shape[0], 256, generator):
            x[idx], y[idx]

    def loader() -> None:
        for _ in DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True):
            pass

    t_tensor, t_loader = _paired(tensors, loader)
    return {"tensor_batches_speedup_vs_dataloader": t_loader / t_tensor}


def main() -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    figures: dict[str, float] = {}
    for bench in (bench_training_loop, bench_balanced_softmax_step, bench_losses, bench_heads,
                  bench_data_pipeline):
        figures.update(bench())
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:6.2f}")
    out = ROOT / "results" / "bench.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "ratios": figures}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
