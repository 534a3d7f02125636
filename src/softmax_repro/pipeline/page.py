"""What a chapter notebook calls to build the reader's page.

Every number in a chapter's prose reaches the page through myst-nb ``glue`` from the run (the
``glue_*`` helpers here, all with ``display=False``, all in the book's one number format from
:mod:`softmax_repro.pipeline.tables`); verdicts, the test table and the paper's numbers come from
``data/claims/`` through :mod:`softmax_repro.pipeline.claims`. Nothing on the page is typed from a
result: ``tests/test_page.py`` rejects result-like numbers typed into a chapter's markdown cells
(:func:`typed_numbers` lists the allow-list) and lines MyST would drop (:func:`comment_lines`).

The notebook skeleton (``notebooks/NN_<name>.ipynb``), top to bottom
-----------------------------------------------------------------------

1. **Markdown** — title, one paragraph on the paper's idea with its key equation, then the
   verdict box and the re-run line, both glued (they appear before any code output)::

       # Margins on the softmax: L-Softmax, D-Softmax and HASeparator

       {cite:t}`liu2016large` replace ... $$\\cos(m\\theta)$$ ...

       ```{glue:md} verdict_box
       :format: myst
       ```

       ```{glue:md} rerun
       :format: myst
       ```

2. **Code**, tags ``parameters`` and ``remove-cell`` (papermill's injected copy is removed by
   the runner)::

       profile = "cpu"      # smoke | cpu | paper
       seeds = None         # None = the profile's seeds
       device = "auto"      # auto | cpu | cuda
       overrides = {}       # any Config field, e.g. {"epochs": 3}
       results_dir = "results"

3. **Code**, tag ``hide-input`` (no output: progress bars go to the terminal)::

       from softmax_repro.experiments import ch05_margins as chapter
       from softmax_repro.pipeline import page, plotting, tables

       plotting.set_theme()
       config = chapter.make_config(profile, seeds=seeds, device=device, overrides=overrides)
       result = page.run(chapter, config, results_dir=results_dir)
       rows = result.rows
       page.glue_header(chapter.CHAPTER, result)   # glues verdict_box, rerun, runtime

4. **Markdown** ``## Parameters``; **code** (``hide-input``): ``page.config_table(config)``.

5. **One section per claim**, in the order of ``data/claims/NN_<name>.yaml``. The markdown cell
   starts with the claim's label (the verdict box and the ledger link to it)::

       (claim-liu2016large-lsoftmax-beats-softmax)=
       ## L-Softmax beats softmax on MNIST-1D

       Setup in words (no result numbers).

   then **code** (``hide-input``) that draws and glues the figure::

       fig, axes = plt.subplots(1, 2, figsize=(10, 4))
       plotting.ci_lineplot(part, x="m", hue="method", ax=axes[0])   # book-wide colours,
       plotting.ci_barplot(other, x="dataset", hue="method", ax=axes[1])  # t-interval bars
       fig.tight_layout()
       plotting.figure_legend(fig)   # one legend listing every panel's entries
       page.glue_figure("fig-lsoftmax-margin", fig)

   and **markdown** that places it with a number, a caption and alt text::

       ```{glue:figure} fig-lsoftmax-margin
       :name: fig-lsoftmax-margin
       :alt: Top-1 accuracy against the margin m, one line per method.

       Top-1 accuracy (mean over seeds, 95% t-interval) against the margin $m$.
       ```

   then tables (``hide-input``): ``tables.ci_table(part, "method", "m")`` displayed with
   ``page.show(...)``, and the claim's test table ``page.test_table(chapter.CHAPTER, rows,
   claim="liu2016large-lsoftmax-beats-softmax")`` (estimate [95% CI], MDE, effect of interest
   and its source, null, outcome with reason, seeds needed).

6. ``## The paper's numbers beside ours`` — **code** (``hide-input``):
   ``page.paper_vs_ours(chapter.CHAPTER, rows)`` (the paper's numbers from claims.yaml).

7. ``## Deviations from the paper`` — a markdown table (what, why, expected effect) with no
   result numbers, or ``page.show(...)`` of a frame.

8. ``## Discussion`` — a **code** cell (tag ``remove-cell``) glues every number the prose
   quotes (``page.glue_ci("bs_gain_if100", *est)``, ``page.glue_estimate(...)``,
   ``page.glue_percent(...)``, ``page.glue_number(...)``, ``page.glue_text(...)``); the
   markdown then writes ``{glue}`bs_gain_if100``` — never a typed number. Allowed typed numbers:
   years, constants inside equations, section and equation numbers, names such as MNIST-1D.

9. ``## Runtime and environment`` — **code** (``hide-input``):
   ``page.runtime_table(result.provenance)``.

Rules: no bare ``config`` or frame reprs (use :func:`config_table`, :func:`show`,
``tables.ci_table``); one figure per ``glue_figure`` (closed after gluing, so it is not shown
twice); every cell that only formats or plots is ``hide-input``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from softmax_repro.metrics import mean_ci
from softmax_repro.pipeline import claims as claims_mod
from softmax_repro.pipeline import tables
from softmax_repro.pipeline.results import ChapterResult

RERUN_PROFILE = "cpu"
MIN_FIGURE_DPI = 150
HEADER_NAMES = ("verdict_box", "rerun", "runtime")
"""Glue names :func:`glue_header` defines (a chapter must not reuse them)."""


# --------------------------------------------------------------------------- glue


class GluedText:
    """Text shown as is by ``{glue}``/``{glue:text}`` (a ``str`` would show with its quotes);
    with ``markdown=True`` also ``text/markdown`` for ``{glue:md}``."""

    def __init__(self, text: str, markdown: bool = False) -> None:
        self.text = text
        self.markdown = markdown

    def __repr__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str | None:
        return self.text if self.markdown else None


_GLUED: dict[str, str] = {}
"""Names glued by this kernel (one notebook) and what they hold: myst-nb warns, and the strict
build fails, when a name is glued twice."""


def _glue(name: str, value: Any) -> None:
    """Glue ``value`` under ``name`` once. Gluing a name again with the same text is skipped (a
    loop that meets one health check from several tests); with a different value it is an error
    naming the key, raised while the notebook runs instead of a warning at build time."""
    from myst_nb import glue

    text = repr(value) if isinstance(value, GluedText) else f"<{type(value).__name__} {id(value)}>"
    if name in _GLUED:
        if _GLUED[name] == text:
            return
        raise ValueError(f"glue name {name!r} is already glued with {_GLUED[name]!r}; "
                         f"now {text!r}: every glued name must be unique in a chapter")
    _GLUED[name] = text
    with contextlib.redirect_stdout(io.StringIO()):  # outside a kernel display() prints
        glue(name, value, display=False)


def glue_text(name: str, text: str) -> None:
    """Glue ``text`` under ``name``; markdown shows it with ``{glue}`name```."""
    _glue(name, GluedText(str(text)))


def glue_number(name: str, value: Any, digits: int | None = None, scale: float = 1.0,
                unit: str = "") -> None:
    """Glue one number in the book's format (:func:`tables.format_number`)."""
    glue_text(name, tables.format_number(value, digits, scale, unit))


