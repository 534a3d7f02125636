"""The reader's page: the one number/table format, glue helpers, the verdict box and test table,
progress kept off the page, book-wide colours, the toc and bibliography, and no typed result
numbers in the chapters' markdown."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from softmax_repro.metrics import mean_ci
from softmax_repro.pipeline import claims, page, plotting, tables

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((0.8234, 0.811, 0.835), {}, "0.823 [0.811, 0.835]"),
    ((-0.005, -0.013, 0.003), {}, "−0.005 [−0.013, 0.003]"),
    ((0.0007, -0.0065, 0.0079), {}, "0.0007 [−0.0065, 0.0079]"),
    ((12049.0, 11708.0, 12390.0), {}, "12\u202f049 [11\u202f708, 12\u202f390]"),
    ((0.823, 0.811, 0.835), {"scale": 100, "unit": "%"}, "82.3% [81.1%, 83.5%]"),
    ((0.5, float("nan"), float("nan")), {}, "0.500"),
    ((float("nan"), 0.1, 0.2), {}, "—"),
    ((0.8234, 0.811, 0.835), {"digits": 1}, "0.8 [0.8, 0.8]"),
])
def test_format_ci_is_the_one_interval_format(args, kwargs, expected):
    assert tables.format_ci(*args, **kwargs) == expected


def test_format_number_missing_minus_integers_and_percent():
    assert tables.format_number(None) == tables.format_number(float("nan")) == "—"
    assert tables.format_number(3) == "3" and tables.format_number(10.0) == "10"
    assert tables.format_number(-0.25) == "−0.250"
    assert tables.format_number(-0.0001, 3) == "0.000"  # no "−0.000"
    assert tables.format_number(1234.6) == "1235" and tables.format_number(12345) == "12\u202f345"
    assert tables.format_percent(0.8234) == "82.3%"
    assert tables.format_number(float("-inf")) == "−∞"
    assert tables.format_seconds(388.2) == "6 min 28 s" and tables.format_seconds(None) == "—"


def test_auto_decimals_follow_magnitude_and_half_width():
    assert tables.auto_decimals([0.823]) == 3
    assert tables.auto_decimals([123.4]) == 0
    assert tables.auto_decimals([123.4], half_width=3.3) == 0
    assert tables.auto_decimals([123.4], half_width=1.3) == 1
    assert tables.auto_decimals([0.0079]) == 4
    assert tables.auto_decimals([0.0, float("nan")]) == 0


def _rows() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "imbalance": f, "seed": s,
                          "value": 0.5 + 0.01 * s + (m == "a") * 0.1}
                         for m in ("a", "b") for f in (10.0, 100.0) for s in range(5)
                         if not (m == "b" and f == 100.0)])


def test_ci_table_has_text_headers_no_index_and_dashes_for_missing():
    table = tables.ci_table(_rows(), "method", "imbalance")
    assert list(table.columns) == ["method", "10", "100"]
    assert isinstance(table.index, pd.RangeIndex)
    assert table.loc[table["method"] == "b", "100"].item() == "—"
    mean, low, high = mean_ci([0.6 + 0.01 * s for s in range(5)])
    assert table.loc[table["method"] == "a", "10"].item() == tables.format_ci(mean, low, high, 3)
    text = tables.Table(table)._repr_markdown_()
    assert "NaN" not in text and "nan" not in text and "10.0" not in text


def test_tidy_moves_the_index_and_formats_each_column():
    frame = pd.DataFrame({"x": [1.0, np.nan], "y": ["a", None], "z": [0.5, 10.0]},
                         index=pd.Index([10.0, 20.0], name="d"))
    out = tables.tidy(frame)
    assert list(out.columns) == ["d", "x", "y", "z"]
    assert out.values.tolist() == [["10", "1", "a", "0.5"], ["20", "—", "—", "10.0"]]


def test_markdown_table_escapes_and_fills():
    text = tables.markdown_table([{"a": "x|y", "b": None}, {"a": "line\nbreak", "b": 0.5}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | — |",
                                 "| line break | 0.500 |"]


# --------------------------------------------------------------------------- glue


@dataclasses.dataclass
class Glued:
    values: dict = dataclasses.field(default_factory=dict)    # name -> glued object
    displayed: dict = dataclasses.field(default_factory=dict)  # name -> display flag
    dpi: dict = dataclasses.field(default_factory=dict)        # name -> figure dpi when glued


@pytest.fixture
def glued(monkeypatch):
    """Capture myst_nb.glue calls."""
    import myst_nb

    record = Glued()

    def glue(name, value, display=True):
        record.values[name], record.displayed[name] = value, display
        if hasattr(value, "get_dpi"):
            record.dpi[name] = value.get_dpi()  # what its PNG is rendered at

    monkeypatch.setattr(myst_nb, "glue", glue)
    monkeypatch.setattr(page, "_GLUED", {})  # a fresh notebook
    return record


def test_glue_helpers_store_text_without_quotes_and_never_display(glued):
    page.glue_ci("gain", 0.057, 0.041, 0.073)
    page.glue_estimate("est", [0.1, 0.12, 0.11])
    page.glue_percent("pct", 0.8234)
    page.glue_number("n", 12049)
    page.glue_markdown("box", "**bold**")
    assert not any(glued.displayed.values())
    assert repr(glued.values["gain"]) == "0.057 [0.041, 0.073]"
    assert repr(glued.values["est"]) == tables.format_ci(*mean_ci([0.1, 0.12, 0.11]))
    assert repr(glued.values["pct"]) == "82.3%" and repr(glued.values["n"]) == "12\u202f049"
    assert glued.values["gain"]._repr_markdown_() is None  # {glue} shows plain text
    assert glued.values["box"]._repr_markdown_() == "**bold**"


def test_a_name_is_glued_once(glued):
    page.glue_number("n", 5)
    page.glue_number("n", 5)  # the same text again: skipped, no duplicate for myst-nb
    assert list(glued.values) == ["n"]
    with pytest.raises(ValueError, match="'n' is already glued"):
        page.glue_number("n", 6)


def test_glue_figure_closes_the_figure_at_150_dpi(glued):
    fig, _ = plt.subplots()
    fig.set_dpi(72)
    page.glue_figure("fig-x", fig)
    assert glued.values["fig-x"] is fig and glued.dpi["fig-x"] >= 150
    assert not plt.fignum_exists(fig.number)


# --------------------------------------------------------------------------- claims on the page


CLAIMS = [
    {"id": "toy-a-beats-b", "paper": "ren2020balanced", "chapter": "99_toy", "claim": "A beats B.",
     "where": "Table 1", "paper_values": {"a": 77.4, "b": None}, "rule": "a − b > 0",
     "tests": [{"label": "d=1", "kind": "paired_difference", "metric": "top1", "where": {"d": 1},
                "a": "a", "b": "b", "direction": "greater", "threshold": 0.0,
                "effect_of_interest": {"value": 0.01, "source": "ours: one point"}}]},
    {"id": "toy-b-small", "paper": "ren2020balanced", "chapter": "99_toy",
     "claim": "B is below 0.5.", "where": "Table 2", "paper_values": {"numbers": "not found"},
     "rule": "b < 0.5",
     "tests": [{"label": "d=1 noisy", "kind": "mean", "metric": "top1", "where": {"d": 1},
                "a": "b", "direction": "less", "threshold": 0.5,
                "effect_of_interest": {"value": 0.001, "source": "ours"},
                "null": {"value": 0.6, "source": "chance"}}]},
    {"id": "toy-na", "paper": "ren2020balanced", "chapter": "99_toy", "claim": "Not tried.",
     "where": "x", "paper_values": {}, "not_attempted": "no GPU"},
]


def _toy_rows() -> pd.DataFrame:
    noise = [0.03, -0.02, 0.01, -0.04, 0.02]
    return pd.DataFrame([{"method": m, "d": 1, "seed": s, "metric": "top1",
                          "value": (0.6 + 0.01 * s if m == "a" else 0.5 + noise[s])}
                         for m in ("a", "b") for s in range(5)])


@pytest.fixture
def toy_claims():
    return claims.parse_claims(CLAIMS)


def test_verdict_box_lists_every_claim_with_verdict_evidence_and_link(toy_claims):
    box = page.verdict_box("99_toy", _toy_rows(), toy_claims)
    assert box.startswith("```{admonition} Verdicts")
    lines = [line for line in box.splitlines() if line.startswith("- ")]
    assert len(lines) == 3
    assert lines[0].startswith("- **reproduced** — {ref}`claim-toy-a-beats-b`: 1 of 1 tests passed")
    assert "inconclusive" in lines[1] and "{ref}`claim-toy-b-small`" in lines[1]
    assert lines[2] == "- **not attempted** — Not tried: no GPU"
    assert "None" not in box and "nan" not in box.lower()


def test_test_table_has_power_null_and_outcome_columns(toy_claims):
    frame = page.test_frame(page.chapter_verdicts("99_toy", _toy_rows(), toy_claims))
    assert list(frame.columns) == ["claim", "test", "comparison", "ours [95% CI]", "seeds", "MDE",
                                   "effect of interest", "null", "outcome", "seeds needed"]
    first, second = frame.to_dict("records")
    assert first["outcome"] == "passed" and first["seeds needed"] == "—"
    assert first["effect of interest"] == "0.010 (ours: one point)"
    assert second["outcome"].startswith("inconclusive (underpowered")
    assert int(second["seeds needed"].replace("\u202f", "")) > 5
    one = page.test_table("99_toy", _toy_rows(), claim="toy-b-small", claims=toy_claims)
    assert "claim" not in one.frame.columns and len(one.frame) == 1
    with pytest.raises(KeyError, match="toy-nope"):
        page.test_table("99_toy", _toy_rows(), claim="toy-nope", claims=toy_claims)


def test_paper_vs_ours_shows_paper_values_without_none(toy_claims):
    text = page.paper_vs_ours("99_toy", _toy_rows(), toy_claims)._repr_markdown_()
    assert "a: 77.4; b: —" in text and "None" not in text and "d=1: " in text


def test_config_table_is_two_columns_not_a_repr():
    @dataclasses.dataclass(frozen=True)
    class Config:
        seeds: tuple = (0, 1, 2)
        lr: float = 0.001
        datasets: tuple = ("mnist1d", "digits")
        extra: dict = dataclasses.field(default_factory=lambda: {"a": 1})

    frame = page.config_table(Config()).frame
    assert list(frame.columns) == ["parameter", "value"]
    assert frame.values.tolist() == [["seeds", "0, 1, 2"], ["lr", "0.001"],
                                     ["datasets", "mnist1d, digits"], ["extra", "a=1"]]


def test_rerun_and_runtime_come_from_the_provenance():
    prov = {"profile": "cpu", "wall_s": 388.2, "cpu": "Test CPU", "started": "2026-11-29T10:00:00",
            "config": {"seeds": [0, 1]}, "commit": "abc", "dirty": True}
    text = page.rerun_markdown("05_margins", prov)
    assert "make chapter NAME=05_margins PROFILE=cpu" in text and "6 min 28 s" in text
    smoke = page.rerun_markdown("05_margins", {**prov, "profile": "smoke"})
    assert "`smoke` profile" in smoke
    table = page.runtime_table(prov).frame.set_index("item")["value"]
    assert table["commit"] == "abc (dirty)" and table["seeds"] == "0, 1"
    assert table["device"] == "—" and "None" not in table.to_string()


# --------------------------------------------------------------------------- progress


def test_progress_to_terminal_is_a_no_op_outside_a_kernel():
    before = sys.stderr
    with page.progress_to_terminal():
        assert sys.stderr is before


def test_progress_to_terminal_writes_to_the_kernels_original_stderr():
    read_end, write_end = os.pipe()

    class FakeOutStream:  # what ipykernel installs as sys.stderr
        session = object()
        _original_stdstream_copy = write_end

        def write(self, text):
            raise AssertionError("progress reached the notebook")

        def flush(self):
            pass

    fake = FakeOutStream()
    saved = sys.stderr
    sys.stderr = fake
    try:
        with page.progress_to_terminal():
            print("bar 50%", file=sys.stderr, flush=True)
        assert sys.stderr is fake
    finally:
        sys.stderr = saved
        os.close(write_end)
    assert os.read(read_end, 100) == b"bar 50%\n"
    os.close(read_end)


# --------------------------------------------------------------------------- typed numbers


def test_typed_numbers_finds_results_and_keeps_the_allow_list():
    text = ("prose says 0.349 [0.268, 0.429] s and 8,941 tokens/s; 399 s; 54.0% ± 5.9; "
            "in 2019, Section 4.2, Eq. 10, Table 5, arXiv 2007.10740, a 95% interval, "
            "$IoU \\ge 0.5$, {glue}`gain`, `lr=0.001`, 5 seeds and 10,000 points\n"
            "(claim-x)=\n```{glue:figure} fig\n:alt: 0.5\n```\n")
    assert page.typed_numbers(text) == ["0.349", "[0.268, 0.429]", "8,941 tokens/s", "399 s",
                                        "54.0%", "± 5.9"]


def test_comment_lines_catch_a_wrapped_percent():
    assert page.comment_lines("gains of 3.0\n% of the classes\n```\n% code\n```") == [
        "% of the classes"]


def _markdown_cells(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")),
                         ids=lambda p: p.stem)
def test_chapter_markdown_holds_no_typed_result_numbers(notebook):
    """Every number in a chapter's prose is glued from the run (page.typed_numbers lists the
    allow-list); no line starts with "%" (MyST would drop it as a comment)."""
    typed = [n for text in _markdown_cells(notebook) for n in page.typed_numbers(text)]
    assert not typed, f"{notebook.name}: typed numbers {typed[:20]} — glue them (page.glue_*)"
    swallowed = [line for text in _markdown_cells(notebook) for line in page.comment_lines(text)]
    assert not swallowed, f"{notebook.name}: lines MyST drops as comments: {swallowed}"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")),
                         ids=lambda p: p.stem)
def test_chapter_follows_the_page_skeleton(notebook):
    """Verdict box and re-run line glued into the first cell; the parameters cell removed; a
    claim-<id> label for every attempted claim of the chapter."""
    cells = json.loads(notebook.read_text())["cells"]
    first = "".join(cells[0]["source"])
    assert "{glue:md} verdict_box" in first and "{glue:md} rerun" in first
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert params and "remove-cell" in params[0]["metadata"]["tags"]
    text = "\n".join(_markdown_cells(notebook))
    attempted = [c.id for c in claims.load_claims() if c.chapter == notebook.stem
                 and not c.not_attempted]
    missing = [i for i in attempted if f"(claim-{i})=" not in text]
    assert not missing, f"{notebook.name}: no section label for claims {missing}"


# --------------------------------------------------------------------------- colours


def _committed_methods() -> dict[str, list[str]]:
    """Methods per chapter and part (``part`` column where a chapter has several experiments:
    no figure mixes parts, so colours must differ within a part)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "results" / "cpu").glob("*.json")):
        for r in json.loads(path.read_text())["rows"]:
            if r.get("method"):
                key = f"{path.stem} / {r['part']}" if r.get("part") else path.stem
                out.setdefault(key, set()).add(r["method"])
    return {key: sorted(methods) for key, methods in out.items()}


