"""Evaluation metrics and the statistics every compared number carries.

Shapes: ``logits`` ``[N, C]``, ``target`` ``[N]`` (int64). Accuracies are fractions in [0, 1].
Intervals are two-sided 95% Student-t intervals over seeds; A-vs-B comparisons use paired
differences (same seed, same setting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:  # rendering the book (report, claims) must not need torch
    from torch import Tensor

CONFIDENCE = 0.95
POWER = 0.80
MAX_SEEDS = 10_000


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Top-1 accuracy: the fraction of rows whose argmax equals the target."""
    return (logits.argmax(dim=-1) == target).float().mean().item()


def per_class_accuracy(logits: Tensor, target: Tensor, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class ``[C]``; NaN for a class absent from ``target``."""
    correct = (logits.argmax(dim=-1) == target).double()
    hits = np.bincount(target.numpy(), weights=correct.numpy(), minlength=num_classes)
    totals = np.bincount(target.numpy(), minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / totals


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval ``(mean, low, high)``.

    With a single value the interval is ``(nan, nan)``: one seed says nothing about spread.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(data.mean())
    if data.size < 2:
        return mean, float("nan"), float("nan")
    sem = float(data.std(ddof=1) / np.sqrt(data.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=data.size - 1)) * sem
    return mean, mean - half, mean + half


def minimum_detectable_effect(
    sd: float, n: int, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """The smallest true effect (distance from a test's threshold) that a one-sided test at the
    95% interval's edge detects with probability ``power``, given the per-seed spread ``sd`` of
    ``n`` values: ``(t_{(1+confidence)/2, n-1} + t_{power, n-1}) · sd / √n``.

    NaN for ``n < 2`` (no spread can be estimated); 0 when ``sd == 0``.
    """
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    df = n - 1
    quantiles = stats.t.ppf(0.5 + confidence / 2, df) + stats.t.ppf(power, df)
    return float(quantiles * sd / math.sqrt(n))


def seeds_needed(
    sd: float, effect: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """The fewest seeds whose :func:`minimum_detectable_effect` is at most ``effect``.

    ``None`` when no spread is known (``sd`` NaN) or ``effect <= 0``; capped at ``MAX_SEEDS``.
    """
    if not math.isfinite(sd) or effect <= 0:
        return None
    if sd == 0:
        return 2
    n = 2
    while n < MAX_SEEDS and minimum_detectable_effect(sd, n, confidence, power) > effect:
        n = n * 2 if minimum_detectable_effect(sd, n * 2, confidence, power) > effect else n + 1
    return n


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """Mean and t-interval of the paired differences ``a_i − b_i`` (same seed and setting)."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need equal lengths, got {a_arr.size} and {b_arr.size}")
    return mean_ci(a_arr - b_arr, confidence)


def summarize(rows: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Mean, 95% CI and seed count of ``value`` per group of ``by`` columns.

    Returns a frame with columns ``by + [mean, ci_low, ci_high, n]``.
    """
    records = []
    for key, group in rows.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = mean_ci(group[value].to_numpy())
        records.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(group),
            }
        )
    return pd.DataFrame.from_records(records)
