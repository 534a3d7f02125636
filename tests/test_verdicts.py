"""The verdict machinery: outcome categories at their boundaries, power, health checks,
non-inferiority margins, revisions, bad claims entries, and the falsification control over every
committed result (no test may pass on its null)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softmax_repro.config import ConfigError
from softmax_repro.metrics import mean_ci, minimum_detectable_effect, seeds_needed
from softmax_repro.pipeline import claims, report

ROOT = Path(__file__).resolve().parents[1]
EFFECT = {"value": 0.02, "source": "ours: fixture"}


def _rows(diffs, base=0.5, extra=()):
    rows = []
    for seed, diff in enumerate(diffs):
        rows.append({"dataset": "d", "method": "b", "seed": seed, "metric": "top1", "value": base})
        rows.append(
            {"dataset": "d", "method": "a", "seed": seed, "metric": "top1", "value": base + diff}
        )
    rows += list(extra)
    return pd.DataFrame(rows)


def _claim(tests, health=(), revisions=None):
    entry = {"id": "x-claim", "paper": "x", "chapter": "c", "claim": "A > B", "rule": "a > b",
             "tests": tests}
    if health:
        entry["health"] = list(health)
    if revisions is not None:
        entry["revisions"] = revisions
    return claims.parse_claims([entry])[0]


def _test(**kw):
    base = {"label": "t", "kind": "paired_difference", "metric": "top1", "a": "a", "b": "b",
            "direction": "greater", "threshold": 0.0, "effect_of_interest": EFFECT}
    base.update(kw)
    return base


def _outcome(diffs, **kw):
    verdict = claims.evaluate_claim(_claim([_test(**kw)]), _rows(diffs))
    return verdict.outcomes[0], verdict.verdict


# --------------------------------------------------------------------------- categories

TIGHT_UP = [0.05, 0.051, 0.049, 0.05, 0.05]
TIGHT_DOWN = [-x for x in TIGHT_UP]


def test_interval_beyond_threshold_passes():
    outcome, verdict = _outcome(TIGHT_UP)
    assert (outcome.outcome, outcome.reason, verdict) == ("passed", "", "reproduced")


def test_interval_wholly_on_the_wrong_side_is_contradicted():
    outcome, verdict = _outcome(TIGHT_DOWN)
    assert (outcome.outcome, verdict) == ("contradicted", "contradicted")


def test_straddling_with_power_is_inconclusive_straddles():
    # tiny spread: MDE far below the effect of interest, interval contains 0
    outcome, verdict = _outcome([0.001, -0.001, 0.0005, -0.0005, 0.0])
    assert outcome.mde < EFFECT["value"]
    assert (outcome.outcome, outcome.reason, verdict) == ("inconclusive", "straddles",
                                                          "inconclusive")


def test_straddling_without_power_is_underpowered_and_names_the_seeds_needed():
    diffs = [0.1, -0.1, 0.08, -0.09, 0.02]
    outcome, _ = _outcome(diffs)
    assert outcome.reason == "underpowered" and outcome.mde > EFFECT["value"]
    assert outcome.seeds_needed > len(diffs)
    sd = float(np.std(diffs, ddof=1))
    assert minimum_detectable_effect(sd, outcome.seeds_needed) <= EFFECT["value"]
    assert minimum_detectable_effect(sd, outcome.seeds_needed - 1) > EFFECT["value"]


def test_a_single_seed_is_underpowered_not_passed():
    outcome, _ = _outcome([0.5])
    assert (outcome.outcome, outcome.reason) == ("inconclusive", "underpowered")


def test_mde_formula():
    # (t_.975,4 + t_.80,4) · sd / √5 with t_.975,4 = 2.7764, t_.80,4 = 0.9410
    assert minimum_detectable_effect(1.0, 5) == pytest.approx((2.7764 + 0.9410) / 5**0.5, rel=1e-3)
    assert np.isnan(minimum_detectable_effect(1.0, 1))
    assert seeds_needed(float("nan"), 0.1) is None


def test_less_direction_mirrors_greater():
    outcome, _ = _outcome(TIGHT_DOWN, direction="less")
    assert outcome.outcome == "passed"
    outcome, _ = _outcome(TIGHT_UP, direction="less")
    assert outcome.outcome == "contradicted"


def test_claim_combination_rules():
    make = claims.TestOutcome
    test = _claim([_test()]).tests[0]

    def o(outcome):
        return make(test, 0, 0, 0, 5, 0, outcome, "", 0, None)

    assert claims.combine([o("passed"), o("passed")]) == "reproduced"
    assert claims.combine([o("passed"), o("contradicted")]) == "partly reproduced"
    assert claims.combine([o("passed"), o("inconclusive")]) == "partly reproduced"
    assert claims.combine([o("contradicted"), o("inconclusive")]) == "contradicted"
    assert claims.combine([o("inconclusive"), o("inconclusive")]) == "inconclusive"


def test_an_unpinned_claim_is_inconclusive_for_its_stated_reason_whatever_its_tests_show():
    entry = {"id": "x-claim", "paper": "x", "chapter": "c", "claim": "A ~ B", "rule": "a ~ b",
             "unpinned": "the paper's comparator is not stated", "tests": [_test()]}
    claim = claims.parse_claims([entry])[0]
    verdict = claims.evaluate_claim(claim, _rows(TIGHT_UP))
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == "protocol not pinned: the paper's comparator is not stated"
    assert (verdict.outcomes[0].outcome, verdict.outcomes[0].reason) == (
        "inconclusive", "protocol not pinned")
    assert verdict.outcomes[0].mean == pytest.approx(0.05)  # still measured and shown


# --------------------------------------------------------------------------- non-inferiority

MARGIN = {"value": 0.01, "source": "paper Table 5: the largest gap it calls comparable"}


def test_non_inferiority_threshold_is_minus_the_margin():
    test = _claim([{k: v for k, v in _test(margin=MARGIN).items() if k != "threshold"}]).tests[0]
    assert test.threshold == -0.01 and test.null.kind == "margin"


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([-0.004, -0.005, -0.006, -0.005, -0.005], "passed"),  # worse, but within the margin
        ([-0.03, -0.031, -0.029, -0.03, -0.03], "contradicted"),  # wholly below −margin
        ([-0.01, -0.02, 0.0, -0.005, -0.015], "inconclusive"),  # straddles −margin
    ],
)
def test_non_inferiority_boundaries(diffs, expected):
    test = {k: v for k, v in _test(margin=MARGIN).items() if k != "threshold"}
    verdict = claims.evaluate_claim(_claim([test]), _rows(diffs))
    assert verdict.outcomes[0].outcome == expected


def test_threshold_and_margin_together_are_rejected():
    with pytest.raises(ConfigError, match="threshold or margin, not both"):
        _claim([_test(margin=MARGIN)])


# --------------------------------------------------------------------------- health


HEALTH = {"label": "b converged", "kind": "mean", "metric": "last_fifth_change", "a": "b",
          "direction": "less", "threshold": 0.01, "source": "ours: fixture"}


def _health_rows(change):
    return [{"dataset": "d", "method": "b", "seed": s, "metric": "last_fifth_change",
             "value": change} for s in range(5)]


def test_unhealthy_baseline_makes_a_passing_test_inconclusive_and_names_the_check():
    claim = _claim([_test()], health=[HEALTH])
    verdict = claims.evaluate_claim(claim, _rows(TIGHT_UP, extra=_health_rows(0.2)))
    outcome = verdict.outcomes[0]
    assert (outcome.outcome, outcome.reason) == ("inconclusive", "baseline unhealthy: b converged")
    assert verdict.verdict == "inconclusive"
    healthy = claims.evaluate_claim(claim, _rows(TIGHT_UP, extra=_health_rows(0.001)))
    assert healthy.outcomes[0].outcome == "passed"


def test_unhealthy_baseline_also_blocks_contradicted():
    claim = _claim([_test()], health=[HEALTH])
    verdict = claims.evaluate_claim(claim, _rows(TIGHT_DOWN, extra=_health_rows(0.2)))
    assert verdict.outcomes[0].outcome == "inconclusive"


def test_a_test_can_rest_on_a_subset_of_checks():
    other = {**HEALTH, "label": "other", "a": "a"}
    claim = _claim([_test(health=["b converged"])], health=[HEALTH, other])
    rows = _rows(TIGHT_UP, extra=_health_rows(0.001))  # 'other' has no rows: would fail
    assert claims.evaluate_claim(claim, rows).outcomes[0].outcome == "passed"
    with pytest.raises(ConfigError, match="unknown health checks"):
        _claim([_test(health=["nope"])], health=[HEALTH])


# --------------------------------------------------------------------------- null controls


def test_swap_null_cannot_pass():
    test = _claim([_test()]).tests[0]
    assert claims.null_outcome(test, _rows(TIGHT_UP)).outcome != "passed"


def test_a_rule_that_passes_on_its_null_is_caught():
    # "a − b > −0.01" typed as a threshold: a method identical to b passes it (a defect)
    test = _claim([_test(threshold=-0.01)]).tests[0]
    assert claims.null_outcome(test, _rows(TIGHT_UP)).outcome == "passed"


def test_mean_null_by_method_and_by_value():
    rows = pd.DataFrame(
        [{"method": m, "seed": s, "metric": "abs_err", "value": v}
         for s in range(5) for m, v in (("est", 0.01 + s * 1e-3), ("logk", 0.004))]
    )
    base = {"label": "e", "kind": "mean", "metric": "abs_err", "a": "est", "direction": "less",
            "threshold": 0.05, "effect_of_interest": EFFECT}
    by_method = _claim([{**base, "null": {"method": "logk", "source": "log K"}}]).tests[0]
    assert claims.evaluate_test(by_method, rows).outcome == "passed"
    # the constant estimator is also within 0.05: this rule cannot fail — the control says so
    assert claims.null_outcome(by_method, rows).outcome == "passed"
    by_value = _claim([{**base, "null": {"value": 0.3, "source": "log K − I"}}]).tests[0]
    assert claims.null_outcome(by_value, rows).outcome == "contradicted"
    assert _claim([base]).tests[0].null.kind == "undeclared"  # the repository test rejects it


def _committed():
    rows = report.load_chapter_rows(ROOT / "results", "cpu")
    return [(c, rows[c.chapter]) for c in claims.load_claims() if c.tests and c.chapter in rows]


@pytest.mark.parametrize("claim_rows", _committed(), ids=lambda cr: cr[0].id)
def test_no_committed_test_passes_on_its_null(claim_rows):
    claim, rows = claim_rows
    for test in claim.tests:
        null = claims.null_outcome(test, rows, claim.id)
        if null is None:
            continue  # no rows: the report's strict check names it
        assert null.outcome != "passed", (
            f"{claim.id} / {test.label}: passes on its null ({test.null.describe()}); "
            "the rule cannot fail — fix the rule or the setup"
        )


def test_every_attempted_test_states_an_effect_of_interest_and_a_null():
    for claim in claims.load_claims():
        for test in claim.tests:
            assert test.effect_of_interest is not None, f"{claim.id} / {test.label}"
            assert test.effect_of_interest.source, f"{claim.id} / {test.label}"
            assert test.null.kind != "undeclared", f"{claim.id} / {test.label}: declare a null"


# --------------------------------------------------------------------------- bad entries


def test_revisions_are_parsed_and_must_be_complete():
    rev = [{"date": "2026-11-29", "change": "margin from Table 5", "reason": "was invented"}]
    assert _claim([_test()], revisions=rev).revisions[0]["change"] == "margin from Table 5"
    with pytest.raises(ConfigError, match="each revision needs"):
        _claim([_test()], revisions=[{"date": "2026-11-29"}])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metric", "top5", "metric='top5' is not in chapter c's rows"),
        ("a", "nope", "a='nope' is not in chapter c's rows"),
        ("b", "nope", "b='nope' is not in chapter c's rows"),
        ("where", {"size": 3}, "where names column 'size'"),
    ],
)
def test_strict_evaluation_names_claim_and_field(field, value, message):
    claim = _claim([_test(**{field: value})])
    with pytest.raises(claims.RowsMismatch, match=message):
        claims.evaluate_claim(claim, _rows(TIGHT_UP), strict=True)


def test_strict_evaluation_rejects_a_test_without_rows():
    claim = _claim([_test(where={"dataset": "other"})])
    assert claims.evaluate_claim(claim, _rows(TIGHT_UP)).verdict == "no results"
    with pytest.raises(claims.RowsMismatch, match="no rows match"):
        claims.evaluate_claim(claim, _rows(TIGHT_UP), strict=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high"])
def test_non_finite_or_non_numeric_thresholds_are_rejected(bad):
    with pytest.raises(ConfigError, match="must be a finite number"):
        _claim([_test(threshold=bad)])


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_values_in_rows_are_rejected(bad):
    rows = _rows(TIGHT_UP)
    rows.loc[1, "value"] = bad
    with pytest.raises(ConfigError, match="non-finite values"):
        claims.evaluate_claim(_claim([_test()]), rows)


def test_a_bare_null_key_is_named_not_lost(tmp_path):
    (tmp_path / "01_x.yaml").write_text(
        "- {id: a, paper: x, chapter: c, claim: c, rule: r, tests: [{label: t, kind: mean,"
        " metric: m, a: a, direction: less, threshold: 1, null: {value: 2, source: s}}]}\n")
    with pytest.raises(ConfigError, match="write it quoted"):
        claims.load_claims(tmp_path)


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "01_x.yaml"
    bad.write_text("- id: a\n  claim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"01_x\.yaml: not valid YAML"):
        claims.load_claims(tmp_path)


def test_mean_ci_is_what_outcomes_use():
    outcome, _ = _outcome(TIGHT_UP)
    assert (outcome.mean, outcome.ci_low, outcome.ci_high) == pytest.approx(mean_ci(TIGHT_UP))
