"""Claims and their computed verdicts.

``data/claims/<chapter>.yaml`` lists every claim of every paper in the report. A claim carries
``tests`` — machine-checkable comparisons fixed before the run — or ``not_attempted`` with the
reason. Nothing here is typed by hand: outcomes and verdicts come from result rows.

A test compares per-seed values against a threshold with a two-sided 95% Student-t interval:

- ``paired_difference``: per-seed differences ``a − b`` of ``metric``, paired on every setting
  column (same seed, same data), e.g. "Balanced Softmax − Softmax top-1 > 0".
- ``mean``: the values of ``metric`` for method ``a``, e.g. "|MI estimate − exact MI| < 0.05".

A non-inferiority test gives ``margin: {value, source}`` instead of a threshold; its threshold is
``−margin`` (direction ``greater``) or ``+margin`` (``less``).

Outcome of a test (:data:`OUTCOMES`):

- **passed**: the whole interval lies beyond the threshold in the test's direction;
- **contradicted**: the whole interval lies on the wrong side of the threshold;
- **inconclusive**, with a reason: *protocol not pinned* (the claim's ``unpinned`` says why the
  sources available do not fix the method or protocol the paper tested; its tests are still run
  and shown, but cannot pass or contradict), *baseline unhealthy* (a health check of the
  compared models failed; checked first, so an unhealthy comparison never passes or contradicts),
  *underpowered* (the minimum detectable effect at 95% confidence and 80% power exceeds the test's
  ``effect_of_interest``; :attr:`TestOutcome.seeds_needed` says how many seeds would do), or
  *straddles* (the interval contains the threshold although the test had the power).

Verdict of a claim (:data:`VERDICTS`): **reproduced** when every test passed; **partly
reproduced** when some passed and some did not; **contradicted** when none passed and at least one
was contradicted; **inconclusive** when none passed and none was contradicted; **not attempted**
(with the reason) when the claim has no tests; **no results** when its chapter has no rows yet.

Every test declares a ``null`` — what a trivial method would give — and the test suite checks that
no test passes on it (:func:`null_outcome`): ``swap`` (a's rows replaced by b's: zero
differences; the default of a superiority paired test), ``margin`` (a's rows at b's minus the
margin, the edge of the non-inferiority null; the default of a non-inferiority test),
``{method: m}`` (a's rows replaced by the rows of the trivial method ``m`` the run produced) or
``{value: c}`` (every value replaced by the constant ``c``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from softmax_repro.config import ConfigError
from softmax_repro.metrics import mean_ci, minimum_detectable_effect, seeds_needed
from softmax_repro.pipeline.paths import CLAIMS_DIR
from softmax_repro.pipeline.tables import format_number

TEST_KINDS = ("paired_difference", "mean")
DIRECTIONS = ("greater", "less")
OUTCOMES = ("passed", "contradicted", "inconclusive")
VERDICTS = (
    "reproduced",
    "partly reproduced",
    "inconclusive",
    "contradicted",
    "not attempted",
    "no results",
)
UNDERPOWERED, UNHEALTHY, STRADDLES = "underpowered", "baseline unhealthy", "straddles"
UNPINNED = "protocol not pinned"
CLAIM_KEYS = {
    "id", "paper", "chapter", "claim", "where", "paper_values", "rule", "tests", "health",
    "not_attempted", "notes", "revisions", "unpinned",
}
TEST_KEYS = {
    "label", "kind", "metric", "where", "a", "b", "direction", "threshold", "margin",
    "effect_of_interest", "null", "health",
}
HEALTH_KEYS = {"label", "kind", "metric", "where", "a", "b", "direction", "threshold", "source"}
REVISION_KEYS = {"date", "change", "reason"}
NON_SETTING_COLUMNS = {"method", "value", "wall_s", "metric"}


@dataclasses.dataclass(frozen=True)
class Sourced:
    """A number with where it comes from (the paper's table, scaled as stated, or "ours: …")."""

    value: float
    source: str


@dataclasses.dataclass(frozen=True)
class NullSpec:
    """What a trivial method would give (see the module docstring): ``kind`` is ``swap``,
    ``margin``, ``method`` (``method`` names the trivial method), ``value`` or ``undeclared``
    (a mean test whose entry names no null: a defect the test suite reports)."""

    kind: str
    method: str | None = None
    value: float | None = None
    source: str = ""

    def describe(self) -> str:
        """Plain words for the page, e.g. "a := b (zero difference)"."""
        if self.kind == "swap":
            return "a's rows replaced by b's (zero difference)"
        if self.kind == "margin":
            return "a at b minus the margin (edge of the null)"
        if self.kind == "undeclared":
            return "not declared"
        if self.kind == "method":
            return f"rows of {self.method}" + (f" ({self.source})" if self.source else "")
        return f"constant {format_number(self.value)}" + (
            f" ({self.source})" if self.source else ""
        )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What a test or a health check compares: ``metric`` of ``a`` (minus ``b``) over the rows
    selected by ``where``, against ``threshold`` in ``direction``."""

    label: str
    kind: str
    metric: str
    a: str
    where: Mapping[str, Any]
    direction: str
    threshold: float
    b: str | None = None


@dataclasses.dataclass(frozen=True)
class HealthCheck(Comparison):
    """A check the compared models must pass: the MEAN over seeds on the stated side of the
    threshold (e.g. "validation loss moved < 0.01 over the last fifth of training")."""

    source: str = ""


@dataclasses.dataclass(frozen=True)
class ClaimTest(Comparison):
    """One machine-checkable comparison of a claim (see the module docstring)."""

    margin: Sourced | None = None
    effect_of_interest: Sourced | None = None
    null: NullSpec = NullSpec("swap")
    health: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper, as listed in ``data/claims/<chapter>.yaml``."""

    id: str
    paper: str
    chapter: str | None
    claim: str
    where: str
    paper_values: Mapping[str, Any]
    rule: str | None
    tests: tuple[ClaimTest, ...]
    not_attempted: str | None
    health: tuple[HealthCheck, ...] = ()
    revisions: tuple[Mapping[str, str], ...] = ()
    unpinned: str | None = None


@dataclasses.dataclass(frozen=True)
class HealthOutcome:
    """A health check's mean over seeds and whether it holds."""

    check: HealthCheck
    mean: float
    n: int
    healthy: bool


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """A test's estimate, interval, power and outcome.

    Attributes:
        mean, ci_low, ci_high: the mean over seeds and its 95% t-interval.
        n: number of seeds (or paired seed-settings); sd: their standard deviation.
        outcome: one of :data:`OUTCOMES`; reason: why inconclusive ("" otherwise).
        mde: minimum detectable effect (95% confidence, 80% power), in the metric's units.
        seeds_needed: seeds for ``mde <= effect_of_interest`` (``None`` if unknown).
        health: the outcomes of the health checks this test rests on.
    """

    test: ClaimTest
    mean: float
    ci_low: float
    ci_high: float
    n: int
    sd: float
    outcome: str
    reason: str
    mde: float
    seeds_needed: int | None
    health: tuple[HealthOutcome, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim's computed verdict and the test outcomes behind it."""

    claim: Claim
    verdict: str
    outcomes: tuple[TestOutcome, ...]
    reason: str = ""


# --------------------------------------------------------------------------- parsing


def _fail(entry: Mapping[str, Any] | None, message: str) -> ConfigError:
    ident = (entry or {}).get("id", "<no id>")
    return ConfigError(f"claims entry {ident!r}: {message}")


def _number(entry: Mapping[str, Any], field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(entry, f"{field}={value!r} must be a finite number")
    return float(value)


def _sourced(entry: Mapping[str, Any], field: str, raw: Any) -> Sourced | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"value", "source"}:
        raise _fail(entry, f"{field} must be {{value: <number>, source: <where it comes from>}}")
    if not str(raw["source"]).strip():
        raise _fail(entry, f"{field} needs a non-empty source")
    return Sourced(_number(entry, f"{field}.value", raw["value"]), str(raw["source"]).strip())


def _comparison_fields(entry: Mapping[str, Any], raw: Any, allowed: set[str], what: str) -> dict:
    if not isinstance(raw, Mapping):
        raise _fail(entry, f"each item of {what} must be a mapping, got {raw!r}")
    if None in raw:
        raise _fail(entry, f"{what} item {raw.get('label', '?')!r}: YAML reads a bare `null:` key "
                           "as an empty key; write it quoted, \"null\": ...")
    unknown = set(raw) - allowed
    if unknown:
        raise _fail(entry, f"{what} item has unknown keys {sorted(unknown)}; allowed: "
                           f"{sorted(allowed)}")
    for key in ("label", "kind", "metric", "a", "direction"):
        if key not in raw:
            raise _fail(entry, f"{what} item {raw.get('label', '?')!r} lacks {key!r}")
    if raw["kind"] not in TEST_KINDS:
        raise _fail(entry, f"kind={raw['kind']!r} is not allowed; choose one of {TEST_KINDS}")
    if raw["direction"] not in DIRECTIONS:
        raise _fail(entry, f"direction={raw['direction']!r} is not allowed; choose one of "
                           f"{DIRECTIONS}")
    if raw["kind"] == "paired_difference" and not raw.get("b"):
        raise _fail(entry, f"{what} {raw['label']!r}: a paired_difference needs b (the baseline)")
    where = raw.get("where") or {}
    if not isinstance(where, Mapping):
        raise _fail(entry, f"where={where!r} must be a mapping of column: value")
    return {
        "label": str(raw["label"]),
        "kind": raw["kind"],
        "metric": str(raw["metric"]),
        "a": str(raw["a"]),
        "b": None if raw.get("b") is None else str(raw["b"]),
        "where": dict(where),
        "direction": raw["direction"],
    }


def _parse_null(entry: Mapping[str, Any], raw: Any, kind: str, has_margin: bool) -> NullSpec:
    if raw is None:
        # a mean test must declare its null; tests/test_verdicts.py fails while one is missing
        return NullSpec("undeclared") if kind == "mean" else NullSpec(
            "margin" if has_margin else "swap"
        )
    if raw in ("swap", "margin"):
        if kind == "mean":
            raise _fail(entry, f"null={raw!r} applies to paired_difference tests only")
        if raw == "margin" and not has_margin:
            raise _fail(entry, "null='margin' needs the test's margin")
        return NullSpec(raw)
    if isinstance(raw, Mapping) and set(raw) in ({"method", "source"}, {"value", "source"}):
        if "method" in raw:
            return NullSpec("method", method=str(raw["method"]), source=str(raw["source"]))
        return NullSpec("value", value=_number(entry, "null.value", raw["value"]),
                        source=str(raw["source"]))
    raise _fail(entry, f"null={raw!r} is not allowed; use swap, margin, "
                       "{method: <name>, source: ...} or {value: <number>, source: ...}")


def _parse_test(entry: Mapping[str, Any], raw: Any) -> ClaimTest:
    fields = _comparison_fields(entry, raw, TEST_KEYS, "tests")
    margin = _sourced(entry, "margin", raw.get("margin"))
    if margin is not None:
        if "threshold" in raw:
            raise _fail(entry, f"test {fields['label']!r}: give threshold or margin, not both")
        if margin.value <= 0:
            raise _fail(entry, f"test {fields['label']!r}: margin.value must be > 0")
        threshold = -margin.value if fields["direction"] == "greater" else margin.value
    elif "threshold" in raw:
        threshold = _number(entry, "threshold", raw["threshold"])
    else:
        raise _fail(entry, f"test {fields['label']!r} lacks 'threshold' (or 'margin')")
    effect = _sourced(entry, "effect_of_interest", raw.get("effect_of_interest"))
    if effect is not None and effect.value <= 0:
        raise _fail(entry, f"test {fields['label']!r}: effect_of_interest.value must be > 0")
    health = raw.get("health")
    if health is not None and (
        not isinstance(health, list) or not all(isinstance(h, str) for h in health)
    ):
        raise _fail(entry, f"test {fields['label']!r}: health must be a list of check labels")
    return ClaimTest(
        **fields,
        threshold=threshold,
        margin=margin,
        effect_of_interest=effect,
        null=_parse_null(entry, raw.get("null"), fields["kind"], margin is not None),
        health=None if health is None else tuple(health),
    )


def _parse_health(entry: Mapping[str, Any], raw: Any) -> HealthCheck:
    fields = _comparison_fields(entry, raw, HEALTH_KEYS, "health")
    if "threshold" not in raw:
        raise _fail(entry, f"health check {fields['label']!r} lacks 'threshold'")
    if not str(raw.get("source", "")).strip():
        raise _fail(entry, f"health check {fields['label']!r} needs a source for its threshold")
    return HealthCheck(**fields, threshold=_number(entry, "threshold", raw["threshold"]),
                       source=str(raw["source"]).strip())


def _parse_revisions(entry: Mapping[str, Any], raw: Any) -> tuple[Mapping[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(entry, "revisions must be a list of {date, change, reason}")
    revisions = []
    for item in raw:
        if not isinstance(item, Mapping) or set(item) != REVISION_KEYS:
            raise _fail(entry, f"each revision needs exactly {sorted(REVISION_KEYS)}, got {item!r}")
        revisions.append({k: str(item[k]).strip() for k in ("date", "change", "reason")})
    return tuple(revisions)


def parse_claims(entries: Any) -> list[Claim]:
    """Validate the YAML structure and return the claims.

    Raises:
        ConfigError: a malformed entry, naming its id and the offending key.
    """
    if not isinstance(entries, list):
        raise ConfigError("claims must be a YAML list of claims")
    claims: list[Claim] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ConfigError(f"claims: each entry must be a mapping, got {entry!r}")
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
        health = tuple(_parse_health(entry, h) for h in entry.get("health") or [])
        labels = {h.label for h in health}
        if len(labels) != len(health):
            raise _fail(entry, "health check labels must be unique")
        for test in tests:
            missing = set(test.health or ()) - labels
            if missing:
                raise _fail(entry, f"test {test.label!r} names unknown health checks "
                                   f"{sorted(missing)}; the claim's checks are {sorted(labels)}")
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
                health=health,
                revisions=_parse_revisions(entry, entry.get("revisions")),
                unpinned=str(entry["unpinned"]).strip() if entry.get("unpinned") else None,
            )
        )
    return claims


def load_claims(path: str | Path = CLAIMS_DIR) -> list[Claim]:
    """Read and validate the claims: one YAML file, or every ``*.yaml`` of a folder in name order
    (``data/claims/<chapter>.yaml``).

    Raises:
        ConfigError: a file that is not valid YAML or not a list, or a malformed entry; the
            message names the file.
    """
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    claims: list[Claim] = []
    for file in files:
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML ({err}); fix the file") from err
        if not isinstance(loaded, list):
            raise ConfigError(f"{file}: a claims file must be a YAML list of claims")
        try:
            claims.extend(parse_claims(loaded))
        except ConfigError as err:
            raise ConfigError(f"{file}: {err}") from err
    ids = [c.id for c in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: claim ids {duplicates} appear in more than one file")
    return claims


# --------------------------------------------------------------------------- evaluation


def test_description(test: Comparison) -> str:
    """``"a − b metric > threshold"`` (or ``"a metric < threshold"``): the one place this label
    is built."""
    sign = ">" if test.direction == "greater" else "<"
    what = f"{test.a} − {test.b}" if test.kind == "paired_difference" else test.a
    return f"{what} {test.metric} {sign} {format_number(test.threshold)}"


test_description.__test__ = False  # not a pytest test, although its name starts with "test"


class RowsMismatch(ConfigError):
    """A test names a metric, method or column that its chapter's rows do not have."""


def _select(rows: pd.DataFrame, test: Comparison, method: str, claim_id: str) -> pd.DataFrame:
    for column in test.where:
        if column not in rows.columns:
            raise RowsMismatch(f"claim {claim_id!r}, {test.label!r}: where names column "
                               f"{column!r}, which the rows lack; columns: "
                               f"{sorted(set(rows.columns) - NON_SETTING_COLUMNS)}")
    mask = (rows["metric"] == test.metric) & (rows["method"] == method)
    for column, value in test.where.items():
        mask &= rows[column] == value
    selected = rows[mask]
    values = selected["value"].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise ConfigError(f"claim {claim_id!r}, {test.label!r}: non-finite values (NaN/inf) in "
                          f"the rows of {method} {test.metric}; the results file is invalid")
    return selected


def _setting_columns(rows: pd.DataFrame) -> list[str]:
    return sorted(c for c in rows.columns if c not in NON_SETTING_COLUMNS)


def _paired(a: pd.DataFrame, b: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    keys = [c for c in _setting_columns(rows) if c in a.columns]
    a_rows = a[[*keys, "value"]].dropna(axis=1, how="all")
    keys = [c for c in keys if c in a_rows.columns]
    merged = a_rows.merge(b[[*keys, "value"]], on=keys, suffixes=("_a", "_b"),
                          validate="one_to_one")
    return (merged["value_a"] - merged["value_b"]).to_numpy(dtype=float)


def comparison_values(
    test: Comparison, rows: pd.DataFrame, claim_id: str = "?", a: str | None = None
) -> np.ndarray | None:
    """The per-seed values a test or check compares (``a − b`` for paired ones); ``None`` when
    no rows match. ``a`` overrides the test's method (null controls)."""
    a_rows = _select(rows, test, a or test.a, claim_id)
    if a_rows.empty:
        return None
    if test.kind == "mean":
        return a_rows["value"].to_numpy(dtype=float)
    b_rows = _select(rows, test, str(test.b), claim_id)
    if b_rows.empty:
        return None
    values = _paired(a_rows, b_rows, rows)
    return values if len(values) else None


def _beyond(low: float, high: float, direction: str, threshold: float) -> tuple[bool, bool]:
    """(interval wholly beyond the threshold, interval wholly on the wrong side)."""
    if math.isnan(low):
        return False, False
    if direction == "greater":
        return low > threshold, high < threshold
    return high < threshold, low > threshold


def _health(check: HealthCheck, rows: pd.DataFrame, claim_id: str) -> HealthOutcome:
    values = comparison_values(check, rows, claim_id)
    if values is None:
        return HealthOutcome(check, float("nan"), 0, False)
    mean = float(values.mean())
    healthy = mean > check.threshold if check.direction == "greater" else mean < check.threshold
    return HealthOutcome(check, mean, len(values), healthy)


def outcome_of(
    test: ClaimTest, values: np.ndarray, health: Sequence[HealthOutcome] = ()
) -> TestOutcome:
    """The outcome of ``test`` on its per-seed ``values`` (see the module docstring)."""
    mean, low, high = mean_ci(values)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    mde = minimum_detectable_effect(sd, len(values))
    effect = test.effect_of_interest.value if test.effect_of_interest else None
    needed = seeds_needed(sd, effect) if effect is not None else None
    passed, wrong_side = _beyond(low, high, test.direction, test.threshold)
    unhealthy = [h.check.label for h in health if not h.healthy]
    if unhealthy:
        outcome, reason = "inconclusive", f"{UNHEALTHY}: {', '.join(unhealthy)}"
    elif passed:
        outcome, reason = "passed", ""
    elif wrong_side:
        outcome, reason = "contradicted", ""
    elif effect is None or math.isnan(mde) or mde > effect:
        outcome, reason = "inconclusive", UNDERPOWERED
    else:
        outcome, reason = "inconclusive", STRADDLES
    return TestOutcome(test, mean, low, high, len(values), sd, outcome, reason, mde, needed,
                       tuple(health))


def _checks_of(claim: Claim, test: ClaimTest) -> tuple[HealthCheck, ...]:
    if test.health is None:
        return claim.health
    return tuple(h for h in claim.health if h.label in test.health)


def evaluate_test(
    test: ClaimTest, rows: pd.DataFrame, claim: Claim | None = None
) -> TestOutcome | None:
    """The outcome of ``test`` on a chapter's rows; ``None`` when no matching rows exist."""
    claim_id = claim.id if claim else "?"
    values = comparison_values(test, rows, claim_id)
    if values is None:
        return None
    checks = _checks_of(claim, test) if claim else ()
    return outcome_of(test, values, [_health(h, rows, claim_id) for h in checks])


def null_values(test: ClaimTest, rows: pd.DataFrame, claim_id: str = "?") -> np.ndarray | None:
    """The per-seed values ``test`` would see if method ``a`` were its declared null."""
    values = comparison_values(test, rows, claim_id)
    if values is None or test.null.kind == "undeclared":
        return None
    null = test.null
    if null.kind == "swap":
        return np.zeros_like(values)
    if null.kind == "margin":
        return np.full_like(values, test.threshold)
    if null.kind == "value":
        return np.full_like(values, float(null.value))
    return comparison_values(test, rows, claim_id, a=null.method)


def null_outcome(test: ClaimTest, rows: pd.DataFrame, claim_id: str = "?") -> TestOutcome | None:
    """The outcome of ``test`` on its null (a falsification control: it must not pass)."""
    values = null_values(test, rows, claim_id)
    return None if values is None else outcome_of(test, values)


def check_vocabulary(claim: Claim, rows: pd.DataFrame) -> None:
    """Raise unless every test and check of ``claim`` names a metric and methods its rows have.

    Raises:
        RowsMismatch: naming the claim, the test and the field (metric, a, b, null method).
    """
    metrics, methods = set(rows["metric"]), set(rows["method"])
    for item in (*claim.tests, *claim.health):
        fields = {"metric": item.metric, "a": item.a, "b": item.b}
        if isinstance(item, ClaimTest) and item.null.kind == "method":
            fields["null.method"] = item.null.method
        for field, value in fields.items():
            if value is None:
                continue
            known = metrics if field == "metric" else methods
            if value not in known:
                raise RowsMismatch(
                    f"claim {claim.id!r}, {item.label!r}: {field}={value!r} is not in chapter "
                    f"{claim.chapter}'s rows; known {'metrics' if field == 'metric' else 'methods'}"
                    f": {sorted(known)[:40]}"
                )


def combine(outcomes: Sequence[TestOutcome]) -> str:
    """A claim's verdict from its tests' outcomes (the rules in the module docstring)."""
    passed = sum(o.outcome == "passed" for o in outcomes)
    contradicted = sum(o.outcome == "contradicted" for o in outcomes)
    if passed == len(outcomes):
        return "reproduced"
    if passed:
        return "partly reproduced"
    return "contradicted" if contradicted else "inconclusive"


def evaluate_claim(claim: Claim, rows: pd.DataFrame | None, strict: bool = False) -> Verdict:
    """The computed verdict of ``claim`` given its chapter's rows (``None``: no results yet).

    With ``strict`` (the report of a full run), a test whose metric, method or column is absent
    from the rows, or that matches no rows, raises :class:`RowsMismatch` instead of giving
    "no results".
    """
    if claim.not_attempted:
        return Verdict(claim, "not attempted", (), str(claim.not_attempted).strip())
    if rows is None or rows.empty:
        if strict:
            raise RowsMismatch(f"claim {claim.id!r}: chapter {claim.chapter} has no results")
        return Verdict(claim, "no results", (), f"chapter {claim.chapter} has no results yet")
    if strict:
        check_vocabulary(claim, rows)
    outcomes = []
    for test in claim.tests:
        outcome = evaluate_test(test, rows, claim)
        if outcome is None:
            message = f"no rows match test {test.label!r} ({test.metric}, {dict(test.where)})"
            if strict:
                raise RowsMismatch(f"claim {claim.id!r}: {message}")
            return Verdict(claim, "no results", (), message)
        if claim.unpinned and outcome.outcome != "inconclusive":
            outcome = dataclasses.replace(outcome, outcome="inconclusive", reason=UNPINNED)
        outcomes.append(outcome)
    if claim.unpinned:
        return Verdict(claim, "inconclusive", tuple(outcomes), f"{UNPINNED}: {claim.unpinned}")
    return Verdict(claim, combine(outcomes), tuple(outcomes))


def chapter_claims(chapter: str, claims: Sequence[Claim] | None = None) -> list[Claim]:
    """The claims whose results come from ``chapter``."""
    claims = load_claims() if claims is None else claims
    return [c for c in claims if c.chapter == chapter]


def chapter_verdicts(
    chapter: str, rows: pd.DataFrame, claims: Sequence[Claim] | None = None
) -> list[Verdict]:
    """The verdicts of one chapter's claims, in file order."""
    return [evaluate_claim(c, rows) for c in chapter_claims(chapter, claims)]


def outcome_label(outcome: TestOutcome) -> str:
    """``"passed"``, ``"contradicted"`` or ``"inconclusive (underpowered)"`` etc."""
    return outcome.outcome + (f" ({outcome.reason})" if outcome.reason else "")


def verdict_frame(verdicts: Sequence[Verdict], digits: int = 3) -> pd.DataFrame:
    """One row per test (or per claim without tests): claim, verdict, test, estimate with 95%
    CI, seeds, MDE, effect of interest, null, outcome and seeds needed (raw numbers; format them
    for display with ``pipeline.tables``)."""
    records = []
    for v in verdicts:
        base = {"claim": v.claim.id, "verdict": v.verdict}
        if not v.outcomes:
            records.append({**base, "test": "", "note": v.reason})
            continue
        for o in v.outcomes:
            records.append(
                {
                    **base,
                    "test": f"{o.test.label}: {test_description(o.test)}",
                    "mean": o.mean,
                    "ci_low": o.ci_low,
                    "ci_high": o.ci_high,
                    "n": o.n,
                    "mde": o.mde,
                    "effect_of_interest": (
                        o.test.effect_of_interest.value if o.test.effect_of_interest else None
                    ),
                    "null": o.test.null.describe(),
                    "outcome": outcome_label(o),
                    "seeds_needed": o.seeds_needed,
                    "note": "",
                }
            )
    return pd.DataFrame.from_records(records)
