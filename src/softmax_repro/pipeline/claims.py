"""Claims and their computed verdicts.

``data/claims/<chapter>.yaml`` lists every claim of every paper in the report. A claim carries
``tests`` — machine-checkable comparisons fixed before the run — or ``not_attempted`` with the
reason. A test passes when the whole 95% interval over seeds lies beyond its threshold in its
direction:

- ``paired_difference``: per-seed differences ``a − b`` of ``metric`` (paired on every setting
  column), e.g. "Balanced Softmax − Softmax top-1 > 0".
- ``mean``: the values of ``metric`` for method ``a``, e.g. "|MI estimate − exact MI| < 0.05".

A claim is ``reproduced`` when all its tests pass, ``not reproduced`` when none does, and
``partly reproduced`` otherwise. Nothing here is typed by hand: verdicts come from result rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from softmax_repro.config import ConfigError
from softmax_repro.metrics import mean_ci
from softmax_repro.pipeline.paths import CLAIMS_DIR

TEST_KINDS = ("paired_difference", "mean")
DIRECTIONS = ("greater", "less")
VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not attempted", "no results")
CLAIM_KEYS = {
    "id",
    "paper",
    "chapter",
    "claim",
    "where",
    "paper_values",
    "rule",
    "tests",
    "not_attempted",
    "notes",
}
TEST_KEYS = {"label", "kind", "metric", "where", "a", "b", "direction", "threshold"}
NON_SETTING_COLUMNS = {"method", "value", "wall_s", "metric"}


@dataclasses.dataclass(frozen=True)
class ClaimTest:
    """One machine-checkable comparison (see the module docstring)."""

    label: str
    kind: str
    metric: str
    a: str
    where: Mapping[str, Any]
    direction: str
    threshold: float
    b: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper, as listed in ``data/claims.yaml``."""

    id: str
    paper: str
    chapter: str | None
    claim: str
    where: str
    paper_values: Mapping[str, Any]
    rule: str | None
    tests: tuple[ClaimTest, ...]
    not_attempted: str | None


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """A test's estimate, interval and whether it passed."""

    test: ClaimTest
    mean: float
    ci_low: float
    ci_high: float
    n: int
    passed: bool


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim's computed verdict and the test outcomes behind it."""

    claim: Claim
    verdict: str
    outcomes: tuple[TestOutcome, ...]
    reason: str = ""


def _fail(entry: Mapping[str, Any] | None, message: str) -> ConfigError:
    ident = (entry or {}).get("id", "<no id>")
    return ConfigError(f"claims.yaml entry {ident!r}: {message}")


