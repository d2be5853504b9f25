"""The rollout plan (validated like the spec), arm assignment, and judging a stage."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from closeloop.errors import SpecError
from closeloop.rollout import arm, bucket, in_cohort
from closeloop.rollout.gates import Tally, judge
from closeloop.rollout.plan import describe, load_plan, load_plan_file
from tests.conftest import ROOT

PLAN = ROOT / "examples" / "rollouts" / "failed_payment.yaml"
ARMS = [("email_first", 50), ("sms_first", 50)]


def test_arms_follow_the_weights_and_do_not_depend_on_inclusion() -> None:
    units = [f"ACC-{i:06d}" for i in range(20_000)]
    split = Counter(arm("first_channel", u, ARMS) for u in units)
    assert abs(split["email_first"] - 10_000) < 300  # about half each
    uneven = Counter(arm("first_channel", u, [("a", 1), ("b", 9)]) for u in units)
    assert abs(uneven["a"] / 20_000 - 0.1) < 0.01
    assert all(arm("first_channel", u, ARMS) == arm("first_channel", u, ARMS) for u in units[:50])
    # Independent of inclusion: inside a 5% cohort the arms still split evenly.
    included = [u for u in units if in_cohort("failed_payment", u, 5)]
    inside = Counter(arm("first_channel", u, ARMS) for u in included)
    assert 0.4 < inside["email_first"] / len(included) < 0.6
    assert all(1 <= bucket("failed_payment", u) <= 100 for u in units[:100])
    with pytest.raises(ValueError, match="weights must be positive"):
        arm("x", "u", [("a", 0)])


def test_the_example_plan_and_the_sample_each_arm_needs() -> None:
    plan = load_plan_file(PLAN)
    assert [s.share for s in plan.stages] == [5, 25, 100]
    (pilot, *_) = describe(plan)
    # power.prop.test(p1 = .40, p2 = .50, power = .80) gives n = 387.3 per group.
    assert pilot["experiment"]["sample_per_arm"] == 388


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("share: 25", "share: 4"), "each share must be larger than the last"),
        (("share: 5 ", "share: 10 "), "the first stage enrols at most 5%"),
        (("account.state == 'NY'", "account.stat == 'NY'"), "stat"),
        (("{name: sms_first, weight: 50}", "{name: email_first, weight: 50}"), "its own name"),
        (("{name: sms_first, weight: 50}", "{name: control, weight: 50}"), "names a cohort"),
        (
            ("at_least: 0.995}", "at_least: 0.995, at_most: 1}"),
            "exactly one of at_least",
        ),
        (
            ("{metric: sample_ratio_mismatch}", "{metric: sample_ratio_mismatch, above: 1}"),
            "takes no bound",
        ),
        (("promotion: approval", "promotion: whenever"), "expected one of 'automatic'"),
        (
            ("{metric: resolution, not_worse", "{metric: completion, not_worse"),
            "only resolution compares",
        ),
    ],
)
def test_plan_problems_say_where(change: tuple[str, str], message: str) -> None:
    text = PLAN.read_text()
    assert change[0] in text, change[0]
    with pytest.raises(SpecError) as caught:
        load_plan(text.replace(change[0], change[1], 1), filename="plan.yaml")
    problem = caught.value.problems[0]
    assert message in problem.message, problem
    assert problem.line > 1 and problem.file == "plan.yaml"


def tally(cases: int, completed: int, **more: int) -> Tally:
    base = {
        "resolved": completed,
        "writebacks": completed * 3,
        "writebacks_ok": completed * 3,
        "exceptions": cases // 50,
    }
    return Tally(cases=cases, completed=completed, **{**base, **more})


def test_a_stage_passes_when_its_gates_and_minimums_do() -> None:
    plan = load_plan_file(PLAN)
    pilot = plan.stages[0]
    arms = {"email_first": tally(420, 200), "sms_first": tally(410, 190)}
    enrolled = tally(830, 390)
    control = tally(16_000, 6_000)
    verdict = judge(plan, pilot, enrolled=enrolled, control=control, arms=arms,
                    elapsed=timedelta(days=15))  # fmt: skip
    assert [g.passed for g in verdict.gates] == [True, True, True], verdict.gates
    wb, _, relative = verdict.gates
    assert wb.criterion == "writeback_success >= 99.50%" and wb.interval is not None
    assert relative.interval is not None and relative.interval[0] > -0.02
    assert verdict.promotable and not verdict.breaches
    early = judge(plan, pilot, enrolled=enrolled, control=control, arms=arms,
                  elapsed=timedelta(days=3))  # fmt: skip
    assert not early.promotable and early.minimums[0].passed is False


def test_worse_than_control_fails_its_gate_and_guardrails_halt() -> None:
    plan = load_plan_file(PLAN)
    pilot = plan.stages[0]
    worse = tally(2000, 500)  # 25% against the control's 37.5%
    verdict = judge(plan, pilot, enrolled=worse, control=tally(16_000, 6_000),
                    arms={"email_first": tally(1000, 250), "sms_first": tally(1000, 250)},
                    elapsed=timedelta(days=20))  # fmt: skip
    assert verdict.gates[2].passed is False and not verdict.promotable
    duplicated = tally(800, 380, duplicate_writebacks=1, opt_outs=40)
    skewed = {"email_first": tally(700, 330), "sms_first": tally(100, 50)}
    halted = judge(plan, pilot, enrolled=duplicated, control=tally(16_000, 6_000), arms=skewed,
                   elapsed=timedelta(days=20))  # fmt: skip
    reasons = " | ".join(halted.breaches)
    assert "duplicate writebacks found by reconciliation: 1 case(s) > 0" in reasons
    assert "opt_out_rate: 5.00% > 2.00%" in reasons
    assert "sample ratio mismatch: arms got [700, 100]" in reasons
    nothing = judge(plan, pilot, enrolled=Tally(), control=Tally(), elapsed=timedelta(0))
    assert all(g.passed is None for g in nothing.gates) and not nothing.breaches
    # A rate halts when it is above its ceiling with confidence, not on the first few cases.
    early = judge(plan, pilot, enrolled=tally(10, 5, opt_outs=1), control=Tally(),
                  elapsed=timedelta(days=1))  # fmt: skip
    assert not early.breaches  # 10% of 10 cases: the interval reaches down to 0
    alone = judge(plan, pilot, enrolled=tally(1, 0, opt_outs=1), control=Tally(),
                  elapsed=timedelta(days=1))  # fmt: skip
    assert not alone.breaches  # 1 of 1: no interval of zero width


def test_each_gate_is_judged_over_its_own_window() -> None:
    plan = load_plan_file(PLAN)
    quarter = plan.stages[1]  # exception_rate <= 5% over 7 days
    bad_start = tally(1000, 400, exceptions=100)  # 10% over the whole stage
    recent = tally(300, 130, exceptions=3)  # 1% in the last week
    control = tally(16_000, 6_000)
    whole = judge(plan, quarter, enrolled=bad_start, control=control, elapsed=timedelta(days=20))
    assert whole.gates[1].passed is False
    windows = {timedelta(days=7): (recent, control)}
    windowed = judge(plan, quarter, enrolled=bad_start, control=control,
                     elapsed=timedelta(days=20), windows=windows)  # fmt: skip
    assert windowed.gates[1].passed is True and windowed.gates[1].value == 0.01