def test_every_committed_method_has_a_book_wide_colour_distinct_within_its_part():
    for chapter, methods in _committed_methods().items():
        missing = [m for m in methods if m not in plotting.METHOD_COLORS]
        assert not missing, f"{chapter}: add {missing} to plotting.METHOD_COLORS"
        colours = [plotting.METHOD_COLORS[m] for m in methods]
        assert len(set(colours)) == len(colours), f"{chapter}: two methods share a colour"
    assert plotting.method_color("softmax") == plotting.BASELINE


def test_t_interval_is_the_tables_interval():
    values = [0.1, 0.3, 0.2, 0.25]
    _, low, high = mean_ci(values)
    assert plotting.t_interval(values) == pytest.approx((low, high))
    assert plotting.t_interval([0.5]) == (0.5, 0.5)


def test_plots_use_method_colours_and_one_figure_legend():
    plotting.set_theme()
    rows = pd.DataFrame([{"method": m, "x": x, "seed": s, "value": 0.1 * s + x}
                         for m in ("softmax", "balanced_softmax", "focal") for x in (1, 2)
                         for s in range(3)])
    fig, axes = plt.subplots(1, 2)
    plotting.ci_lineplot(rows, "x", "method", ax=axes[0])
    plotting.ci_barplot(rows[rows["method"] != "focal"], "x", "method", ax=axes[1])
    line_colours = {line.get_label(): matplotlib.colors.to_hex(line.get_color())
                    for line in axes[0].get_lines() if not line.get_label().startswith("_")}
    assert line_colours.get("focal") == plotting.METHOD_COLORS["focal"]
    bar_colours = {matplotlib.colors.to_hex(p.get_facecolor()) for p in axes[1].patches
                   if p.get_height() > 0}
    assert bar_colours == {plotting.METHOD_COLORS["softmax"],
                           plotting.METHOD_COLORS["balanced_softmax"]}
    plotting.figure_legend(fig)
    assert all(ax.get_legend() is None for ax in axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["softmax", "balanced_softmax", "focal"]
    plt.close(fig)


# --------------------------------------------------------------------------- book structure


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def test_toc_lists_every_chapter_under_a_part_with_an_introduction():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = _toc_files(toc)
    chapters = [f for f in files if f.startswith("chapters/")]
    notebooks = [f"chapters/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")]
    assert sorted(chapters) == sorted(set(chapters)) and set(notebooks) <= set(chapters)
    for part in toc["parts"]:
        for entry in part["chapters"]:
            if entry.get("sections"):
                assert entry["file"].startswith("parts/")
                assert (ROOT / "book" / f"{entry['file']}.md").exists()
    for name in files:
        if not name.startswith("chapters/"):
            assert (ROOT / "book" / f"{name}.md").exists() or name in ("ledger", "status")