def glue_percent(name: str, fraction: Any, digits: int = 1) -> None:
    """Glue a fraction as a percentage (``0.823 → 82.3%``)."""
    glue_text(name, tables.format_percent(fraction, digits))


def glue_ci(name: str, mean: Any, low: Any, high: Any, digits: int | None = None,
            scale: float = 1.0, unit: str = "") -> None:
    """Glue ``mean [low, high]`` (:func:`tables.format_ci`)."""
    glue_text(name, tables.format_ci(mean, low, high, digits, scale, unit))


def glue_estimate(name: str, values: Sequence[float] | pd.Series, digits: int | None = None,
                  scale: float = 1.0, unit: str = "") -> None:
    """Glue the mean of per-seed ``values`` with its 95% t-interval."""
    mean, low, high = mean_ci(np.asarray(values, dtype=float))
    glue_ci(name, mean, low, high, digits, scale, unit)


def glue_markdown(name: str, text: str) -> None:
    """Glue MyST markdown for ``{glue:md}`` (directive with ``:format: myst`` for blocks)."""
    _glue(name, GluedText(text, markdown=True))


def glue_figure(name: str, fig: Any, dpi: int = MIN_FIGURE_DPI) -> None:
    """Glue a matplotlib figure for ``{glue:figure}`` (with ``:name:``, ``:alt:`` and a caption)
    and close it, so it is not displayed a second time. Rendered at ``dpi`` (≥ 150)."""
    import matplotlib.pyplot as plt

    fig.set_dpi(max(dpi, MIN_FIGURE_DPI))
    _glue(name, fig)
    plt.close(fig)


def glue_table(name: str, frame: pd.DataFrame | tables.Table) -> None:
    """Glue a table for a ``{glue}`` directive placed in markdown (e.g. inside a figure)."""
    _glue(name, frame if isinstance(frame, tables.Table) else tables.Table(frame))


