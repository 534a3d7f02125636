"""One look for every figure of the book: theme, the method→colour map, interval error bars.

- :data:`METHOD_COLORS` gives every method ONE colour across the whole book (``softmax``, the
  baseline of most chapters, is always near-black), so a legend means the same in every panel and
  every chapter. It is split into one block per chapter; a chapter's owner adds its methods to
  its own block, choosing colours that differ from the other methods of that chapter.
- Error bars are 95% Student-t intervals over seeds (:func:`t_interval`, the interval of
  :func:`softmax_repro.metrics.mean_ci`), passed to seaborn as ``errorbar=t_interval``, so
  figures and tables agree. Rows must hold one value per seed for each plotted point.
- :func:`figure_legend` replaces the panels' legends with one legend for the whole figure, built
  from every panel's entries (so it lists every colour that appears anywhere).
- Figures are rendered at :data:`FIGURE_DPI` (≥ 150); put them on the page with
  ``page.glue_figure`` and a ``{glue:figure}`` directive (number, caption, alt text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from softmax_repro.metrics import mean_ci

FIGURE_DPI = 150

# Okabe–Ito / seaborn "colorblind" colours, plus three darker ones for chapters with > 10 methods.
BLUE, ORANGE, GREEN, VERMILION, PINK = "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc"
BROWN, ROSE, GREY, YELLOW, SKY = "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"
PURPLE, OLIVE, NAVY = "#6a3d9a", "#808000", "#1f3a68"
BASELINE = "#333333"
FALLBACK = (BLUE, ORANGE, GREEN, VERMILION, PINK, BROWN, ROSE, GREY, YELLOW, SKY, PURPLE, OLIVE)

METHOD_COLORS: dict[str, str] = {
    # ---- every chapter: the plain softmax / cross-entropy baseline ------------------------------
    "softmax": BASELINE,
    # ---- 01_balanced_softmax (Balanced Softmax, BALMS, long-tail baselines) ----------------------
    "balanced_softmax": BLUE,
    "balanced_softmax_quarter": SKY,
    "balms": GREEN,
    "bs_cb_sampling": PINK,
    "bs_cb_sampling_decoupled": ROSE,
    "bs_decoupled": BROWN,
    "cb_reweighting": ORANGE,
    "cb_sampling": YELLOW,
    "focal": VERMILION,
    "posthoc_adjustment": GREY,
    # ---- 02_incremental_bsce (CE family warm, BSCE family cool) -------------------------------
    "ce_m0": ORANGE,
    "ce_m5": YELLOW,
    "ce_m20": VERMILION,
    "ce_kd_m0": BROWN,
    "ce_kd_m20": PINK,
    "ce_ft_m20": GREY,
    "ce_kd_ft_m20": ROSE,
    "ce_kd_ftb_m20": OLIVE,
    "bsce_m5": SKY,
    "bsce_m20": BLUE,
    "bsce_kd_m0": GREEN,
    "bsce_kd_m20": NAVY,
    "bsce_random_m20": PURPLE,
    # ---- 03_kerbs (KerBS and its ablations, mixture of softmaxes, adaptive softmax) --------------
    "kerbs": BLUE,
    "kerbs_code_order": SKY,
    "kerbs_dot": GREEN,
    "kerbs_fixed": PINK,
    "kerbs_untrained_senses": GREY,
    "mos": VERMILION,
    "adaptive": ORANGE,
    "oracle": YELLOW,
    "kerbs_paper_order": NAVY,
    "kerbs_oracle": BROWN,
    "kerbs_planted_senses": PURPLE,
    # ---- 04_softmax_mutual_information (MI estimators, CAM / infoCAM, masking) ------------------
    "pc_softmax": BLUE,
    "infonce": GREEN,
    "nwj": ORANGE,
    "mine": PINK,
    "cnn": GREY,
    "cam": VERMILION,
    "infocam": SKY,
    "info_mask": BROWN,
    "random_mask": YELLOW,
    "constant_logk": PURPLE,
    "constant_entropy": OLIVE,
    # ---- 05_margins (HASeparator: cosine heads light, with the hinge darker; L-Softmax: m = 1
    #      grey, margin purple, annealed warm; D-Softmax green, its softmax comparison grey) ----
    "linear_ce": "#000000",
    "cos1": SKY,
    "cos1_hinge": BLUE,
    "cos16": ROSE,
    "cos16_hinge": PINK,
    "lsoftmax_m1": GREY,
    "lsoftmax_m2": "#c2a5cf",
    "lsoftmax_m3": PURPLE,
    "lsoftmax_m4": NAVY,
    "lsoftmax_m2_anneal": YELLOW,
    "lsoftmax_m3_anneal": ORANGE,
    "lsoftmax_m4_anneal": VERMILION,
    "softmax_k5": "#b0b0b0",
    "softmax_k10": "#555555",
    "dsoftmax": "#66c2a5",
    "dsoftmax_k5": OLIVE,
    "dsoftmax_k10": GREEN,
    "dsoftmax_full": "#117733",
    "dsoftmax_sampled": "#aa4499",
    # ---- 06_gradient_decay (β: small cool, CE black, large warm; attention normalisers) ---------
    "beta_0.01": NAVY,
    "beta_0.1": BLUE,
    "beta_1": BASELINE,
    "beta_3": ORANGE,
    "beta_10": VERMILION,
    "beta_warmup": GREEN,
    "ce_ts": GREY,
    "norm_softmax": SKY,
    "sin2max_shifted": GREEN,
    "sin_softmax": ORANGE,
    "norm_cosmax": PURPLE,
    "cosmax": PINK,
    # ---- 07_extreme_classification (chapter owner: adversarial negatives, overlapping clusters;
    #      reuse "adaptive" for the adaptive softmax) -----------------------------------------
    "adversarial": BLUE,
    "adversarial_code_split": SKY,
    "adversarial_uncorrected": NAVY,
    "adversarial_code_split_uncorrected": "#9ecae1",
    "uniform": VERMILION,
    "frequency": ORANGE,
    "frequency_uncorrected": YELLOW,
    "nce": PINK,
    "full_softmax": BASELINE,
    "unigram": GREY,
    "tree": GREEN,
    "tree_code_split": OLIVE,
    "xr_base": BROWN,
    "xr_overlap": PURPLE,
    # ---- 08_exact_answers (chapter owner: softmax tricks, ADMM-Softmax, MRC, universal features)
    "reinforce": GREY,
    "reinforce_loo": BASELINE,
    "gumbel_softmax": ORANGE,
    "independent_bernoulli": GREEN,
    "topk_sst": BLUE,
    "gumbel_max": YELLOW,
    "admm": BLUE,
    "newton_krylov": GREEN,
    "lbfgs": VERMILION,
    "sgd": PINK,
    "optimum": "#000000",
    "mrc": PURPLE,
    "logreg": BASELINE,
    "softmax_net": BLUE,
    "random_features": GREY,
}


def set_theme() -> None:
    """The book's plotting theme: seaborn whitegrid, colour-blind palette, 150 dpi PNGs."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": FIGURE_DPI,
            "savefig.dpi": FIGURE_DPI,
            "figure.figsize": (7.0, 4.0),
            "axes.titlesize": "medium",
            "legend.fontsize": "small",
        }
    )


