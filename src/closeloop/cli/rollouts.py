"""`closeloop stats ...` and `closeloop rollout ...`: planning, running and reading rollouts."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from closeloop.app import build
from closeloop.cli.common import _problems, _settings, out
from closeloop.errors import InputError, SpecError

stats_cli = typer.Typer(no_args_is_help=True, help="Statistics for planning and reading a rollout.")
rollout_cli = typer.Typer(no_args_is_help=True, help="Phased rollouts.")


# -- statistics ---------------------------------------------------------------
def _counts(flag: str, text: str) -> Any:
    """SUCCESSES/N from the command line, as a Proportion (InputError naming the flag)."""
    from closeloop.stats import Proportion, StatsError

    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"{flag} {text!r}: expected SUCCESSES/N, such as 120/1000")
    try:
        return Proportion(successes=int(parts[0]), n=int(parts[1]))
    except StatsError as exc:
        raise InputError(f"{flag} {text!r}: {exc}") from None


@stats_cli.command("compare")
def stats_compare(
    control: Annotated[str, typer.Option(help="the control's SUCCESSES/N, such as 120/1000")],
    treatment: Annotated[str, typer.Option(help="the treatment's SUCCESSES/N")],
    sequential: Annotated[
        bool, typer.Option("--sequential", help="an always-valid confidence sequence")
    ] = False,
    n_star: Annotated[
        float, typer.Option("--n-star", help="total sample size where the sequence is narrowest")
    ] = 5000.0,
    alpha: Annotated[float, typer.Option(help="1 - the confidence level")] = 0.05,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Compare two proportions: lift, interval, p-value, chance to win (as gbstats does)."""
    from closeloop.stats import StatsError, compare

    try:
        result = compare(
            _counts("--control", control),
            _counts("--treatment", treatment),
            alpha=alpha,
            sequential=sequential,
            n_star=n_star,
        )
    except StatsError as exc:
        raise InputError(str(exc)) from None
    report = {
        "method": result.method,
        "alpha": alpha,
        "n_star": result.n_star,
        "control": {"successes": result.control.successes, "n": result.control.n,
                    "rate": result.control.rate},
        "treatment": {"successes": result.treatment.successes, "n": result.treatment.n,
                      "rate": result.treatment.rate},
        "lift": result.lift,
        "lift_interval": list(result.lift_interval),
        "lift_stddev": result.lift_stddev,
        "difference": result.difference,
        "difference_interval": list(result.difference_interval),
        "p_value": result.p_value,
        "chance_to_win": result.chance_to_win,
        "significant": result.significant,
    }  # fmt: skip
    if as_json:
        print(json.dumps(report))
        return
    level = f"{1 - alpha:.0%}"
    kind = f"sequential (n* = {n_star:,.0f})" if sequential else "fixed horizon"
    low, high = result.lift_interval
    dlow, dhigh = result.difference_interval
    out.print(
        f"control   {result.control.successes}/{result.control.n} = {result.control.rate:.2%}"
    )
    out.print(
        f"treatment {result.treatment.successes}/{result.treatment.n} = {result.treatment.rate:.2%}"
    )
    out.print(f"lift      {result.lift:+.2%}  ({level} {kind}: {low:+.2%} to {high:+.2%})")
    out.print(f"difference {result.difference:+.2%} points ({dlow:+.2%} to {dhigh:+.2%})")
    out.print(f"p-value   {result.p_value:.4g}; chance to win {result.chance_to_win:.1%}")
    verdict = "significant" if result.significant else "not significant"
    out.print(f"{verdict} at {level}")