def show(frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None) -> tables.Table:
    """A frame as the book shows tables (return it as a cell's last line)."""
    return tables.Table(frame, digits)


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def progress_to_terminal() -> Iterator[None]:
    """Send ``sys.stderr`` (where the library's tqdm bars write) to the terminal that runs the
    kernel instead of into the notebook's outputs; outside a Jupyter kernel, change nothing.

    ipykernel forwards everything written to fd 2 into the notebook, but keeps a duplicate of the
    original descriptor (``_original_stdstream_copy``); bars are written there. If the kernel has
    no such copy, they go to ``os.devnull``: the page never carries them.
    """
    stream = sys.stderr
    if not hasattr(stream, "session"):  # not ipykernel's OutStream: already the terminal
        yield
        return
    fd = getattr(stream, "_original_stdstream_copy", None)
    target = (os.fdopen(os.dup(fd), "w", buffering=1) if fd is not None
              else open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    sys.stderr = target
    try:
        yield
    finally:
        sys.stderr = stream
        target.close()


def run(chapter: Any, config: Any, results_dir: str = "results") -> ChapterResult:
    """``chapter.run(config, results_dir=...)`` with progress bars kept off the page."""
    with progress_to_terminal():
        return chapter.run(config, results_dir=results_dir)


# --------------------------------------------------------------------------- header


def rerun_markdown(chapter: str, provenance: Mapping[str, Any]) -> str:
    """The re-run command and how long this run took (MyST)."""
    profile = provenance.get("profile", RERUN_PROFILE)
    hardware = provenance.get("gpu") or provenance.get("cpu") or "unknown hardware"
    took = tables.format_seconds(provenance.get("wall_s"))
    if profile == RERUN_PROFILE:
        when = (f"The run shown here took {took} of computation at the `{profile}` profile on "
                f"{hardware} (the whole notebook's time is on the {{doc}}`/status` page).")
    else:
        when = (f"This page was executed at the `{profile}` profile ({took} of computation on "
                f"{hardware}); the published book runs `{RERUN_PROFILE}`, whose time is on the "
                f"{{doc}}`/status` page.")
    return (f"**Re-run this chapter** (from the repository root; `PROFILE=smoke` for a quick "
            f"check, `PROFILE=paper DEVICE=cuda` for the paper's scale):\n\n"
            f"```bash\nmake chapter NAME={chapter} PROFILE={RERUN_PROFILE}\n```\n\n{when}\n")


def chapter_verdicts(chapter: str, rows: pd.DataFrame,
                     claims: Sequence[claims_mod.Claim] | None = None
                     ) -> list[claims_mod.Verdict]:
    """The verdicts of ``chapter``'s claims from ``rows`` (claims from ``data/claims/``)."""
    return claims_mod.chapter_verdicts(chapter, rows, claims)


def _estimate(outcome: claims_mod.TestOutcome) -> str:
    return tables.format_ci(outcome.mean, outcome.ci_low, outcome.ci_high)


def evidence(verdict: claims_mod.Verdict) -> str:
    """One line of evidence for a verdict: counts of outcomes and its most telling test."""
    if not verdict.outcomes:
        return verdict.reason or "—"
    outcomes = verdict.outcomes
    passed = sum(o.outcome == "passed" for o in outcomes)
    counts = [f"{passed} of {len(outcomes)} tests passed"]
    for kind in ("contradicted", "inconclusive"):
        hits = [o for o in outcomes if o.outcome == kind]
        if hits:
            reasons = sorted({o.reason.split(":")[0] for o in hits if o.reason})
            counts.append(f"{len(hits)} {kind}" + (f" ({', '.join(reasons)})" if reasons else ""))
    shown = next((o for o in outcomes if o.outcome != "passed"), outcomes[0])
    return (f"{'; '.join(counts)}. {shown.test.label}: "
            f"{claims_mod.test_description(shown.test)}, ours {_estimate(shown)}")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def verdict_box(chapter: str, rows: pd.DataFrame,
                claims: Sequence[claims_mod.Claim] | None = None) -> str:
    """The verdict box (MyST): each claim, its verdict, one line of evidence and a link to the
    claim's section (label ``claim-<id>``; a missing label fails the strict build)."""
    verdicts = chapter_verdicts(chapter, rows, claims)
    lines = ["```{admonition} Verdicts", ":class: tip verdict-box", ""]
    if not verdicts:
        lines.append(f"No claims of `{chapter}` are listed in `data/claims/`.")
    for v in verdicts:
        attempted = v.verdict != "not attempted"
        link = f"{{ref}}`claim-{v.claim.id}`" if attempted else _md(v.claim.claim.rstrip(". "))
        lines.append(f"- **{v.verdict}** — {link}: {_md(evidence(v))}")
    lines += ["", "Categories and rules: {doc}`/methodology`. "
              "Every claim of the book: {doc}`/ledger`.", "```", ""]
    return "\n".join(lines)


def glue_header(chapter: str, result: ChapterResult,
                claims: Sequence[claims_mod.Claim] | None = None) -> None:
    """Glue the page header: ``verdict_box`` (the verdict box), ``rerun`` (command and runtime)
    and ``runtime`` (this run's computation time as text)."""
    glue_markdown("verdict_box", verdict_box(chapter, result.rows, claims))
    glue_markdown("rerun", rerun_markdown(chapter, result.provenance))
    glue_text("runtime", tables.format_seconds(result.provenance.get("wall_s")))


# --------------------------------------------------------------------------- tables


def _value_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_value_text(v)}" for k, v in value.items()) or "—"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_value_text(v) for v in value) or "—"
    if isinstance(value, float):
        return f"{value:g}"  # a setting as written, not rounded like a result
    return tables.format_number(value) if not isinstance(value, str) else (value or "—")