def method_color(method: str) -> str:
    """The book-wide colour of ``method`` (a fixed fallback colour when it is not in the map)."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return FALLBACK[sum(map(ord, str(method))) % len(FALLBACK)]


def palette(names: Iterable[object]) -> dict[object, str] | list[tuple[float, float, float]]:
    """Colours for seaborn's ``palette=``: the method colours when every name is a method,
    else the colour-blind palette in order (e.g. for a hue of dimensions or metrics)."""
    names = list(dict.fromkeys(names))
    if names and all(str(n) in METHOD_COLORS for n in names):
        return {n: METHOD_COLORS[str(n)] for n in names}
    return sns.color_palette("colorblind", n_colors=max(len(names), 1))


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% Student-t interval of the mean of ``values`` (seaborn ``errorbar=`` callable);
    a single value gives a zero-length bar."""
    mean, low, high = mean_ci(np.asarray(values, dtype=float))
    if np.isnan(low):
        return mean, mean
    return low, high


def _hue_order(rows: pd.DataFrame, hue: str, hue_order: Sequence[object] | None) -> list:
    if hue_order is not None:
        return list(hue_order)
    return list(dict.fromkeys(rows[hue]))


def ci_lineplot(
    rows: pd.DataFrame,
    x: str,
    hue: str,
    value: str = "value",
    ax: Axes | None = None,
    logx: bool = False,
    ylabel: str | None = None,
    hue_order: Sequence[object] | None = None,
    legend: bool = True,
) -> Axes:
    """Mean of ``value`` against ``x``, one line per ``hue``, with 95% t-interval bars over seeds.

    ``rows`` hold one ``value`` per seed for each (``x``, ``hue``); methods get their book-wide
    colours.
    """
    ax = ax or plt.subplots()[1]
    order = _hue_order(rows, hue, hue_order)
    sns.lineplot(data=rows, x=x, y=value, hue=hue, hue_order=order, palette=palette(order),
                 estimator="mean", errorbar=t_interval, err_style="bars", marker="o",
                 err_kws={"capsize": 3, "elinewidth": 1}, ax=ax, legend=legend)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or value)
    if legend and ax.get_legend() is not None:
        ax.legend(title=hue)
    return ax


