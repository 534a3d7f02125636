"""The one table and number formatter of the book.

Every number a reader sees — in a chapter's tables, in glued prose, on the ledger and the status
page — goes through this module, so it looks the same everywhere:

- a number: :func:`format_number` — ``0.823``, ``12.3``, ``12 049`` (SI thin-space thousands),
  ``−0.005`` (a true minus sign); missing (``None``/NaN) is ``—``;
- a mean with its 95% interval: :func:`format_ci` — ``0.823 [0.811, 0.835]``; one seed (no
  interval) shows the mean alone;
- a fraction as a percentage: :func:`format_percent` — ``82.3%``.

``digits=None`` chooses the decimals from the numbers themselves (:func:`auto_decimals`):
three significant figures of the largest magnitude (at most three decimals unless it is below
0.01), and one significant figure of an interval's half-width (two when it starts with a 1),
between 0 and 4 decimals. Tables use one choice per column, so a column's decimals line up.

Tables: :func:`ci_table` (mean [95% CI] of per-seed rows pivoted to rows × columns),
:func:`tidy` (any frame: index into columns, headers such as ``10.0`` shown as ``10``, numbers
formatted, ``—`` for missing), :class:`Table` (what a notebook cell returns to display a frame:
a pipe table without an index) and :func:`markdown_table` (the pipe table the generated pages,
:class:`Table` and ``benchmarks/scaling.py`` write).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np
import pandas as pd

from softmax_repro.metrics import summarize

MISSING = "—"
MINUS = "−"
THIN_SPACE = "\u202f"
MAX_DECIMALS = 4


def is_missing(value: Any) -> bool:
    """``None``, NaN, NA or an empty string."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Number | np.number) or is_missing(v):
            continue
        if math.isfinite(float(v)):
            out.append(float(v))
    return out


def auto_decimals(values: Iterable[Any], half_width: float | None = None) -> int:
    """Decimals showing 3 significant figures of the largest ``|value|`` (at most 3 decimals
    unless it is below 0.01), and of ``half_width``
    (an interval's half-width) 2 significant figures when it starts with a 1, else 1.

    Clamped to ``0..4``; zeros and missing values are ignored (an all-zero input gives 0).
    """
    magnitudes = [abs(v) for v in _finite(values) if v != 0]
    decimals = 0
    if magnitudes:
        largest = max(magnitudes)
        decimals = min(2 - math.floor(math.log10(largest)), 3 if largest >= 0.01 else 4)
    if half_width is not None and math.isfinite(half_width) and half_width > 0:
        exponent = math.floor(math.log10(half_width))
        leading = int(half_width / 10**exponent)
        decimals = max(decimals, (1 if leading == 1 else 0) - exponent)
    return int(min(max(decimals, 0), MAX_DECIMALS))


def _plain(value: float, decimals: int) -> str:
    text = f"{abs(value):,.{decimals}f}"
    integer, _, fraction = text.partition(".")
    if len(integer.replace(",", "")) >= 5:  # SI: group thousands only from 10 000 on
        integer = integer.replace(",", THIN_SPACE)
    else:
        integer = integer.replace(",", "")
    text = integer + ("." + fraction if fraction else "")
    negative = value < 0 and float(text.replace(THIN_SPACE, "")) != 0
    return (MINUS if negative else "") + text


def format_number(value: Any, digits: int | None = None, scale: float = 1.0,
                  unit: str = "") -> str:
    """One number as the book shows it; ``—`` when missing.

    Integers (and integer-valued floats with ``digits=None``) print without decimals.
    ``scale`` multiplies first (100 for percentages); ``unit`` is appended (``"%"``, ``" s"``).
    """
    if is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and scale == 1.0:
        return _plain(float(value), 0) + unit
    value = float(value) * scale
    if math.isinf(value):
        return ("" if value > 0 else MINUS) + "∞"
    if digits is None:
        digits = 0 if value.is_integer() and abs(value) >= 1 else auto_decimals([value])
    return _plain(value, digits) + unit


def format_ci(mean: Any, low: Any, high: Any, digits: int | None = None, scale: float = 1.0,
              unit: str = "") -> str:
    """``mean [low, high]`` — the one format of an estimate with its 95% interval.

    Without an interval (one seed: NaN bounds) only the mean shows; a missing mean is ``—``.
    ``unit`` follows each number (``82.3% [81.1%, 83.5%]``).
    """
    if is_missing(mean):
        return MISSING
    mean, scale = float(mean), float(scale)
    has_interval = not (is_missing(low) or is_missing(high))
    if digits is None:
        half = (float(high) - float(low)) / 2 * abs(scale) if has_interval else None
        numbers = [mean, float(low), float(high)] if has_interval else [mean]
        digits = auto_decimals([n * scale for n in numbers], half)
    center = format_number(mean, digits, scale, unit)
    if not has_interval:
        return center
    return (f"{center} [{format_number(float(low), digits, scale, unit)}, "
            f"{format_number(float(high), digits, scale, unit)}]")


