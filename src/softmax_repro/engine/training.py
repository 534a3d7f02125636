"""The one fit/evaluate loop every chapter uses.

- :func:`resolve_device` turns ``auto``/``cpu``/``cuda[:N]`` into a device, or a clear error.
- :func:`seed_everything` makes a run a pure function of its seed on CPU.
- :func:`fit` is the generic loop (any batches, any loss); :func:`fit_classifier` drives it for
  tensor-resident classification data, with optional weighted sampling.
- :func:`run_grid` iterates a chapter's runs behind a single progress bar and checkpoints each
  finished run, so an interrupted chapter resumes with finished runs skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.std import tqdm

from softmax_repro.config import ConfigError, check_choice, check_device, check_int, check_positive
from softmax_repro.engine import distributed

CHECKPOINT_ENV = "SOFTMAX_REPRO_CHECKPOINTS"
"""Environment variable naming the folder where :func:`run_grid` checkpoints finished runs."""


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for ``device``.

    ``auto`` picks CUDA when available, else CPU. Asking for CUDA on a machine without it raises
    :class:`ConfigError` before any work starts. Under ``torchrun`` this also joins the process
    group (:func:`distributed.init_from_env`) and a CUDA device becomes ``cuda:LOCAL_RANK``.
    """
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} is not available on this machine (no CUDA); use 'cpu' or 'auto'"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device!r} is not available; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return distributed.init_from_env(torch.device(device))


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op CPU threads (0: leave the setting alone).

    The chapters' small models run fastest on one thread; several threads on shared cores spin and
    stall. The previous setting is restored afterwards.
    """
    check_int("threads", count, 0)
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic algorithms.

    On CPU the same seed then gives bit-identical results on the same machine and thread count.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How to train: length, batch size, optimizer and learning-rate schedule.

    Exactly one of ``epochs`` / ``steps`` is set. The learning rate warms up linearly from
    ``warmup_start_lr`` to ``lr`` over ``warmup_steps`` optimizer steps, then stays constant or
    follows a cosine to 0 at the last step. ``amp`` (bf16 autocast) and ``compile``
    (``torch.compile``) are opt-in and act only on CUDA; on CPU they change nothing.
    """

    batch_size: int
    lr: float
    epochs: int | None = None
    steps: int | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_start_lr: float = 0.0
    schedule: str = "constant"
    amp: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError("TrainSpec needs exactly one of epochs= or steps= (an integer >= 1)")
        if self.epochs is not None:
            check_int("epochs", self.epochs, 1)
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_positive("lr", self.lr)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_positive("warmup_start_lr", self.warmup_start_lr, allow_zero=True)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_choice("schedule", self.schedule, ("constant", "cosine"))
        check_choice("amp", self.amp, (False, True))
        check_choice("compile", self.compile, (False, True))


@dataclasses.dataclass
class FitLog:
    """What a call to :func:`fit` did.

    Attributes:
        epoch_losses: mean training loss of each epoch.
        steps: optimizer steps taken.
        samples: training examples processed (sum of batch sizes).
        wall_s: wall seconds spent in the loop.
    """

    epoch_losses: list[float]
    steps: int
    samples: int
    wall_s: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else float("nan")