def config_table(config: Any) -> tables.Table:
    """A config dataclass as a two-column table (parameter, value) — never its repr."""
    fields = dataclasses.fields(config)
    frame = pd.DataFrame({"parameter": [f.name for f in fields],
                          "value": [_value_text(getattr(config, f.name)) for f in fields]})
    return tables.Table(frame)


def _sourced(item: Any) -> str:
    if item is None:
        return "—"
    return f"{tables.format_number(item.value)} ({item.source})"


def test_frame(verdicts: Sequence[claims_mod.Verdict], with_claim: bool = True) -> pd.DataFrame:
    """One row per test: test, comparison, estimate [95% CI], seeds, MDE, effect of interest with
    its source, null, outcome with reason, seeds needed (all text; ``—`` where none)."""
    records = []
    for v in verdicts:
        for o in v.outcomes:
            test = o.test
            record = {"claim": v.claim.id} if with_claim else {}
            record.update({
                "test": test.label,
                "comparison": claims_mod.test_description(test),
                "ours [95% CI]": _estimate(o),
                "seeds": tables.format_number(o.n),
                "MDE": tables.format_number(o.mde),
                "effect of interest": _sourced(test.effect_of_interest),
                "margin": _sourced(getattr(test, "margin", None)),
                "null": test.null.describe(),
                "outcome": claims_mod.outcome_label(o),
                "seeds needed": ("—" if o.seeds_needed is None or o.outcome == "passed"
                                 else tables.format_number(o.seeds_needed)),
            })
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty and (frame["margin"] == "—").all():
        frame = frame.drop(columns="margin")
    return frame


def test_table(chapter: str, rows: pd.DataFrame, claim: str | None = None,
               claims: Sequence[claims_mod.Claim] | None = None) -> tables.Table:
    """The test table of a chapter, or of one ``claim`` (its id) for the claim's section."""
    verdicts = chapter_verdicts(chapter, rows, claims)
    if claim is not None:
        verdicts = [v for v in verdicts if v.claim.id == claim]
        if not verdicts:
            raise KeyError(f"claim {claim!r} is not a claim of chapter {chapter}")
    return tables.Table(test_frame(verdicts, with_claim=claim is None))


def paper_values_text(values: Mapping[str, Any]) -> str:
    """The paper's numbers of a claim as one line (``—`` when none)."""
    return "; ".join(f"{k}: {_value_text(v)}" for k, v in values.items()) or "—"


def paper_vs_ours(chapter: str, rows: pd.DataFrame,
                  claims: Sequence[claims_mod.Claim] | None = None) -> tables.Table:
    """Per claim: the paper's numbers (from claims.yaml), ours (each test's estimate) and the
    verdict."""
    records = []
    for v in chapter_verdicts(chapter, rows, claims):
        ours = "; ".join(f"{o.test.label}: {_estimate(o)}" for o in v.outcomes) or (v.reason or "—")
        records.append({"claim": v.claim.claim, "where in the paper": v.claim.where or "—",
                        "paper": paper_values_text(v.claim.paper_values), "ours": ours,
                        "verdict": v.verdict})
    return tables.Table(pd.DataFrame.from_records(records))


