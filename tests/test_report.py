"""The generated pages: ledger, headline, status and citation show the five categories, per-test
outcomes, revisions and links to claim sections, in the chapters' number format, with no reprs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from softmax_repro.pipeline import claims, report

ROOT = Path(__file__).resolve().parents[1]

CLAIMS = [
    {"id": "toy-a-beats-b", "paper": "ren2020balanced", "chapter": "99_toy",
     "claim": "A with n^{1/4} beats B.", "where": "Table 1",
     "paper_values": {"a": 77.4, "nats": None, "no number": None}, "rule": "a − b > 0",
     "health": [{"label": "B converged", "kind": "mean", "metric": "val_change", "where": {},
                 "a": "b", "direction": "less", "threshold": 0.05,
                 "source": "ours: a twentieth of the range"}],
     "tests": [{"label": "d=1", "kind": "paired_difference", "metric": "top1", "where": {"d": 1},
                "a": "a", "b": "b", "direction": "greater", "threshold": 0.0,
                "effect_of_interest": {"value": 0.01, "source": "ours: one point"}}],
     "revisions": [{"date": "2026-11-29", "change": "threshold 0.02 → 0",
                    "reason": "the paper claims a gain, not its size"}]},
    {"id": "toy-b-small", "paper": "ren2020balanced", "chapter": "99_toy",
     "claim": "B is below 0.5.", "where": "Table 2", "paper_values": {"numbers": "not found"},
     "rule": "b < 0.5",
     "tests": [{"label": "d=1 noisy", "kind": "mean", "metric": "top1", "where": {"d": 1},
                "a": "b", "direction": "less", "threshold": 0.5,
                "effect_of_interest": {"value": 0.001, "source": "ours"},
                "null": {"value": 0.6, "source": "chance"}}]},
    {"id": "toy-na", "paper": "miao2019kernelized", "chapter": "99_toy", "claim": "Not tried.",
     "where": "x", "paper_values": {}, "not_attempted": "no GPU"},
    {"id": "toy-later", "paper": "miao2019kernelized", "chapter": "98_later",
     "claim": "Later.", "where": "x", "paper_values": {}, "rule": "c > 0",
     "tests": [{"label": "c", "kind": "mean", "metric": "top1", "where": {}, "a": "c",
                "direction": "greater", "threshold": 0.0,
                "effect_of_interest": {"value": 0.1, "source": "ours"},
                "null": {"value": 0.0, "source": "zero"}}]},
]


def _rows() -> pd.DataFrame:
    noise = [0.03, -0.02, 0.01, -0.04, 0.02]
    rows = [{"method": m, "d": 1, "seed": s, "metric": "top1",
             "value": (0.6 + 0.01 * s if m == "a" else 0.5 + noise[s])}
            for m in ("a", "b") for s in range(5)]
    rows += [{"method": "b", "d": 1, "seed": s, "metric": "val_change", "value": 0.01}
             for s in range(5)]
    return pd.DataFrame(rows)


@pytest.fixture
def verdicts():
    parsed = claims.parse_claims(CLAIMS)
    return report.compute_verdicts(parsed, {"99_toy": _rows()})


def _no_reprs(text: str) -> None:
    assert "None" not in text and not re.search(r"\bnan\b|NaN", text)
    assert "n^{1/4}" not in text.replace("$n^{1/4}$", "")


def test_inline_math_sets_tex_fragments_as_math():
    assert report.inline_math("n^{1/4} is worse than n^1.") == "$n^{1/4}$ is worse than $n^1$."
    kept = "balanced_softmax and $x^2$ stay"
    assert report.inline_math(kept) == kept


def test_summary_shows_the_five_categories(verdicts):
    text = report.summary_markdown(verdicts)
    for category in ("reproduced", "partly reproduced", "inconclusive", "contradicted",
                     "not attempted", "no results"):
        assert f"| {category} |" in text
    assert "| **total** | **4** |" in text


def test_ledger_links_claims_shows_tests_revisions_and_health(verdicts):
    text = report.ledger_markdown(verdicts, "cpu", chapters=["99_toy"])
    _no_reprs(text)
    assert "(ledger-toy-a-beats-b)=" in text and "(ledger-toy-na)=" in text
    assert "{ref}`chapter 99 <claim-toy-a-beats-b>`" in text
    assert "claim-toy-na" not in text  # not attempted: no section in the chapter
    assert "claim-toy-later" not in text  # its chapter is not in the book
    assert "A with $n^{1/4}$ beats B." in text
    assert "2026-11-29: threshold 0.02 → 0 — *why:* the paper claims a gain" in text
    assert "B converged" in text and "**healthy**" in text
    assert "| MDE | effect of interest | null | outcome | seeds needed |" in text
    assert "inconclusive (underpowered)" in text and "0.010 (ours: one point)" in text
    assert "Paper: a: 77.4; nats: —; no number: —" in text
    assert "Why not attempted: no GPU" in text


def test_headline_has_paper_and_link_columns(verdicts):
    text = report.headline_markdown(verdicts, chapters=["99_toy"])
    _no_reprs(text)
    assert "| claim | paper | verdict | tests | section | ledger |" in text
    assert "{cite:t}`ren2020balanced`" in text and "{ref}`entry <ledger-toy-b-small>`" in text
    assert "Not tried." not in text  # not attempted claims stay in the ledger


def test_status_shows_runtime_categories_and_environment(tmp_path, verdicts):
    chapters, results = tmp_path / "chapters", tmp_path / "results" / "cpu"
    chapters.mkdir()
    results.mkdir(parents=True)
    (chapters / "99_toy.ipynb").write_text(json.dumps(
        {"metadata": {"papermill": {"duration": 395.2}}, "cells": []}))
    (results / "99_toy.json").write_text(json.dumps({"provenance": {
        "started": "2026-11-29T10:00:00+00:00", "wall_s": 388.2,
        "timings_s": {"train": 380.0, "data": 8.2}, "commit": "8499e84e3de5", "dirty": False,
        "device": "cpu", "cpu": "AMD EPYC", "python": "3.11.7", "platform": "Linux",
        "torch_threads": 1, "packages": {"torch": "2.13.0+cpu"}}, "rows": []}))
    (chapters / "98_later.ipynb").write_text(json.dumps({"metadata": {}, "cells": []}))
    text = report.status_markdown("cpu", tmp_path / "results", chapters, verdicts)
    _no_reprs(text)
    assert ("| {doc}`/chapters/99_toy` | 2026-11-29 10:00 | 6 min 35 s | 6 min 28 s | "
            "train 6 min 20 s, data 8 s |") in text
    assert "1 reproduced, 1 inconclusive, 1 not attempted" in text
    assert "no results at profile cpu" in text and "| torch | 2.13.0+cpu |" in text


def test_published_url_comes_from_the_publish_workflow_and_the_repository(tmp_path):
    assert report.published_url(ROOT) == "https://softmax-reproduced.github.io/softmax-reproduced/"
    assert report.published_url(tmp_path) is None  # no workflow: no URL


def test_citation_block_names_version_url_commit_and_authors():
    text = report.citation_markdown(["8499e84e3d"], ROOT)
    assert "@misc{softmaxreproduced," in text and "version = {0." in text
    assert "url     = {https://softmax-reproduced.github.io/softmax-reproduced/}" in text
    assert "numbers from commit 8499e84e3d" in text
    assert "author  = {{The Softmax, Reproduced team}}" in text


def test_write_report_on_the_committed_results(tmp_path):
    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    written = report.write_report("cpu", ROOT / "results", book)
    assert {p.name for p in written} == {"ledger.md", "status.md", "headline.md", "citation.md"}
    for path in written:
        _no_reprs(path.read_text())
