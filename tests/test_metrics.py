"""Metrics and intervals against hand computation and scipy."""

import numpy as np
import pandas as pd
import pytest
import torch

from softmax_repro import metrics


def test_accuracy_and_per_class_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 1, 0])
    assert metrics.accuracy(logits, target) == 0.75
    assert np.allclose(metrics.per_class_accuracy(logits, target, 3)[:2], [1.0, 0.5])
    assert np.isnan(metrics.per_class_accuracy(logits, target, 3)[2])


def test_mean_ci_matches_hand_computed_t_interval():
    mean, low, high = metrics.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = 1.5811, sem = 0.7071, t(0.975, 4) = 2.7764
    assert mean == 3.0
    assert (high - mean) == pytest.approx(2.776445 * 0.707107, rel=1e-5)
    assert low == pytest.approx(2 * mean - high)


def test_single_value_has_no_interval():
    mean, low, high = metrics.mean_ci([0.4])
    assert mean == 0.4 and np.isnan(low) and np.isnan(high)


def test_paired_difference_removes_shared_seed_effect():
    a, b = [0.80, 0.90, 0.70], [0.78, 0.88, 0.68]
    mean, low, high = metrics.paired_difference_ci(a, b)
    assert (
        mean == pytest.approx(0.02) and low == pytest.approx(0.02) and high == pytest.approx(0.02)
    )
    with pytest.raises(ValueError, match="equal lengths"):
        metrics.paired_difference_ci([1, 2], [1])


def test_summarize_per_group():
    rows = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "value": [1, 2, 3, 5, 5, 5]})
    table = metrics.summarize(rows, ["method"]).set_index("method")
    assert (
        table.loc["a", "mean"] == 2 and table.loc["b", "ci_low"] == 5 and table.loc["a", "n"] == 3
    )
