"""Results files with provenance, claims parsing and computed verdicts, and the ledger."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from softmax_repro.config import ConfigError
from softmax_repro.experiments import ch01_balanced_softmax as balanced_softmax
from softmax_repro.pipeline import claims, report, results

ROOT = Path(__file__).resolve().parents[1]


def _rows(diffs, base=0.5, imbalance=100):
    rows = []
    for seed, diff in enumerate(diffs):
        rows += [
            {
                "dataset": "d",
                "imbalance": imbalance,
                "method": "b",
                "seed": seed,
                "metric": "top1",
                "value": base,
            },
            {
                "dataset": "d",
                "imbalance": imbalance,
                "method": "a",
                "seed": seed,
                "metric": "top1",
                "value": base + diff,
            },
        ]
    return rows


def test_write_and_read_results_with_provenance(tmp_path):
    config = balanced_softmax.make_config("smoke")
    path = results.write_results(
        "toy",
        config,
        _rows([0.1, 0.2]),
        results_dir=tmp_path,
        started=results.now(),
        wall_s=1.5,
        device="cpu",
        timings={"train": 1.0},
    )
    assert path == tmp_path / "smoke" / "toy.json"
    rows, prov = results.read_results(path)
    assert len(rows) == 4 and set(results.REQUIRED_COLUMNS) <= set(rows.columns)
    for key in (
        "commit",
        "dirty",
        "profile",
        "config",
        "packages",
        "device",
        "cpu",
        "started",
        "wall_s",
        "timings_s",
    ):
        assert key in prov
    assert prov["packages"]["torch"].startswith("2.13.0")
    assert prov["config"]["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match="written at profile='smoke'"):
        results.read_results(path, profile="cpu")


def test_rows_without_required_columns_are_refused(tmp_path):
    config = balanced_softmax.make_config("smoke")
    with pytest.raises(ValueError, match="lacks"):
        results.write_results(
            "toy",
            config,
            [{"method": "a", "value": 1}],
            results_dir=tmp_path,
            started=results.now(),
            wall_s=0,
            device="cpu",
        )


TEST = {
    "label": "t",
    "kind": "paired_difference",
    "metric": "top1",
    "where": {"imbalance": 100},
    "a": "a",
    "b": "b",
    "direction": "greater",
    "threshold": 0.0,
    "effect_of_interest": {"value": 0.05, "source": "ours: test fixture"},
}


def _claim(tests):
    return claims.parse_claims(
        [
            {
                "id": "x-claim",
                "paper": "x",
                "chapter": "c",
                "claim": "A > B",
                "rule": "a − b > 0",
                "tests": tests,
            }
        ]
    )[0]


@pytest.mark.parametrize(
    ("diffs", "verdict"),
    [
        ([0.10, 0.12, 0.09, 0.11, 0.10], "reproduced"),
        ([-0.10, -0.12, -0.09, -0.11, -0.10], "contradicted"),
        ([0.3, -0.2, 0.25, -0.25, 0.1], "inconclusive"),  # CI straddles 0: the test does not pass
    ],
)
def test_paired_verdicts(diffs, verdict):
    assert claims.evaluate_claim(_claim([TEST]), pd.DataFrame(_rows(diffs))).verdict == verdict


def test_partly_reproduced_when_some_tests_pass():
    rows = pd.DataFrame(_rows([0.1, 0.11, 0.09]) + _rows([-0.1, -0.11, -0.09], imbalance=10))
    other = {**TEST, "label": "u", "where": {"imbalance": 10}}
    verdict = claims.evaluate_claim(_claim([TEST, other]), rows)
    assert verdict.verdict == "partly reproduced"
    assert [o.passed for o in verdict.outcomes] == [True, False]
    assert verdict.outcomes[0].mean == pytest.approx(0.1)


def test_mean_test_and_less_direction():
    rows = pd.DataFrame(
        [
            {"method": "est", "seed": s, "metric": "err", "value": v}
            for s, v in enumerate([0.01, 0.02, 0.015])
        ]
    )
    test = {
        "label": "e",
        "kind": "mean",
        "metric": "err",
        "a": "est",
        "direction": "less",
        "threshold": 0.05,
        "null": {"value": 0.5, "source": "a trivial estimator"},
    }
    assert claims.evaluate_claim(_claim([test]), rows).verdict == "reproduced"


def test_missing_rows_give_no_results_not_a_verdict():
    verdict = claims.evaluate_claim(_claim([TEST]), pd.DataFrame(_rows([0.1, 0.2], imbalance=10)))
    assert verdict.verdict == "no results"


BAD_CLAIMS = [
    ([{"paper": "x", "claim": "c", "not_attempted": "r"}], "missing required key 'id'"),
    ([{"id": "Bad Id", "paper": "x", "claim": "c", "not_attempted": "r"}], "kebab-case"),
    ([{"id": "a", "paper": "x", "claim": "c"}], "exactly one of tests"),
    (
        [{"id": "a", "paper": "x", "claim": "c", "not_attempted": "r", "verdict": "reproduced"}],
        "unknown keys ['verdict']",
    ),
    (
        [
            {
                "id": "a",
                "paper": "x",
                "chapter": "c",
                "claim": "c",
                "rule": "r",
                "tests": [{**TEST, "kind": "ttest"}],
            }
        ],
        "kind='ttest'",
    ),
    (
        [
            {
                "id": "a",
                "paper": "x",
                "chapter": "c",
                "claim": "c",
                "rule": "r",
                "tests": [{**TEST, "direction": "up"}],
            }
        ],
        "direction='up'",
    ),
    (
        [
            {
                "id": "a",
                "paper": "x",
                "chapter": "c",
                "claim": "c",
                "rule": "r",
                "tests": [{k: v for k, v in TEST.items() if k != "b"}],
            }
        ],
        "needs b",
    ),
    ([{"id": "a", "paper": "x", "claim": "c", "not_attempted": "r"}] * 2, "duplicate id"),
    ({"id": "a"}, "must be a YAML list"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_CLAIMS)
def test_malformed_claims_are_rejected(entries, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        claims.parse_claims(entries)


def test_repository_claims_file_is_valid_and_has_no_typed_verdicts():
    entries = [e for f in sorted((ROOT / "data" / "claims").glob("*.yaml"))
               for e in yaml.safe_load(f.read_text())]
    parsed = claims.load_claims()
    assert len(parsed) == len(entries) >= 15
    assert all("verdict" not in e for e in entries)
    bib = (ROOT / "book" / "references.bib").read_text()
    for claim in parsed:
        assert f"{{{claim.paper}," in bib, f"{claim.paper} is not in book/references.bib"


def test_committed_ledger_matches_committed_results(tmp_path):
    """The ledger in the book is exactly what the committed cpu results give."""
    committed = (ROOT / "book" / "ledger.md").read_text()
    if not list((ROOT / "results" / "cpu").glob("*.json")):
        pytest.skip("no cpu results committed yet")
    book = tmp_path / "book"
    (book / "chapters").mkdir(parents=True)
    for nb in (ROOT / "book" / "chapters").glob("*.ipynb"):
        (book / "chapters" / nb.name).write_text(nb.read_text())
    report.write_report("cpu", ROOT / "results", book)
    assert (book / "ledger.md").read_text() == committed


def test_report_pages(tmp_path):
    config = balanced_softmax.make_config("smoke")
    results.write_results(
        "01_balanced_softmax",
        config,
        [
            {**r, "dataset": "mnist1d-lt"}
            for r in _rows([0.1, 0.12, 0.11])
            for r in [{**r, "method": {"a": "balanced_softmax", "b": "softmax"}[r["method"]]}]
        ],
        results_dir=tmp_path / "results",
        started=results.now(),
        wall_s=2.0,
        device="cpu",
        timings={"data": 1.0, "train+evaluate": 1.0},
    )
    (tmp_path / "book" / "chapters").mkdir(parents=True)
    nb = {
        "cells": [],
        "metadata": {"papermill": {"duration": 12.5}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "book" / "chapters" / "01_balanced_softmax.ipynb").write_text(json.dumps(nb))
    claims_file = tmp_path / "claims.yaml"
    claims_file.write_text(yaml.safe_dump([
        {"id": "ren2020-toy", "paper": "ren2020balanced", "chapter": "01_balanced_softmax",
         "claim": "BS beats softmax", "rule": "a − b > 0",
         "tests": [{**TEST, "a": "balanced_softmax", "b": "softmax"}]},
        {"id": "bamler2020-toy", "paper": "bamler2020extreme", "claim": "faster",
         "not_attempted": "no GPU"}], allow_unicode=True))
    report.write_report("smoke", tmp_path / "results", tmp_path / "book", claims_file)
    ledger = (tmp_path / "book" / "ledger.md").read_text()
    assert ("| {ref}`ren2020-toy <ledger-ren2020-toy>` | **reproduced** | 1 passed | "
            "{ref}`chapter 01 <claim-ren2020-toy>` |") in ledger
    assert "**not attempted**" in ledger
    status = (tmp_path / "book" / "status.md").read_text()
    assert "| 12 s | 2 s | data 1 s, train+evaluate 1 s | 1 reproduced |" in status
