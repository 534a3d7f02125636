"""One seaborn look for the whole book and the figure helpers chapters share.

Intervals drawn here are 95% Student-t intervals over seeds, computed by
:func:`softmax_repro.metrics.summarize` (not seaborn's bootstrap), so figures and tables agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from softmax_repro.metrics import summarize

FIGURE_DPI = 90


def set_theme() -> None:
    """The book's plotting theme: seaborn whitegrid, colour-blind palette, modest PNG size."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": FIGURE_DPI,
            "savefig.dpi": FIGURE_DPI,
            "figure.figsize": (7.0, 4.0),
            "axes.titlesize": "medium",
        }
    )


def _errorbars(ax: Axes, data: pd.DataFrame, x_positions: Sequence[float], color: str) -> None:
    lower = data["mean"] - data["ci_low"]
    upper = data["ci_high"] - data["mean"]
    ax.errorbar(
        x_positions,
        data["mean"],
        yerr=[lower.fillna(0), upper.fillna(0)],
        fmt="none",
        ecolor=color,
        capsize=3,
        lw=1,
    )


def ci_lineplot(
    rows: pd.DataFrame,
    x: str,
    hue: str,
    value: str = "value",
    ax: Axes | None = None,
    logx: bool = False,
    ylabel: str | None = None,
) -> Axes:
    """Mean of ``value`` against ``x`` per ``hue`` with 95% t-interval error bars over seeds."""
    ax = ax or plt.subplots()[1]
    table = summarize(rows, [hue, x], value)
    palette = sns.color_palette(n_colors=table[hue].nunique())
    for color, (name, group) in zip(palette, table.groupby(hue, sort=False), strict=True):
        group = group.sort_values(x)
        ax.plot(group[x], group["mean"], marker="o", label=str(name), color=color)
        _errorbars(ax, group, group[x].to_numpy(), color)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or value)
    ax.legend(title=hue, fontsize="small")
    return ax


def ci_barplot(
    rows: pd.DataFrame,
    x: str,
    hue: str,
    value: str = "value",
    ax: Axes | None = None,
    ylabel: str | None = None,
    order: Sequence[str] | None = None,
) -> Axes:
    """Grouped bars of the mean of ``value`` per ``x`` and ``hue`` with 95% t-interval bars."""
    ax = ax or plt.subplots()[1]
    table = summarize(rows, [x, hue], value)
    xs = list(order) if order is not None else list(dict.fromkeys(rows[x]))
    hues = list(dict.fromkeys(rows[hue]))
    width = 0.8 / len(hues)
    palette = sns.color_palette(n_colors=len(hues))
    for i, (name, color) in enumerate(zip(hues, palette, strict=True)):
        group = table[table[hue] == name].set_index(x).reindex(xs)
        positions = [j - 0.4 + width * (i + 0.5) for j in range(len(xs))]
        ax.bar(positions, group["mean"], width=width, color=color, label=str(name))
        _errorbars(ax, group, positions, "black")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or value)
    ax.legend(title=hue, fontsize="small")
    return ax