def ci_barplot(
    rows: pd.DataFrame,
    x: str,
    hue: str,
    value: str = "value",
    ax: Axes | None = None,
    ylabel: str | None = None,
    order: Sequence[object] | None = None,
    hue_order: Sequence[object] | None = None,
    legend: bool = True,
) -> Axes:
    """Grouped bars of the mean of ``value`` per ``x`` and ``hue`` with 95% t-interval bars."""
    ax = ax or plt.subplots()[1]
    hues = _hue_order(rows, hue, hue_order)
    xs = list(order) if order is not None else list(dict.fromkeys(rows[x]))
    sns.barplot(data=rows, x=x, y=value, hue=hue, order=xs, hue_order=hues,
                palette=palette(hues), saturation=1.0, estimator="mean", errorbar=t_interval,
                capsize=0.1,
                err_kws={"linewidth": 1, "color": "black"}, ax=ax, legend=legend)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or value)
    if legend and ax.get_legend() is not None:
        ax.legend(title=hue)
    return ax


def figure_legend(fig: Figure, axes: Iterable[Axes] | None = None, title: str | None = None,
                  below: bool = False) -> None:
    """One legend for the whole figure with every entry of every panel (first label wins),
    replacing the panels' own legends, so the legend matches every panel. It sits right of the
    panels (``below=True``: under them); the page's PNG is cropped to include it. Call it after
    ``fig.tight_layout()``."""
    axes = list(fig.axes if axes is None else axes)
    entries: dict[str, object] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            if not label.startswith("_"):
                entries.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if entries:
        where = ({"loc": "upper center", "bbox_to_anchor": (0.5, 0.0),
                  "ncols": min(len(entries), 4)}
                 if below else {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)})
        fig.legend(list(entries.values()), list(entries), title=title, frameon=False, **where)


def method_legend(ax_or_fig: Axes | Figure, methods: Iterable[str], title: str | None = "method",
                  **kwargs: object) -> None:
    """A legend of ``methods`` in their book-wide colours (for hand-drawn panels)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=method_color(m), marker="o", label=m) for m in methods]
    ax_or_fig.legend(handles=handles, title=title, **kwargs)


def colors_of(methods: Iterable[str]) -> Mapping[str, str]:
    """``{method: colour}`` for hand-drawn plots (``ax.errorbar(..., color=colors[m])``)."""
    return {m: method_color(m) for m in methods}
