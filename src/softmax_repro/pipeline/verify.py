"""Compare freshly produced results with committed ones, number by number (``make verify``).

Rows are matched on every column except ``value`` and ``wall_s``; a number matches when
``|fresh − committed| <= tolerance`` (0 = bit-identical, the expectation on the same machine).
Timing metrics (seconds, tokens per second) are left out: they are measurements of the machine.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from softmax_repro.config import ConfigError
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
    for side, frame in (("committed", committed), ("fresh", fresh)):
        check_unique(frame, keys, side)
    merged = committed[[*keys, "value"]].merge(
        fresh[[*keys, "value"]], on=keys, how="outer", suffixes=("_committed", "_fresh")
    )
    merged["difference"] = (merged["value_fresh"] - merged["value_committed"]).abs()
    merged["match"] = merged["difference"] <= tolerance
    return merged


def check_unique(rows: pd.DataFrame, keys: list[str], side: str = "") -> None:
    """Raise when two rows share every key column: a number would be counted twice.

    Raises:
        ConfigError: names the first duplicated row.
    """
    duplicated = rows[rows.duplicated(subset=keys, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0][keys].to_dict()
        raise ConfigError(
            f"the {side} results hold {len(duplicated)} rows that share all of {keys} with "
            f"another row, e.g. {first}; each number must appear once: re-run the chapter or "
            "restore the file with git"
        )


def verify_chapter(
    fresh_path: Path, committed_path: Path, profile: str, tolerance: float = 0.0
) -> pd.DataFrame:
    """:func:`compare_rows` for two results files of ``profile``.

    Raises:
        ConfigError: either file is broken or foreign (see :func:`results.read_results`), holds
            duplicated rows, or ``tolerance`` is not a finite number >= 0.
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ConfigError(f"tolerance={tolerance!r} is not allowed; give a finite number >= 0")
    fresh, _ = read_results(fresh_path, profile)
    committed, _ = read_results(committed_path, profile)
    try:
        return compare_rows(fresh, committed, tolerance)
    except ConfigError as error:
        raise ConfigError(f"{committed_path} vs {fresh_path}: {error}") from None