def make_optimizer(params: Iterable[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    """The optimizer ``spec`` names, over ``params``."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        params,
        lr=spec.lr,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        weight_decay=spec.weight_decay,
    )


def learning_rate(spec: TrainSpec, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < spec.warmup_steps:
        frac = step / spec.warmup_steps
        return spec.warmup_start_lr + frac * (spec.lr - spec.warmup_start_lr)
    if spec.schedule == "cosine":
        span = max(total_steps - spec.warmup_steps, 1)
        progress = (step - spec.warmup_steps) / span
        return 0.5 * spec.lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return spec.lr


def fit(
    model: nn.Module,
    compute_loss: Callable[[nn.Module, tuple[Tensor, ...]], Tensor],
    make_batches: Callable[[int], Iterable[tuple[Tensor, ...]]],
    spec: TrainSpec,
    *,
    steps_per_epoch: int,
    params: Iterable[nn.Parameter] | None = None,
    desc: str | None = None,
    data_parallel: bool = False,
) -> FitLog:
    """Train ``model`` in place.

    Args:
        model: the module to train (already on its device).
        compute_loss: ``(model, batch) -> scalar loss``; may carry state (e.g. an LM's hidden state)
            in a closure.
        make_batches: ``epoch -> iterable of batches``; each batch is a tuple of tensors whose first
            element's first dimension is the batch size.
        spec: length, optimizer and schedule.
        steps_per_epoch: batches ``make_batches`` yields per epoch (to size the schedule).
        params: parameters to optimize (default: all of ``model``'s).
        desc: a label for the optional inner progress bar; ``None`` shows none.
        data_parallel: under ``torchrun`` (process group initialised for the model's device),
            split every batch across the ranks (below). ``make_batches`` must then yield the
            same batches on every rank (seeded, not rank-dependent), every tensor of a batch must
            have the batch on its first dimension, and ``compute_loss`` must be a per-example
            mean that calls the model's ``forward`` (DistributedDataParallel synchronises
            gradients there). Off, or outside ``torchrun``, every rank trains on whole batches.

    Data-parallel: each rank trains on its :func:`distributed.shard_indices` part of every batch
    through DistributedDataParallel, its mean loss weighted by its share of the batch, so the
    averaged gradient equals the single-process one; a rank whose part of a (last, short) batch is
    empty runs one example with weight 0 so that it still joins the gradient averaging. The
    returned log holds the global mean losses and sample counts.
    """
    total = spec.steps if spec.steps is not None else spec.epochs * steps_per_epoch
    optimizer = make_optimizer(model.parameters() if params is None else params, spec)
    model.train()
    device = next(model.parameters()).device
    sharded = data_parallel and distributed.active_for(device)
    if sharded:
        model = distributed.wrap_model(model, device)
    on_cuda = device.type == "cuda"
    forward = torch.compile(model) if spec.compile and on_cuda else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if spec.amp and on_cuda else nullcontext()
    )
    epoch_losses: list[float] = []
    step = samples = 0
    start = time.perf_counter()
    bar = tqdm(
        total=total, desc=desc, leave=False, file=sys.stderr, mininterval=5.0,
        disable=desc is None or not distributed.is_rank0(),
    )
    epoch = 0
    while step < total:
        running, count = 0.0, 0
        for batch in make_batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(spec, step, total)
            samples += int(batch[0].shape[0])
            with autocast:
                if sharded:
                    part, share = _rank_part(batch)
                    loss = compute_loss(forward, part) * share
                else:
                    loss = compute_loss(forward, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            count += 1
            step += 1
            bar.update(1)
            if step >= total:
                break
        if count == 0:
            raise ValueError("make_batches yielded no batch; is the training set empty?")
        epoch_losses.append(running / count)
        epoch += 1
    bar.close()
    if sharded:
        epoch_losses = distributed.mean_over_ranks(epoch_losses, device)
    return FitLog(epoch_losses, step, samples, time.perf_counter() - start)


def _rank_part(batch: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
    """This rank's rows of every tensor in ``batch`` and its loss weight ``part size · world / B``
    (a scalar tensor on the batch's device); an empty part becomes row 0 with weight 0."""
    size, world = batch[0].shape[0], distributed.world_size()
    rows = distributed.shard_indices(torch.arange(size), distributed.rank(), world)
    share = torch.tensor(rows.numel() * world / size, device=batch[0].device)
    rows = rows if rows.numel() else torch.zeros(1, dtype=torch.long)
    return tuple(t[rows.to(t.device)] for t in batch), share


def tensor_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    sample_weights: Tensor | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Index batches over ``n`` examples for one epoch.

    Without ``sample_weights`` a random permutation (every example once); with them, ``n`` draws
    with replacement proportional to the weights (e.g. class-balanced sampling).
    """
    if sample_weights is None:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for begin in range(0, stop, batch_size):
        yield order[begin : begin + batch_size]


def image_layout(x: Tensor) -> Tensor:
    """``x`` in channels-last memory layout when it is a batch of images ``[B, C, H, W]``, else
    ``x`` unchanged.

    Convolutions on CPU run faster on channels-last tensors: one epoch of a training step measured
    here was 1.36× faster for chapter 04's GapCNN (32×32, 1 channel) and 1.34× for a ResNet-8 on
    32×32×3, at one thread. Values are the same up to float rounding of the convolution algorithm.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def fit_classifier(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    spec: TrainSpec,
    *,
    seed: int,
    device: torch.device,
    sample_weights: Tensor | None = None,
    params: Iterable[nn.Parameter] | None = None,
    desc: str | None = None,
    data_parallel: bool = True,
) -> FitLog:
    """Train a classifier on tensor-resident data.

    Args:
        model: maps ``x[B, ...]`` to logits ``[B, C]``; moved to ``device`` (and, for images
            ``x[N, C, H, W]``, to the channels-last layout, see :func:`image_layout`).
        loss_fn: ``(logits[B, C], y[B]) -> scalar``.
        x: inputs ``[N, ...]`` (float).
        y: labels ``[N]`` (int64, in ``0..C-1``).
        spec: length, optimizer and schedule.
        seed: seeds the batch order (seed the model's initialisation before building it with
            :func:`seed_everything`).
        device: where to train; the whole dataset is moved there once.
        sample_weights: ``[N]`` non-negative weights for sampling with replacement; ``None`` =
            shuffle.
        params: parameters to optimize (default: all), e.g. only the classifier for decoupled
            re-training.
        desc: label for an inner progress bar (``None``: none).
        data_parallel: under ``torchrun``, split batches across the ranks (below); ``False``
            trains the whole batch on every rank, for a loss that is not a mean over examples
            (e.g. InfoNCE's in-batch label frequencies, the log of a batch mean in MINE).

    Under ``torchrun`` (process group initialised for ``device``'s type) every rank draws the same
    global batch and :func:`fit` trains each rank on its part (see ``fit``'s ``data_parallel``).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("the training set is empty")
    model.to(device)
    if x.dim() == 4:
        model.to(memory_format=torch.channels_last)
    x, y = image_layout(x.to(device)), y.to(device)
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    weights = None if sample_weights is None else sample_weights.double().cpu()

    steps_per_epoch = math.ceil(n / spec.batch_size)

    def make_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in tensor_batches(n, spec.batch_size, generator, weights):
            idx = idx.to(device)
            yield x[idx], y[idx]

    def compute_loss(net: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        xb, yb = batch
        return loss_fn(net(xb), yb)

    return fit(
        model,
        compute_loss,
        make_batches,
        spec,
        steps_per_epoch=steps_per_epoch,
        params=params,
        desc=desc,
        data_parallel=data_parallel,
    )


@torch.inference_mode()
def predict(
    model: nn.Module, x: Tensor, batch_size: int = 1024, device: torch.device | None = None
) -> Tensor:
    """Logits ``[N, C]`` (on CPU) of ``model`` in eval mode, computed in batches."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = [
        model(image_layout(x[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    model.train(was_training)
    return torch.cat(outputs)


def run_key(run: dict[str, Any]) -> str:
    """A stable short hash of a run description (its JSON with sorted keys)."""
    text = json.dumps(run, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_grid(
    runs: Sequence[dict[str, Any]],
    run_one: Callable[[dict[str, Any]], list[dict[str, Any]]],
    *,
    chapter: str,
    desc: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Execute every run behind one progress bar and return all their rows.

    Each finished run's rows are written to ``checkpoint_dir/<run hash>.json`` (default: the folder
    in ``$SOFTMAX_REPRO_CHECKPOINTS``, set by the runner; no checkpoints when neither is given). A
    run whose checkpoint exists is not executed again, so an interrupted chapter resumes where it
    stopped. The runner deletes the folder once the chapter has succeeded. Under ``torchrun`` every
    rank executes every run; only rank 0 shows the bar and writes checkpoints, and the ranks meet
    at a barrier after each run (so all of them see the same checkpoints).

    Args:
        runs: run descriptions, e.g. ``{"method": "softmax", "seed": 0}``; JSON-serialisable.
        run_one: executes one run and returns its rows (flat dicts).
        chapter: the chapter name (namespaces the checkpoints).
        desc: progress-bar label.
    """
    keys = [run_key(r) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("run_grid got duplicate run descriptions")
    folder = checkpoint_dir or os.environ.get(CHECKPOINT_ENV)
    folder = Path(folder) / chapter if folder else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    resumed = 0
    bar = tqdm(runs, desc=desc or chapter, file=sys.stderr, mininterval=10.0, ascii=True,
               disable=not distributed.is_rank0())
    for run, key in zip(bar, keys, strict=True):
        path = folder / f"{key}.json" if folder is not None else None
        if path is not None and path.exists():
            rows.extend(json.loads(path.read_text())["rows"])
            resumed += 1
            continue
        bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in run.items()), refresh=False)
        start = time.perf_counter()
        run_rows = run_one(run)
        wall = round(time.perf_counter() - start, 3)
        run_rows = [{**row, "wall_s": row.get("wall_s", wall)} for row in run_rows]
        if path is not None and distributed.is_rank0():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run": run, "rows": run_rows}, default=float))
            tmp.replace(path)
        distributed.barrier()
        rows.extend(run_rows)
    bar.close()
    if resumed:
        print(f"resumed {resumed} finished run(s) of {len(runs)} from checkpoints in {folder}")
    return rows