def test_bibliography_titles_keep_their_capitals():
    text = (ROOT / "book" / "references.bib").read_text()
    for title in re.findall(r"^\s*title\s*=\s*\{(.*)\},?\s*$", text, flags=re.M):
        outside = re.sub(r"\{[^{}]*\}", "", title[1:-1] if title.startswith("{{") else title)
        assert not re.search(r"[A-Z]", outside), f"unprotected capitals in title {title!r}"


def test_bibliography_labels_are_author_year():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import authoryear
    finally:
        sys.path.pop(0)
    from pybtex.database import parse_string

    bib = parse_string("""
      @misc{a, author = {Qin, Zhenyue and Kim, Dongwoo and Gedeon, Tom}, year = {2019}, title = {A}}
      @misc{b, author = {Qin, Zhenyue and Kim, Dongwoo}, year = {2019}, title = {B}}
      @misc{c, author = {Francis, W. Nelson and Ku{\\v c}era, Henry}, year = {1979}, title = {C}}
      @misc{d, author = {Qin, Zhenyue and Kim, Dongwoo and Gedeon, Tom}, year = {2019}, title = {D}}
    """, "bibtex")
    labels = list(authoryear.AuthorYearLabelStyle().format_labels(bib.entries.values()))
    assert labels == ["Qin et al. 2019a", "Qin and Kim 2019", "Francis and Kučera 1979",
                      "Qin et al. 2019b"]
    assert not any(re.fullmatch(r"[A-Z][A-Za-z+]*\d\d", label) for label in labels)


def test_front_matter_cites_no_missing_file_and_claims_only_what_holds():
    book = ROOT / "book"
    for page_name in ("intro.md", "methodology.md", "how-to-cite.md", "troubleshooting.md"):
        text = (book / page_name).read_text()
        assert "ENVIRONMENT.md" not in text and "claims.yaml`" not in text, page_name
        assert "at least five seeds" not in text and "nothing downloaded" not in text, page_name
    assert "npm" in (book / "intro.md").read_text()
    assert math.isfinite(1.0)