def _parse_test(entry: Mapping[str, Any], raw: Any) -> ClaimTest:
    if not isinstance(raw, Mapping):
        raise _fail(entry, f"each item of tests must be a mapping, got {raw!r}")
    unknown = set(raw) - TEST_KEYS
    if unknown:
        raise _fail(entry, f"test has unknown keys {sorted(unknown)}; allowed: {sorted(TEST_KEYS)}")
    for key in ("label", "kind", "metric", "a", "direction", "threshold"):
        if key not in raw:
            raise _fail(
                entry, f"test lacks {key!r}; a test needs {sorted(TEST_KEYS - {'b', 'where'})}"
            )
    if raw["kind"] not in TEST_KINDS:
        raise _fail(entry, f"test kind={raw['kind']!r} is not allowed; choose one of {TEST_KINDS}")
    if raw["direction"] not in DIRECTIONS:
        raise _fail(
            entry, f"direction={raw['direction']!r} is not allowed; choose one of {DIRECTIONS}"
        )
    if raw["kind"] == "paired_difference" and not raw.get("b"):
        raise _fail(entry, "a paired_difference test needs b (the baseline method)")
    threshold = raw["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise _fail(entry, f"threshold={threshold!r} must be a number")
    where = raw.get("where") or {}
    if not isinstance(where, Mapping):
        raise _fail(entry, f"where={where!r} must be a mapping of column: value")
    return ClaimTest(
        label=str(raw["label"]),
        kind=raw["kind"],
        metric=str(raw["metric"]),
        a=str(raw["a"]),
        b=raw.get("b"),
        where=dict(where),
        direction=raw["direction"],
        threshold=float(threshold),
    )


def parse_claims(entries: Any) -> list[Claim]:
    """Validate the YAML structure and return the claims.

    Raises:
        ConfigError: a malformed entry, naming its id and the offending key.
    """
    if not isinstance(entries, list):
        raise ConfigError("claims.yaml must be a YAML list of claims")
    claims: list[Claim] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ConfigError(f"claims.yaml: each entry must be a mapping, got {entry!r}")
        unknown = set(entry) - CLAIM_KEYS
        if unknown:
            raise _fail(entry, f"unknown keys {sorted(unknown)}; allowed: {sorted(CLAIM_KEYS)}")
        for key in ("id", "paper", "claim"):
            if not entry.get(key):
                raise _fail(entry, f"missing required key {key!r}")
        ident = str(entry["id"])
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", ident):
            raise _fail(entry, "id must be kebab-case: lower-case letters, digits and '-'")
        if ident in seen:
            raise _fail(entry, "duplicate id")
        seen.add(ident)
        has_tests, skipped = bool(entry.get("tests")), bool(entry.get("not_attempted"))
        if has_tests == skipped:
            raise _fail(entry, "give exactly one of tests (a list) or not_attempted (the reason)")
        if has_tests and not entry.get("chapter"):
            raise _fail(entry, "a claim with tests needs the chapter that produces its results")
        if has_tests and not entry.get("rule"):
            raise _fail(entry, "a claim with tests needs its rule in words")
        tests = tuple(_parse_test(entry, t) for t in entry.get("tests") or [])
        claims.append(
            Claim(
                id=ident,
                paper=str(entry["paper"]),
                chapter=entry.get("chapter"),
                claim=str(entry["claim"]).strip(),
                where=str(entry.get("where", "")),
                paper_values=dict(entry.get("paper_values") or {}),
                rule=entry.get("rule"),
                tests=tests,
                not_attempted=entry.get("not_attempted"),
            )
        )
    return claims


def load_claims(path: str | Path = CLAIMS_DIR) -> list[Claim]:
    """Read and validate the claims: one YAML file, or every ``*.yaml`` of a folder in name order
    (``data/claims/<chapter>.yaml``)."""
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    entries: list[Any] = []
    for file in files:
        loaded = yaml.safe_load(file.read_text())
        if not isinstance(loaded, list):
            raise ConfigError(f"{file}: a claims file must be a YAML list of claims")
        entries.extend(loaded)
    return parse_claims(entries)


def _select(rows: pd.DataFrame, test: ClaimTest, method: str) -> pd.DataFrame:
    mask = (rows["metric"] == test.metric) & (rows["method"] == method)
    for column, value in test.where.items():
        if column not in rows.columns:
            return rows.iloc[0:0]
        mask &= rows[column] == value
    return rows[mask]


def _setting_columns(rows: pd.DataFrame) -> list[str]:
    return sorted(c for c in rows.columns if c not in NON_SETTING_COLUMNS)


def evaluate_test(test: ClaimTest, rows: pd.DataFrame) -> TestOutcome | None:
    """The outcome of ``test`` on a chapter's rows; ``None`` when no matching rows exist."""
    a = _select(rows, test, test.a)
    if a.empty:
        return None
    if test.kind == "mean":
        values = a["value"].to_numpy(dtype=float)
    else:
        b = _select(rows, test, test.b)
        if b.empty:
            return None
        keys = [c for c in _setting_columns(rows) if c in a.columns]
        a_rows = a[[*keys, "value"]].dropna(axis=1, how="all")
        keys = [c for c in keys if c in a_rows.columns]
        merged = a_rows.merge(
            b[[*keys, "value"]], on=keys, suffixes=("_a", "_b"), validate="one_to_one"
        )
        values = (merged["value_a"] - merged["value_b"]).to_numpy(dtype=float)
    if len(values) == 0:
        return None
    mean, low, high = mean_ci(values)
    if test.direction == "greater":
        passed = not math.isnan(low) and low > test.threshold
    else:
        passed = not math.isnan(high) and high < test.threshold
    return TestOutcome(test, mean, low, high, len(values), passed)


def evaluate_claim(claim: Claim, rows: pd.DataFrame | None) -> Verdict:
    """The computed verdict of ``claim`` given its chapter's rows (``None``: no results yet)."""
    if claim.not_attempted:
        return Verdict(claim, "not attempted", (), str(claim.not_attempted).strip())
    if rows is None or rows.empty:
        return Verdict(claim, "no results", (), f"chapter {claim.chapter} has no results yet")
    outcomes = []
    for test in claim.tests:
        outcome = evaluate_test(test, rows)
        if outcome is None:
            return Verdict(
                claim,
                "no results",
                (),
                f"no rows match test {test.label!r} ({test.metric}, {dict(test.where)})",
            )
        outcomes.append(outcome)
    passed = sum(o.passed for o in outcomes)
    verdict = (
        "reproduced"
        if passed == len(outcomes)
        else "not reproduced"
        if passed == 0
        else "partly reproduced"
    )
    return Verdict(claim, verdict, tuple(outcomes))


def verdict_frame(verdicts: Sequence[Verdict], digits: int = 3) -> pd.DataFrame:
    """One row per test (or per claim without tests): claim, test, estimate ± CI, pass, verdict."""
    records = []
    for v in verdicts:
        base = {"claim": v.claim.id, "verdict": v.verdict}
        if not v.outcomes:
            records.append(
                {
                    **base,
                    "test": "",
                    "estimate (95% CI)": "",
                    "n": 0,
                    "passed": "",
                    "note": v.reason,
                }
            )
            continue
        for o in v.outcomes:
            sign = ">" if o.test.direction == "greater" else "<"
            what = f"{o.test.a} − {o.test.b}" if o.test.kind == "paired_difference" else o.test.a
            records.append(
                {
                    **base,
                    "test": f"{o.test.label}: {what} {o.test.metric} {sign} {o.test.threshold:g}",
                    "estimate (95% CI)": f"{o.mean:.{digits}f} "
                    f"[{o.ci_low:.{digits}f}, {o.ci_high:.{digits}f}]",
                    "n": o.n,
                    "passed": "yes" if o.passed else "no",
                    "note": "",
                }
            )
    return pd.DataFrame.from_records(records)


def chapter_verdicts(
    chapter: str, rows: pd.DataFrame, claims: Sequence[Claim] | None = None
) -> pd.DataFrame:
    """The verdict table of one chapter's claims, for display in its notebook."""
    claims = load_claims() if claims is None else claims
    selected = [c for c in claims if c.chapter == chapter]
    return verdict_frame([evaluate_claim(c, rows) for c in selected])
