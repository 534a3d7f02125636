"""Compare freshly produced results with committed ones, number by number (``make verify``).

Rows are matched on every column except ``value`` and ``wall_s``; a number matches when
``|fresh − committed| <= tolerance`` (0 = bit-identical, the expectation on the same machine).
Timing metrics (seconds, tokens per second) are left out: they are measurements of the machine.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from softmax_repro.pipeline.results import read_results, without_timings

IGNORED = ("value", "wall_s")


def compare_rows(
    fresh: pd.DataFrame, committed: pd.DataFrame, tolerance: float = 0.0
) -> pd.DataFrame:
    """One row per committed number: its key columns, both values, the difference and ``match``.

    A number present on one side only counts as a mismatch (value NaN on the other side).
    """
    fresh, committed = without_timings(fresh), without_timings(committed)
    keys = [c for c in committed.columns if c not in IGNORED]
    if set(keys) != {c for c in fresh.columns if c not in IGNORED}:
        raise ValueError(
            f"the two results have different columns: {sorted(fresh.columns)} vs "
            f"{sorted(committed.columns)}"
        )
    merged = committed[[*keys, "value"]].merge(
        fresh[[*keys, "value"]], on=keys, how="outer", suffixes=("_committed", "_fresh")
    )
    merged["difference"] = (merged["value_fresh"] - merged["value_committed"]).abs()
    merged["match"] = merged["difference"] <= tolerance
    return merged


def verify_chapter(
    fresh_path: Path, committed_path: Path, profile: str, tolerance: float = 0.0
) -> pd.DataFrame:
    """:func:`compare_rows` for two results files of ``profile``."""
    fresh, _ = read_results(fresh_path, profile)
    committed, _ = read_results(committed_path, profile)
    return compare_rows(fresh, committed, tolerance)
