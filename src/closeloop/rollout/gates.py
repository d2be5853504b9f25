"""Judging a stage: its gates (with values, intervals, pass or fail) and the guardrails.

Pure functions over tallies of what cases did, so the controller, the CLI
and the report read the same table. Absolute gates pass on the measured
rate and show its always-valid interval; relative gates compare the enrolled
cases with the control (the eligible cases not enrolled) on a sequential
confidence sequence of the difference, so the table can be read every day.
A gate with no data yet is neither passed nor failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from closeloop.rollout.plan import Gate, RolloutPlan, Stage
from closeloop.stats import Proportion, compare, sequential_halfwidth, sequential_rho, srm


@dataclass(frozen=True, kw_only=True)
class Tally:
    """What a group of cases did: the enrolled cases of a stage, one arm, or the control."""

    cases: int = 0
    completed: int = 0  # resolved in the message
    resolved: int = 0  # resolved by any channel (the only way a control case resolves)
    writebacks: int = 0  # finished writebacks (done or failed)
    writebacks_ok: int = 0
    exceptions: int = 0
    opt_outs: int = 0
    identity_checks: int = 0
    identity_failures: int = 0
    duplicate_writebacks: int = 0

    def counts(self, metric: str) -> tuple[int, int]:
        """(successes, units) of a rate metric."""
        return {
            "completion": (self.completed, self.cases),
            "resolution": (self.resolved, self.cases),
            "writeback_success": (self.writebacks_ok, self.writebacks),
            "exception_rate": (self.exceptions, self.cases),
            "opt_out_rate": (self.opt_outs, self.cases),
            "identity_failure_rate": (self.identity_failures, self.identity_checks),
        }[metric]


@dataclass(frozen=True, kw_only=True)
class GateResult:
    criterion: str  # as a reviewer reads it: "writeback_success >= 99.5%"
    value: float | None
    interval: tuple[float, float] | None
    passed: bool | None  # None: no data yet
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Verdict:
    stage: str
    gates: tuple[GateResult, ...]
    minimums: tuple[GateResult, ...]  # duration, sample, and each arm's sample
    breaches: tuple[str, ...]  # guardrails broken: the rollout halts

    @property
    def promotable(self) -> bool:
        """Every minimum met and every gate passed, with no guardrail broken."""
        checks = self.gates + self.minimums
        return not self.breaches and all(c.passed for c in checks)


def _interval(successes: int, n: int, alpha: float, n_star: float) -> tuple[float, float]:
    """A rate's always-valid interval. Its variance is taken at (s + 1) / (n + 2), so that
    1 opt-out in 1 case or none in 50 gets an interval of some width, not a point."""
    rate, smoothed = successes / n, (successes + 1) / (n + 2)
    variance = smoothed * (1 - smoothed)
    half = sequential_halfwidth(variance, n, alpha, sequential_rho(alpha, n_star))
    return max(0.0, rate - half), min(1.0, rate + half)


def judge_gate(
    gate: Gate, enrolled: Tally, control: Tally, *, alpha: float = 0.05, n_star: float = 5000
) -> GateResult:
    successes, n = enrolled.counts(gate.metric)
    if gate.not_worse_than_control_by is not None:
        margin = gate.not_worse_than_control_by
        criterion = f"{gate.metric} not worse than control by {margin:.1%} points"
        c_successes, c_n = control.counts(gate.metric)
        if n == 0 or c_n == 0 or c_successes == 0:
            return GateResult(
                criterion=criterion,
                value=None,
                interval=None,
                passed=None,
                detail="not enough cases in the rollout or the control yet",
            )
        result = compare(
            Proportion(successes=c_successes, n=c_n),
            Proportion(successes=successes, n=n),
            alpha=alpha,
            sequential=True,
            n_star=n_star,
        )
        low, high = result.difference_interval
        # A rate where less is better (exceptions, opt-outs) is worse when it is higher.
        worse_is_higher = gate.metric in ("exception_rate", "opt_out_rate", "identity_failure_rate")
        passed = high <= margin if worse_is_higher else low >= -margin
        return GateResult(
            criterion=criterion,
            value=result.difference,
            interval=(low, high),
            passed=passed,
            detail="difference from control, in points",
        )
    bound = gate.at_least if gate.at_least is not None else gate.at_most
    assert bound is not None
    sign = ">=" if gate.at_least is not None else "<="
    criterion = f"{gate.metric} {sign} {bound:.2%}"
    if n == 0:
        return GateResult(
            criterion=criterion,
            value=None,
            interval=None,
            passed=None,
            detail="no cases measured yet",
        )
    value = successes / n
    passed = value >= bound if gate.at_least is not None else value <= bound
    return GateResult(
        criterion=criterion,
        value=value,
        interval=_interval(successes, n, alpha, n_star),
        passed=passed,
    )


def judge(
    plan: RolloutPlan,
    stage: Stage,
    *,
    enrolled: Tally,
    control: Tally,
    arms: Mapping[str, Tally] | None = None,
    elapsed: timedelta,
    windows: Mapping[timedelta, tuple[Tally, Tally]] | None = None,
) -> Verdict:
    """The stage's gate table, its minimums, and the guardrails it breaks.

    `windows` gives, for a gate's `window`, the (enrolled, control) tallies of the
    cases opened within it; a gate without one is judged on the whole stage.
    """
    windows = windows or {}
    n_star = plan.sequential_tuning
    gates = tuple(
        judge_gate(g, *windows.get(g.window, (enrolled, control)), n_star=n_star)
        for g in stage.gates
    )
    days = stage.min_duration / timedelta(days=1)
    minimums = [
        GateResult(
            criterion=f"at least {days:g} days in the stage",
            value=elapsed / timedelta(days=1),
            interval=None,
            passed=elapsed >= stage.min_duration,
        ),
        GateResult(
            criterion=f"at least {stage.min_sample} cases",
            value=float(enrolled.cases),
            interval=None,
            passed=enrolled.cases >= stage.min_sample,
        ),
    ]
    arms = dict(arms or {})
    if stage.experiment is not None:
        needed = stage.experiment.sample_per_arm()
        for a in stage.experiment.arms:
            got = arms.get(a.name, Tally()).cases
            minimums.append(
                GateResult(
                    criterion=f"arm {a.name}: at least {needed} cases",
                    value=float(got),
                    interval=None,
                    passed=got >= needed,
                )
            )
    return Verdict(
        stage=stage.name,
        gates=gates,
        minimums=tuple(minimums),
        breaches=tuple(breaches(plan, stage, enrolled=enrolled, arms=arms)),
    )


def breaches(
    plan: RolloutPlan, stage: Stage, *, enrolled: Tally, arms: Mapping[str, Tally]
) -> list[str]:
    """The guardrails broken now, each as the reason the rollout halts."""
    broken = []
    for rail in plan.guardrails:
        if rail.metric == "sample_ratio_mismatch":
            if stage.experiment is None:
                continue
            counts = [arms.get(a.name, Tally()).cases for a in stage.experiment.arms]
            if sum(counts) == 0:
                continue
            test = srm(counts, [a.weight for a in stage.experiment.arms])
            if test.mismatch:
                broken.append(
                    f"sample ratio mismatch: arms got {counts} for weights "
                    f"{[a.weight for a in stage.experiment.arms]} (p = {test.p_value:.2g})"
                )
            continue
        assert rail.above is not None
        if rail.metric == "duplicate_writebacks":
            if enrolled.duplicate_writebacks > rail.above:
                broken.append(
                    f"duplicate writebacks found by reconciliation: "
                    f"{enrolled.duplicate_writebacks} case(s) > {rail.above:g}"
                )
            continue
        # A rate halts when it is above its ceiling with confidence: the low end of its
        # sequential interval, so one opt-out among a stage's first ten cases does not.
        successes, n = enrolled.counts(rail.metric)
        if not n:
            continue
        low, _ = _interval(successes, n, 0.05, plan.sequential_tuning)
        if low > rail.above:
            broken.append(
                f"{rail.metric}: {successes / n:.2%} > {rail.above:.2%} ({successes}/{n}; "
                f"at least {low:.2%} with 95% confidence)"
            )
    return broken