def format_percent(fraction: Any, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage: ``0.8234 → "82.3%"``."""
    return format_number(fraction, digits, scale=100.0, unit="%")


def format_seconds(seconds: Any) -> str:
    """A duration for a reader: ``48 s``, ``6 min 28 s``, ``1 h 02 min``; ``—`` when missing."""
    if is_missing(seconds):
        return MISSING
    total = round(float(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def header(label: Any) -> str:
    """A column or row label as text: ``10.0 → "10"``, tuples joined by ``" · "``."""
    if isinstance(label, tuple):
        return " · ".join(header(part) for part in label if not is_missing(part) and part != "")
    if isinstance(label, float | np.floating) and float(label).is_integer():
        return str(int(label))
    if is_missing(label):
        return ""
    return str(label)


def _column_decimals(values: pd.Series) -> int | None:
    numbers = _finite(values)
    if all(float(v).is_integer() for v in numbers):
        return None
    return auto_decimals(numbers)


def tidy(frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """A frame ready to show: index moved into columns, text headers, formatted cells.

    Numeric columns are formatted with :func:`format_number` (``digits`` for all, per column
    name, or chosen per column when ``None``); missing cells become ``—``; every cell is a string.
    """
    out = frame.copy()
    if not isinstance(out.index, pd.RangeIndex) or out.index.name is not None:
        names = [n for n in out.index.names if n is not None]
        out = out.reset_index(drop=not names)
    names = [header(c) for c in out.columns]
    formatted = {}
    for position, name in enumerate(names):
        column = out.iloc[:, position]
        wanted = digits.get(name) if isinstance(digits, Mapping) else digits
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            chosen = wanted if wanted is not None else _column_decimals(column)
            cells = [format_number(v, chosen) for v in column]
        else:
            cells = [format_number(v, wanted) if isinstance(v, float | np.floating) else
                     (MISSING if is_missing(v) else header(v)) for v in column]
        formatted[position] = cells
    out = pd.DataFrame({i: cells for i, cells in formatted.items()}, dtype=object)
    out.columns = names
    return out


def ci_table(rows: pd.DataFrame, index: str | Sequence[str], columns: str | None = None,
             value: str = "value", scale: float = 1.0, digits: int | None = None,
             unit: str = "") -> pd.DataFrame:
    """``mean [95% CI]`` over seeds of ``value`` per group, pivoted to ``index × columns``.

    ``rows`` are per-seed rows (one ``value`` per seed and setting). With ``columns=None`` the
    table has one ``mean [95% CI]`` column. Decimals are chosen per output column unless
    ``digits`` is given. The result is :func:`tidy`: no index, text headers, ``—`` for missing
    cells, ready for :class:`Table` or :func:`markdown_table`.
    """
    index = [index] if isinstance(index, str) else list(index)
    by = index + ([columns] if columns else [])
    summary = summarize(rows, by, value)
    column_key = summary[columns] if columns else pd.Series("mean [95% CI]", index=summary.index)
    cells = []
    for key in dict.fromkeys(column_key):
        part = summary[column_key == key]
        chosen = digits
        if chosen is None:
            chosen = max(auto_decimals([m * scale, lo * scale, hi * scale],
                                       (hi - lo) / 2 * abs(scale) if not is_missing(lo) else None)
                         for m, lo, hi in zip(part["mean"], part["ci_low"], part["ci_high"],
                                              strict=True))
        cells.append(pd.Series([format_ci(m, lo, hi, chosen, scale, unit) for m, lo, hi in
                                zip(part["mean"], part["ci_low"], part["ci_high"], strict=True)],
                               index=part.index))
    summary["cell"] = pd.concat(cells).sort_index() if cells else pd.Series(dtype=object)
    if columns is None:
        table = summary[[*index, "cell"]].rename(columns={"cell": "mean [95% CI]"})
        return tidy(table.reset_index(drop=True))
    order = list(dict.fromkeys(rows[columns]))
    with contextlib.suppress(TypeError):  # mixed types keep their order of appearance
        order = sorted(order)
    table = summary.pivot_table(index=index, columns=columns, values="cell", aggfunc="first",
                                sort=False)
    table = table.reindex(columns=[c for c in order if c in table.columns])
    table.columns.name = None
    return tidy(table.reset_index())


class Table:
    """A frame displayed as the book shows tables: no index, ``—`` for missing.

    Return it as a notebook cell's last line (``tables.Table(frame)`` or ``page.show(frame)``).
    It displays as a MyST pipe table (``text/markdown``; the book renders notebook markdown as
    MyST, so roles such as ``{ref}`` and ``$math$`` work in cells), the same kind of table as
    the generated pages; the theme lets a wide table scroll sideways.
    """

    def __init__(self, frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None) -> None:
        self.frame = tidy(frame, digits)

    def _repr_markdown_(self) -> str:
        return markdown_table(self.frame)

    def __repr__(self) -> str:
        return self.frame.to_string(index=False)


def _md_cell(value: Any) -> str:
    text = MISSING if is_missing(value) else (
        format_number(value) if isinstance(value, Number | np.number) else str(value))
    return text.replace("|", "\\|").replace("\n", " ").strip()


def markdown_table(data: pd.DataFrame | Sequence[Mapping[str, Any]],
                   columns: Sequence[str] | None = None,
                   align: Mapping[str, str] | None = None) -> str:
    """A MyST pipe table (ends in a newline) from a frame or a list of records.

    Cells go through :func:`format_number` (numbers) or ``str``; pipes are escaped, newlines
    become spaces, missing cells are ``—``. ``align`` maps a column to ``"left"``, ``"right"``
    or ``"center"``.
    """
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
    if columns is not None:
        frame = frame.reindex(columns=list(columns))
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    names = [header(c) for c in frame.columns]
    marks = {"left": ":---", "right": "---:", "center": ":---:"}
    rule = [marks.get((align or {}).get(n, ""), "---") for n in names]
    lines = ["| " + " | ".join(_md_cell(n) for n in names) + " |", "|" + "|".join(rule) + "|"]
    for record in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in record) + " |")
    return "\n".join(lines) + "\n"