@stats_cli.command("power")
def stats_power(
    p1: Annotated[float, typer.Option(help="the control's rate")],
    p2: Annotated[float, typer.Option(help="the rate to detect")],
    n: Annotated[float | None, typer.Option(help="units per arm: gives the power")] = None,
    target: Annotated[
        float | None, typer.Option("--power", help="the power wanted: gives units per arm")
    ] = None,
    alpha: Annotated[float, typer.Option()] = 0.05,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Power or sample size for two proportions, two-sided (as R's power.prop.test)."""
    from closeloop.stats import StatsError, power, sample_size

    if (n is None) == (target is None):
        raise InputError("give exactly one of --n (to get the power) or --power (to get n)")
    try:
        if n is not None:
            found = {"p1": p1, "p2": p2, "alpha": alpha, "n": n,
                     "power": power(p1, p2, n, alpha=alpha)}  # fmt: skip
        else:
            assert target is not None
            needed = sample_size(p1, p2, target=target, alpha=alpha)
            found = {"p1": p1, "p2": p2, "alpha": alpha, "power": target, "n": needed,
                     "n_per_arm": math.ceil(needed)}  # fmt: skip
    except StatsError as exc:
        raise InputError(str(exc)) from None
    if as_json:
        print(json.dumps(found))
    elif n is not None:
        out.print(f"power {found['power']:.4f} with {n:,.0f} per arm ({p1} vs {p2}, alpha {alpha})")
    else:
        out.print(
            f"{found['n_per_arm']:,} per arm (n = {found['n']:.2f}) for power {target} "
            f"({p1} vs {p2}, alpha {alpha})"
        )


@stats_cli.command("srm")
def stats_srm(
    counts: Annotated[list[int], typer.Argument(help="units assigned to each arm")],
    weights: Annotated[
        list[float] | None, typer.Option("--weights", help="each arm's weight (default: equal)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sample-ratio mismatch: a chi-square test against the weights (flagged at p < 0.001)."""
    from closeloop.stats import StatsError, srm

    try:
        result = srm(counts, weights or None)
    except StatsError as exc:
        raise InputError(str(exc)) from None
    found = {
        "counts": list(result.counts),
        "expected": list(result.expected),
        "chi2": result.chi2,
        "p_value": result.p_value,
        "mismatch": result.mismatch,
    }
    if as_json:
        print(json.dumps(found))
    else:
        expected = ", ".join(f"{e:,.1f}" for e in result.expected)
        verdict = "MISMATCH: check assignment" if result.mismatch else "no mismatch"
        out.print(
            f"chi2 {result.chi2:.3f}, p {result.p_value:.3g} (expected {expected}): {verdict}"
        )
    if result.mismatch:
        raise typer.Exit(1)


def _actor(actor: str | None) -> str:
    """Who takes a decision: given, or the operating system's user."""
    return actor or os.environ.get("USER") or "operator"


@rollout_cli.command("start")
def rollout_start(
    plan_file: Path,
    reason: Annotated[str, typer.Option(help="why it starts now")] = "started",
    actor: Annotated[str | None, typer.Option(help="who starts it (default: $USER)")] = None,
) -> None:
    """Start a rollout from its plan: its first stage enrols new cases from now."""
    source = plan_file.read_text() if plan_file.is_file() else None
    if source is None:
        raise InputError(f"{plan_file}: no such file")
    app = build(_settings())
    try:
        live = app.rollouts.start(
            source, filename=str(plan_file), actor=_actor(actor), reason=reason
        )
        treatments = {name: arm["treatment"] for name, arm in app.rollouts.arms(live).items()}
    except SpecError as exc:
        raise _problems(exc, plan_file, False) from None
    finally:
        app.close()
    out.print(
        f"rollout {live.name} started: stage {live.stage.name} enrols "
        f"{live.stage.share:g}% of eligible {live.plan.workflow} cases",
        soft_wrap=True,
    )
    for name, treatment in treatments.items():  # a misspelt arm would get the workflow's own
        out.print(f"  arm {name}: {treatment}", soft_wrap=True)


def _decide(action: str, name: str, reason: str, actor: str | None) -> None:
    app = build(_settings())
    try:
        rollouts = app.rollouts
        take = {"promote": rollouts.promote, "hold": rollouts.hold, "halt": rollouts.halt,
                "resume": rollouts.resume}[action]  # fmt: skip
        live = take(name, actor=_actor(actor), reason=reason)
    finally:
        app.close()
    out.print(f"rollout {name}: {action} recorded; now {live.state} at stage {live.stage.name}")


@rollout_cli.command("promote")
def rollout_promote(
    name: str,
    reason: Annotated[str, typer.Option(help="why (recorded with the decision)")],
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
) -> None:
    """Move to the next stage: only when every gate and minimum passes and no guardrail broke."""
    _decide("promote", name, reason, actor)


@rollout_cli.command("hold")
def rollout_hold(
    name: str,
    reason: Annotated[str, typer.Option(help="why (recorded with the decision)")],
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
) -> None:
    """Stop automatic promotion; the stage goes on enrolling."""
    _decide("hold", name, reason, actor)


@rollout_cli.command("halt")
def rollout_halt(
    name: str,
    reason: Annotated[str, typer.Option(help="why (recorded with the decision)")],
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
) -> None:
    """Stop new enrolments at once: new cases are left out, as business as usual."""
    _decide("halt", name, reason, actor)


@rollout_cli.command("resume")
def rollout_resume(
    name: str,
    reason: Annotated[str, typer.Option(help="why (recorded with the decision)")],
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
) -> None:
    """Run a held or halted rollout again."""
    _decide("resume", name, reason, actor)


@rollout_cli.command("validate")
def rollout_validate(file: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check a rollout plan; print its stages with each arm's sample, or every problem (exit 2)."""
    from closeloop.rollout.plan import describe, load_plan_file

    try:
        plan = load_plan_file(file)
    except SpecError as exc:
        raise _problems(exc, file, as_json) from None
    stages = describe(plan)
    if as_json:
        print(json.dumps({"valid": True, "rollout": plan.rollout, "stages": stages}))
        return
    out.print(
        f"{file}: valid ({plan.rollout} v{plan.version} of {plan.workflow}; "
        f"promotion {plan.promotion}, on halt {plan.on_halt.replace('_', ' ')})",
        soft_wrap=True,
    )
    table = Table("stage", "share", "segment", "at least", "experiment", "gates")
    for row in stages:
        experiment = ""
        if "experiment" in row:
            e = row["experiment"]
            arms = " / ".join(f"{name} {weight}" for name, weight in e["arms"].items())
            h = e["hypothesis"]
            experiment = (
                f"{e['name']}: {arms}; {h['metric']} {h['direction']} "
                f"{h['minimum_detectable_effect']:.0%} points from {h['baseline']:.0%}: "
                f"{e['sample_per_arm']:,} per arm (power {e['power']:.0%})"
            )
        gates = "; ".join(
            f"{g['metric']} "
            + (
                f">= {g['at_least']:.1%}" if "at_least" in g
                else f"<= {g['at_most']:.1%}" if "at_most" in g
                else f"not worse than control by {g['not_worse_than_control_by']:.1%}"
            )
            for g in row["gates"]
        )  # fmt: skip
        table.add_row(
            row["stage"], f"{row['share']:g}%", row["segment"] or "all",
            f"{row['min_days']:g} days, {row['min_sample']:,} cases", experiment, gates,
        )  # fmt: skip
    out.print(table)
    rails = ", ".join(
        r.metric + (f" > {r.above:g}" if r.above is not None else "") for r in plan.guardrails
    )
    out.print(f"guardrails (halt at once): {rails or 'none'}")


ROLLOUT_TICK_SECONDS = 60.0  # how often `closeloop work` takes the rollouts' automatic decisions


def _live_status(name: str, as_json: bool) -> None:
    """A started rollout: its state, the current stage's gate table and its decisions."""
    app = build(_settings())
    try:
        report = app.rollouts.report(name)
    finally:
        app.close()
    if as_json:
        print(json.dumps(report))
        return
    out.print(
        f"rollout {name}: {report['state']}, stage {report['stage']} ({report['share']:g}%) "
        f"since {report['stage_started_at'][:16]}",
        soft_wrap=True,
    )
    table = Table("criterion", "value", "interval", "")
    for row in report["gates"]:
        value = (
            "-" if row["value"] is None
            else f"{row['value']:.1f}" if row["criterion"].endswith("days in the stage")
            else f"{row['value']:.4g}"
        )  # fmt: skip
        low_high = row["interval"]
        interval = f"{low_high[0]:.2%} to {low_high[1]:.2%}" if low_high else ""
        verdict = {True: "pass", False: "FAIL", None: "no data"}[row["passed"]]
        table.add_row(row["criterion"], value, interval, verdict)
    out.print(table)
    for breach in report["breaches"]:
        out.print(f"guardrail broken: {breach}", markup=False, highlight=False)
    if report["arms"]:
        out.print(_arms_table(report))
    log_table = Table("when", "decision", "stage", "who", "why")
    for d in report["decisions"]:
        log_table.add_row(d["at"][:16], d["action"], d["stage"], d["actor"], d["reason"])
    out.print(log_table)


def _span(vs: dict[str, Any] | None) -> str:
    if not vs:
        return "no data yet"
    low, high = vs["interval"]
    return f"{vs['difference']:+.2%} ({low:+.2%} to {high:+.2%}), {vs['chance_to_win']:.0%} to win"


def _arms_table(report: dict[str, Any]) -> Table:
    """Each arm against the control (resolution) and the first arm (completion), and how
    soon its cases resolve (Kaplan-Meier; the control's on the last row)."""
    table = Table(
        "arm", "treatment", "cases", "completed", "resolved",
        "resolution vs control", "completion vs first arm", "median / within 3d",
    )  # fmt: skip

    def soon(times: dict[str, Any] | None) -> str:
        if not times:
            return ""
        median = "-" if times["median_hours"] is None else f"{times['median_hours']:.1f} h"
        return f"{median} / {times['resolved_within_3d']:.0%}"

    for name, a in report["arms"].items():
        table.add_row(
            name, a["treatment"], f"{a['cases']:,}", f"{a['completed']:,}", f"{a['resolved']:,}",
            _span(a["versus_control"]),
            _span(a["versus_first_arm"]) if "versus_first_arm" in a else "(the first arm)",
            soon(a["time_to_resolution"]),
        )  # fmt: skip
    control = report["control"]
    table.add_row(
        "control", "business as usual", f"{control['cases']:,}", "", f"{control['resolved']:,}",
        "", "", soon(control["time_to_resolution"]),
    )  # fmt: skip
    return table


@rollout_cli.command("status")
def rollout_status(
    name: Annotated[str | None, typer.Argument(help="a started rollout")] = None,
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="or a plan, judged over the cases in a window")
    ] = None,
    stage_name: Annotated[
        str | None, typer.Option("--stage", help="the stage to judge (default: the first)")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="cases opened from (default: the first case)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(help="cases opened before (default: after the last case)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The stage's gate table from the database: each criterion, value, interval, pass/fail."""
    from closeloop.rollout.gates import Tally, judge
    from closeloop.rollout.plan import load_plan_file

    if (name is None) == (plan_file is None):
        raise InputError("give a started rollout's NAME, or --plan FILE")
    if name is not None:
        _live_status(name, as_json)
        return
    assert plan_file is not None
    try:
        plan = load_plan_file(plan_file)
    except SpecError as exc:
        raise _problems(exc, plan_file, as_json) from None
    stages = {s.name: s for s in plan.stages}
    stage = stages.get(stage_name or plan.stages[0].name)
    if stage is None:
        raise InputError(
            f"--stage: {plan.rollout} has no stage {stage_name!r} ({', '.join(stages)})"
        )
    app = build(_settings())
    try:
        with app.store.read() as tx:
            first, last = tx.opened_between(plan.workflow)
            # Times given without a zone are UTC, as the database keeps them.
            since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
            until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
            start = since or first
            end = until or (last + timedelta(microseconds=1) if last else None)
            tallies = tx.rollout_tallies(plan.workflow, start, end) if start and end else {}
    finally:
        app.close()
    enrolled, control = Tally(**tallies.get("enrolled", {})), Tally(**tallies.get("control", {}))
    elapsed = end - start if start and end else timedelta(0)
    verdict = judge(plan, stage, enrolled=enrolled, control=control, elapsed=elapsed)

    def row(result: Any) -> dict[str, Any]:
        return {
            "criterion": result.criterion,
            "value": result.value,
            "interval": list(result.interval) if result.interval else None,
            "passed": result.passed,
            "detail": result.detail,
        }

    report = {
        "rollout": plan.rollout,
        "stage": stage.name,
        "since": start.isoformat() if start else None,
        "until": end.isoformat() if end else None,
        "enrolled": enrolled.__dict__,
        "control": control.__dict__,
        "gates": [row(g) for g in verdict.gates],
        "minimums": [row(m) for m in verdict.minimums],
        "breaches": list(verdict.breaches),
        "promotable": verdict.promotable,
    }
    if as_json:
        print(json.dumps(report))
        return
    out.print(
        f"{plan.rollout}, stage {stage.name} ({stage.share:g}%): {enrolled.cases:,} cases "
        f"enrolled, {control.cases:,} in the control",
        soft_wrap=True,
    )
    table = Table("criterion", "value", "interval", "")
    for result in verdict.gates + verdict.minimums:
        rate = result.value is not None and result.interval is not None
        value = (
            "-" if result.value is None else f"{result.value:.2%}" if rate else f"{result.value:g}"
        )
        interval = (
            f"{result.interval[0]:.2%} to {result.interval[1]:.2%}" if result.interval else ""
        )
        verdict_text = {True: "pass", False: "FAIL", None: "no data"}[result.passed]
        table.add_row(result.criterion, value, interval, verdict_text)
    out.print(table)
    for breach in verdict.breaches:
        out.print(f"guardrail broken: {breach}", markup=False, highlight=False)
    out.print("promotable" if verdict.promotable else "not promotable yet")


@rollout_cli.command("bucket")
def rollout_bucket(
    group: Annotated[str, typer.Option(help="the group (a workflow's name)")],
    unit: Annotated[str, typer.Option(help="the unit (an account id)")],
    percentage: Annotated[
        float | None, typer.Option(min=0, max=100, help="also say whether it is in this cohort")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The unit's bucket (1..100) in the group, as Unleash's normalised hash puts it."""
    from closeloop.rollout import bucket, in_cohort

    found: dict[str, Any] = {"group": group, "unit": unit, "bucket": bucket(group, unit)}
    if percentage is not None:
        found |= {"percentage": percentage, "in_cohort": in_cohort(group, unit, percentage)}
    if as_json:
        print(json.dumps(found))
        return
    line = f"{group}:{unit} is in bucket {found['bucket']}"
    if percentage is not None:
        line += f": {'in' if found['in_cohort'] else 'not in'} a {percentage:g}% cohort"
    out.print(line, markup=False, highlight=False)