def runtime_table(provenance: Mapping[str, Any]) -> tables.Table:
    """Runtime and environment of the run as a two-column table (``—`` where not recorded)."""
    config = provenance.get("config") or {}
    packages = provenance.get("packages") or {}
    phases = ", ".join(f"{k} {tables.format_seconds(v)}"
                       for k, v in (provenance.get("timings_s") or {}).items())
    commit = provenance.get("commit")
    items = {
        "started (UTC)": str(provenance.get("started") or "—")[:19].replace("T", " "),
        "computation time": tables.format_seconds(provenance.get("wall_s")),
        "time by phase": phases or "—",
        "profile": provenance.get("profile"),
        "seeds": _value_text(config.get("seeds", [])),
        "device": provenance.get("device"),
        "CPU / GPU": provenance.get("gpu") or provenance.get("cpu"),
        "torch threads": config.get("threads") or provenance.get("torch_threads"),
        "commit": f"{commit}{' (dirty)' if provenance.get('dirty') else ''}" if commit else None,
        "Python / torch": " / ".join(str(v) for v in (provenance.get("python"),
                                                      packages.get("torch")) if v) or None,
    }
    return tables.Table(pd.DataFrame({"item": list(items),
                                      "value": [_value_text(v) if v is not None else "—"
                                                for v in items.values()]}))


# --------------------------------------------------------------------------- typed numbers

_STRIP = [
    re.compile(r"```.*?```", re.S),                        # fenced blocks (directives, code)
    re.compile(r":::.*?:::", re.S),                        # colon fences
    re.compile(r"\$\$.*?\$\$", re.S),                      # display math
    re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S),  # amsmath environments
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),             # inline math: constants allowed
    re.compile(r"\{[\w:-]+\}`[^`]*`"),                     # roles: {glue}`x`, {cite:t}`k`, ...
    re.compile(r"``.*?``|`[^`\n]*`"),                      # inline code
    re.compile(r"^\([\w:.-]+\)=\s*$", re.M),               # MyST labels (claim-<id>)=
    re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+"),  # link targets and URLs
    re.compile(r"<!--.*?-->", re.S),                       # comments
]
_REFERENCE_WORDS = (r"(?:Section|Sections|Sec\.|§|Table|Tables|Tab\.|Figure|Figures|Fig\.|Eq\.|"
                    r"Eqs\.|Equation|Equations|Theorem|Lemma|Proposition|Corollary|Algorithm|"
                    r"Appendix|arXiv|version|v)")
_NUMBER = r"[−-]?\d+(?:,\d{3})*(?:\.\d+)?"
_RESULT_LIKE = re.compile(
    rf"(?<![\w.]){_NUMBER}\s?%"                                  # a percentage
    rf"|(?<![\w.])\d+(?:,\d{{3}})*\.\d+(?![\w.])"                 # a decimal
    rf"|±\s?{_NUMBER}"                                           # a ± half-width
    rf"|\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\]"                     # an interval
    rf"|(?<![\w.]){_NUMBER}\s?(?:s|ms|min|h|nats|ppl)\b"         # a duration or a measured unit
    rf"|(?<![\w.]){_NUMBER}\s?(?:\w+\s?)?/\s?s\b"                 # a throughput (tokens/s)
)
_ALLOWED_BEFORE = re.compile(rf"{_REFERENCE_WORDS}\s*$")
_CONFIDENCE_LEVEL = re.compile(r"^%?\s*(?:Student-t\s+|t-)?(?:confidence|interval|CI|power)\b")


def typed_numbers(markdown: str) -> list[str]:
    """Result-like numbers typed into ``markdown`` (a chapter's markdown cell), which must come
    from ``glue`` instead.

    Result-like: a decimal (``0.349``), a percentage, a ``±`` half-width, an interval
    ``[a, b]``, a number with a unit of time or measurement (``399 s``, ``0.12 nats``) or a
    throughput (``8,941 tokens/s``). Allowed (the documented allow-list): anything inside math
    (``$…$``, ``$$…$$``: constants in equations, and thresholds written as math), glue and other
    roles, code, labels, URLs, and numbers right after a reference word (Section 4.2, Eq. 10,
    Table 5, arXiv 2007.10740), confidence levels (``95% interval``, ``80% power``); integers
    such as years, counts and section numbers are not result-like.
    """
    text = markdown
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    found = []
    for match in _RESULT_LIKE.finditer(text):
        if _ALLOWED_BEFORE.search(text[max(0, match.start() - 20):match.start()]):
            continue
        level = match.group(0).rstrip().endswith("%") or match.group(0).startswith("±")
        if level and _CONFIDENCE_LEVEL.match(text[match.end():match.end() + 30]):
            continue  # a confidence level or power ("95% interval"), not a result
        found.append(match.group(0).strip())
    return found


def comment_lines(markdown: str) -> list[str]:
    """Lines of ``markdown`` that MyST would swallow as comments: they start with ``%`` (outside
    fenced blocks), e.g. a wrapped "… 3.0\\n% of the classes". Rewrap the sentence."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return [line for line in text.splitlines() if line.lstrip().startswith("%")]
