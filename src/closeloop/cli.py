"""The `closeloop` command line (Typer + Rich).

Each command builds what it needs from Settings, prints for people, and
prints JSON with --json. Errors print without a traceback: exit 2 for bad
input, 1 for a failure.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy
import structlog
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from closeloop.app import Settings, TriggerIn, build, settle_heap
from closeloop.app.settings import EXAMPLE
from closeloop.clock import SimClock
from closeloop.engine import Status
from closeloop.errors import CloseloopError, InputError, SpecError, TriggerError
from closeloop.spec import explain, load_spec_file

cli = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="closeloop: resolution-first customer outreach.",
)
spec_cli = typer.Typer(no_args_is_help=True, help="Validate and explain resolution specs.")
db_cli = typer.Typer(no_args_is_help=True, help="Database schema.")
case_cli = typer.Typer(no_args_is_help=True, help="Look at cases.")
cli.add_typer(spec_cli, name="spec")
cli.add_typer(db_cli, name="db")
cli.add_typer(case_cli, name="case")
stats_cli = typer.Typer(no_args_is_help=True, help="Statistics for planning and reading a rollout.")
cli.add_typer(stats_cli, name="stats")
rollout_cli = typer.Typer(no_args_is_help=True, help="Phased rollouts.")
cli.add_typer(rollout_cli, name="rollout")
template_cli = typer.Typer(no_args_is_help=True, help="Look at message templates.")
cli.add_typer(template_cli, name="template")
sandbox_cli = typer.Typer(no_args_is_help=True, help="Local providers for development.")
cli.add_typer(sandbox_cli, name="sandbox")
connector_cli = typer.Typer(no_args_is_help=True, help="Connector mappings.")
cli.add_typer(connector_cli, name="connector")
out = Console()
err = Console(stderr=True, soft_wrap=True)


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# -- spec -------------------------------------------------------------------
def _problems(exc: SpecError, file: Path, as_json: bool) -> typer.Exit:
    """Print every problem of a file (or them as JSON); the exit for bad input."""
    if as_json:
        print(json.dumps({"valid": False, "problems": [p.__dict__ for p in exc.problems]}))
    else:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s) in {file}", style="bold red", soft_wrap=True)
    return typer.Exit(2)


@spec_cli.command("validate")
def spec_validate(file: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check a spec; print every problem with file:line:column (exit 2 if any)."""
    try:
        compiled = load_spec_file(file)
    except SpecError as exc:
        raise _problems(exc, file, as_json) from None
    if as_json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "workflow": compiled.spec.workflow,
                    "version": compiled.spec.version,
                }
            )
        )
    else:
        out.print(f"{file}: valid ({compiled.key})", style="green", soft_wrap=True)


@spec_cli.command("explain")
def spec_explain(file: Path) -> None:
    """Print the one-page summary a reviewer signs off."""
    print(explain(load_spec_file(file).spec), end="")  # plain text, unwrapped: a page to sign


@connector_cli.command("validate")
def connector_validate(
    file: Path, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Check a connector mapping; print every problem with file:line:column (exit 2 if any)."""
    from closeloop.connectors.mapping import (
        BatchMapping,
        PluginConnector,
        SqlMapping,
        load_mapping_file,
    )

    try:
        mapping = load_mapping_file(file)
    except SpecError as exc:
        raise _problems(exc, file, as_json) from None
    if isinstance(mapping, PluginConnector):  # its code is checked when it is loaded
        summary: dict[str, Any] = {"plugin": mapping.plugin}
        line = f"plugin {mapping.plugin}"
    elif isinstance(mapping, SqlMapping | BatchMapping):  # tables and folders: when it runs
        summary = {"operations": sorted(mapping.operations)}
        line = f"{mapping.kind}: " + ", ".join(summary["operations"])
    else:
        summary = {"operations": sorted(mapping.operations)}
        line = ", ".join(summary["operations"])
    if as_json:
        print(json.dumps({"valid": True, "connector": mapping.connector, **summary}))
    else:
        out.print(
            f"{file}: valid ({mapping.connector}: {line})",
            style="green",
            soft_wrap=True,  # one line, however long the path: scripts read it
        )


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
    except SpecError as exc:
        raise _problems(exc, plan_file, False) from None
    finally:
        app.close()
    out.print(
        f"rollout {live.name} started: stage {live.stage.name} enrols "
        f"{live.stage.share:g}% of eligible {live.plan.workflow} cases",
        soft_wrap=True,
    )


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
        value = "-" if row["value"] is None else f"{row['value']:.4g}"
        low_high = row["interval"]
        interval = f"{low_high[0]:.2%} to {low_high[1]:.2%}" if low_high else ""
        verdict = {True: "pass", False: "FAIL", None: "no data"}[row["passed"]]
        table.add_row(row["criterion"], value, interval, verdict)
    out.print(table)
    for breach in report["breaches"]:
        out.print(f"guardrail broken: {breach}", markup=False, highlight=False)
    if report["arms"]:
        arms = Table("arm", "cases", "resolved", "against the control (points)", "chance to win")
        for name, a in report["arms"].items():
            vs = a.get("versus_control")
            span = (
                f"{vs['difference']:+.2%} ({vs['interval'][0]:+.2%} to {vs['interval'][1]:+.2%})"
                if vs
                else "no data yet"
            )
            win = f"{vs['chance_to_win']:.1%}" if vs else ""
            arms.add_row(name, f"{a['cases']:,}", f"{a['resolved']:,}", span, win)
        out.print(arms)
    log_table = Table("when", "decision", "stage", "who", "why")
    for d in report["decisions"]:
        log_table.add_row(d["at"][:16], d["action"], d["stage"], d["actor"], d["reason"])
    out.print(log_table)


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


# -- database ---------------------------------------------------------------
@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to CLOSELOOP_DATABASE_URL (default: the SQLite file)."""
    from closeloop.store import Store

    settings = _settings()
    store = Store.connect(settings.resolved_database_url())
    store.upgrade()
    store.dispose()
    out.print(f"database is up to date: {settings.resolved_database_url()}")


# -- intake -----------------------------------------------------------------
def _rows(file: Path, fmt: str, event_type: str | None) -> Iterator[tuple[int, Any]]:
    """(line number, TriggerIn or error message) for each row of a batch file."""
    with file.open(newline="", encoding="utf-8") as handle:
        if fmt == "csv":
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise InputError(f"{file}:1: the header needs an id column")
            if "type" not in reader.fieldnames and not event_type:
                raise InputError(f"{file}:1: the header needs a type column, or pass --type")
            for row in reader:
                line = reader.line_num
                fields = {k: v for k, v in row.items() if k not in {"id", "type"} and k}
                if None in row:
                    yield line, "more values than header columns"
                    continue
                yield (
                    line,
                    TriggerIn(
                        id=row["id"] or "", type=row.get("type") or event_type or "", data=fields
                    ),
                )
            return
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line, f"not JSON: {exc.msg} at column {exc.colno}"
                continue
            if not isinstance(obj, dict):
                yield line, "expected a JSON object"
                continue
            data: Any = obj.get("data")
            if data is None:
                data = {k: v for k, v in obj.items() if k not in {"id", "type"}}
            if not isinstance(data, dict):
                yield line, "data must be an object"
                continue
            yield (
                line,
                TriggerIn(
                    id=str(obj.get("id") or ""),
                    type=str(obj.get("type") or event_type or ""),
                    data=data,
                ),
            )


@cli.command()
def ingest(
    file: Path,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or jsonl")] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="event type of every row")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Take a CSV or JSON Lines batch of backend events; bad rows are reported, good rows kept."""
    if not file.exists():
        raise InputError(f"{file}: no such file")
    fmt = fmt or ("csv" if file.suffix.lower() == ".csv" else "jsonl")
    if fmt not in {"csv", "jsonl"}:
        raise InputError(f"--format must be csv or jsonl, not {fmt!r}")
    app = build(_settings())
    try:
        bad: list[str] = []
        unread: list[str] = []  # rows whose account the system of record could not give now
        good: list[tuple[int, TriggerIn]] = []
        counts = {"created": 0, "duplicate": 0, "closing_events": 0, "cases_closed": 0}

        def flush() -> None:
            results = app.runtime.intake([item for _, item in good])
            for (line, _), result in zip(good, results, strict=True):
                if result.status == "unavailable":
                    unread.append(f"{file}:{line}: not taken: {result.reason}")
                elif result.created:
                    counts["created"] += 1
                elif result.case_id is None:
                    counts["closing_events"] += 1
                    counts["cases_closed"] += result.closed
                else:
                    counts["duplicate"] += 1
            good.clear()

        for line, item in _rows(file, fmt, event_type):
            if isinstance(item, str):
                bad.append(f"{file}:{line}: {item}")
                continue
            assert isinstance(item, TriggerIn)
            try:
                app.runtime.validate(item)
            except TriggerError as exc:
                bad.append(f"{file}:{line}: {exc}")
                continue
            good.append((line, item))
            if len(good) >= 500:
                flush()
        flush()
        app.work()
    finally:
        app.close()
    if as_json:
        print(
            json.dumps(
                {
                    **counts,
                    "rejected": len(bad),
                    "errors": bad,
                    "unavailable": len(unread),
                    "not_taken": unread,
                }
            )
        )
    else:
        for message in bad + unread:
            err.print(message, markup=False, highlight=False)
        out.print(
            f"created {counts['created']} case(s), {counts['duplicate']} already known, "
            f"{counts['closing_events']} closing event(s) closed {counts['cases_closed']} "
            f"case(s), {len(bad)} row(s) rejected"
            + (
                f", {len(unread)} row(s) not taken (the system of record could not be "
                "read: run the same file again; trigger ids keep it idempotent)"
                if unread
                else ""
            )
        )
    if bad:
        raise typer.Exit(2)
    if unread:
        raise typer.Exit(1)


# -- running ----------------------------------------------------------------
@cli.command()
def work(
    once: Annotated[bool, typer.Option("--once", help="run what is due now, then stop")] = False,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 1.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="serve Prometheus metrics on this port"),
    ] = None,
) -> None:
    """Run due timers, messages and writebacks (a worker)."""
    app = build(_settings())
    if metrics_port is not None:
        try:
            app.telemetry.serve(metrics_port)
        except OSError as exc:
            app.close()
            raise InputError(f"--metrics-port {metrics_port}: {exc.strerror or exc}") from exc
    settle_heap()
    ticked = 0.0
    try:
        while True:
            done = app.work()
            if once or time.monotonic() - ticked >= ROLLOUT_TICK_SECONDS:
                # Rollouts: a broken guardrail halts at once; passing gates promote if automatic.
                for taken in app.rollouts.tick():
                    structlog.get_logger().info("rollout_decision", decision=taken)
                ticked = time.monotonic()
            if once:
                out.print(f"{done} item(s) processed")
                return
            if not done:
                time.sleep(interval)
    finally:
        app.close()


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the public API (uvicorn)."""
    import logging

    import uvicorn

    from closeloop.web import create_api
    from closeloop.web.cards import RedactCardNumbers

    app = build(_settings(public_url=f"http://{host}:{port}"))
    settle_heap()
    api = create_api(app)
    config = uvicorn.Config(api, host=host, port=port, log_level="info")
    for name in ("uvicorn.access", "uvicorn.error"):  # after Config set up the loggers
        logging.getLogger(name).addFilter(RedactCardNumbers())
    uvicorn.Server(config).run()


@cli.command()
def link(case_id: str, channel: Annotated[str, typer.Option()] = "sms") -> None:
    """Issue a fresh mini-app link for a case and print it."""
    app = build(_settings())
    try:
        print(app.service.issue_link(case_id, channel))
    finally:
        app.close()


@case_cli.command("show")
def case_show(case_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print a case, its whole history and where each of its writebacks stands."""
    from closeloop.app.dispatch import writeback_state

    app = build(_settings())
    try:
        case = app.runtime.case(case_id)
        with app.store.read() as tx:
            history = tx.history(case_id)
            rows = tx.writebacks(case_id)
    finally:
        app.close()
    writebacks = [
        {
            "operation": r["operation"],
            "argument": r["argument"],
            "state": writeback_state(r),
            "attempts": r["attempts"],
            "idempotency_key": r["idempotency_key"],
            "reference": (r["result"] or {}).get("reference") or None,
            "last_error": (r["result"] or {}).get("error") or None,
        }
        for r in rows
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "id": case.id,
                    "workflow": case.workflow,
                    "account_id": case.account_id,
                    "status": case.status.value,
                    "reason": case.reason,
                    "trigger": {"id": case.trigger_id, "data": dict(case.data)},
                    "identity": {
                        "level": case.identity_level,
                        "failures": case.identity_failures,
                        "code_failures": case.code_failures,
                    },
                    "outcome": case.outcome,
                    "customer_inputs": dict(case.submission),
                    "history": history,
                    "writebacks": writebacks,
                },
                default=str,
            )
        )
        return
    out.print(f"[bold]{case.id}[/] {case.workflow} account {case.account_id}: {case.status}")
    if case.reason:
        out.print(f"why: {case.reason}", markup=False, highlight=False)
    trigger = ", ".join(f"{k}={v}" for k, v in case.data.items())
    out.print(f"trigger {case.trigger_id}: {trigger}", markup=False, highlight=False)
    out.print(
        f"identity: {case.identity_level} ({case.identity_failures} failed checks, "
        f"{case.code_failures} wrong codes)",
        markup=False,
        highlight=False,
    )
    if case.outcome:
        inputs = ", ".join(f"{k}={v}" for k, v in case.submission.items())
        out.print(f"outcome: {case.outcome} ({inputs})", markup=False, highlight=False)
    table = Table("seq", "when", "what", "who", "why")
    for h in history:
        table.add_row(str(h["seq"]), h["at"].isoformat(), h["kind"], h["actor"], h["reason"])
    out.print(table)
    if writebacks:
        # Unknown: an attempt was never answered cleanly; the core may hold the effect
        # under the key shown, and someone has to look before doing it again.
        done = Table("writeback", "state", "attempts", "reference or last error", "key")
        for w in writebacks:
            what = w["operation"] + (f" {w['argument']}" if w["argument"] else "")
            detail = w["reference"] or w["last_error"] or ""
            done.add_row(what, w["state"], str(w["attempts"]), detail, w["idempotency_key"])
        out.print(done)


@template_cli.command("preview")
def template_preview(
    workflow: str,
    step: str,
    case_id: Annotated[str, typer.Option("--case", help="the case whose data fills it in")],
    locale: Annotated[
        str | None, typer.Option(help="language to preview (default: the customer's)")
    ] = None,
    fallback: Annotated[bool, typer.Option("--fallback", help="the step's fallback")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Render one outreach step's message for a case, as the customer would get it."""
    from closeloop.app.compose import compose
    from closeloop.channels.sms import measure

    settings = _settings()
    app = build(settings)
    try:
        case = app.runtime.case(case_id)
        compiled = app.runtime.spec_for(case)
    finally:
        app.close()
    spec = compiled.spec
    if workflow not in (spec.workflow, compiled.key):
        raise InputError(f"case {case_id} belongs to workflow {compiled.key}, not {workflow}")
    steps = {s.name: s for s in spec.outreach.steps}
    if step not in steps:
        raise InputError(f"{compiled.key} has no step {step!r} (steps: {', '.join(steps)})")
    chosen = steps[step]
    channel, name = chosen.channel, chosen.template
    if fallback:
        if chosen.fallback is None:
            raise InputError(f"step {step!r} has no fallback")
        channel, name = chosen.fallback.channel, chosen.fallback.template
    if locale is not None:
        case = case.evolve(account={**case.account, "locale": locale})
    base = settings.public_url.rstrip("/")
    subject, body = compose(
        case,
        spec.templates[name],
        link=f"{base}/m/PREVIEW",
        unsubscribe_url=f"{base}/u/PREVIEW" if channel == "email" else None,
    )
    contact = case.contact_for(channel)
    shown: dict[str, Any] = {
        "workflow": compiled.key,
        "step": step,
        "template": name,
        "channel": channel,
        "locale": case.account.get("locale", "en"),
        "to": contact.address if contact else None,
        "subject": subject,
        "body": body,
    }
    if channel == "sms":
        parts = measure(body)
        shown.update(
            encoding=parts.encoding,
            segments=parts.segments,
            cost=str(settings.sms_segment_cost * parts.segments),
        )
    if as_json:
        print(json.dumps(shown))
        return
    for key, value in shown.items():
        if key != "body" and value is not None:
            out.print(f"[bold]{key}:[/] {value}", highlight=False)
    print()
    print(body)  # exactly as sent: no wrapping


@sandbox_cli.command("smtp")
def sandbox_smtp(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 2525,
    host: str = "127.0.0.1",
    tls: Annotated[bool, typer.Option("--tls", help="offer STARTTLS (dev certificate)")] = False,
) -> None:
    """Run the local SMTP sink: it accepts mail and keeps it in the world database."""
    import ssl

    from closeloop.channels.devtls import dev_certificate
    from closeloop.channels.smtp import SmtpSink
    from closeloop.store.database import create_engine

    settings = _settings()
    context = None
    if tls:
        cert, key = dev_certificate(settings.data_dir / "keys")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        err.print(f"STARTTLS certificate: {cert} (trust it with CLOSELOOP_SMTP_CA_FILE)")
    engine = create_engine(settings.resolved_world_url())
    sink = SmtpSink(engine, host=host, port=port, tls_context=context).start()
    err.print(f"SMTP sink on {host}:{port}, keeping mail in {settings.resolved_world_url()}")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        sink.stop()
        engine.dispose()


def _json_file(flag: str, path: Path) -> Any:
    """The JSON a flag's file holds; InputError naming the flag and the file if not."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{flag} {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{flag} {path}: not JSON ({exc})") from exc


@sandbox_cli.command("core")
def sandbox_core(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8092,
    host: str = "127.0.0.1",
    faults: Annotated[
        Path | None, typer.Option(help="a JSON file of faults to start with (see docs/core.md)")
    ] = None,
    accounts: Annotated[
        Path | None, typer.Option(help="a JSON file: a list of account records to load")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="and this private key")] = None,
    client_ca: Annotated[
        Path | None, typer.Option(help="require client certificates signed by this CA (mTLS)")
    ] = None,
) -> None:
    """Run the reference billing core: accounts, payments and a ledger, with injected faults.

    Its API key and admin key come from CLOSELOOP_CORE_API_KEY and
    CLOSELOOP_CORE_ADMIN_KEY, or are made up and printed. With
    CLOSELOOP_CORE_CLIENT_ID and CLOSELOOP_CORE_CLIENT_SECRET it also issues
    OAuth 2.0 client-credentials tokens at /oauth/token. Faults can be
    changed while it runs: PUT /_admin/faults with the admin key.
    """
    import ssl

    import uvicorn
    from pydantic import ValidationError

    from closeloop.connectors.reference_core import Faults, ReferenceCore
    from closeloop.store.database import create_engine

    settings = _settings()
    api_key = os.environ.get("CLOSELOOP_CORE_API_KEY") or secrets.token_urlsafe(18)
    admin_key = os.environ.get("CLOSELOOP_CORE_ADMIN_KEY") or secrets.token_urlsafe(18)
    start = Faults()
    if faults is not None:
        try:
            start = Faults.model_validate(_json_file("--faults", faults))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise InputError(f"--faults {faults}: {problems}") from exc
    records: Any = []
    if accounts is not None:
        records = _json_file("--accounts", accounts)
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and isinstance(r.get("account_id"), str) for r in records
        ):
            raise InputError(
                f"--accounts {accounts}: expected a list of objects, each with an account_id"
            )
    if (tls_cert is None) != (tls_key is None) or (client_ca and not tls_cert):
        raise InputError("--tls-cert and --tls-key go together; --client-ca needs them")
    for flag, path in (
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
        ("--client-ca", client_ca),
    ):
        if path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
    client_id = os.environ.get("CLOSELOOP_CORE_CLIENT_ID")
    client_secret = os.environ.get("CLOSELOOP_CORE_CLIENT_SECRET")
    clients = {client_id: client_secret} if client_id and client_secret else {}
    engine = create_engine(f"sqlite:///{settings.data_dir / 'core.db'}")
    core = ReferenceCore(
        engine, api_key=api_key, admin_key=admin_key, faults=start, oauth_clients=clients
    )
    added = core.add_accounts(records)
    scheme = "https" if tls_cert else "http"
    err.print(
        f"reference core on {scheme}://{host}:{port} ({added} accounts added; "
        f"API key {api_key}, admin key {admin_key}"
        + (f"; OAuth client {client_id}" if clients else "")
        + ("; client certificates required" if client_ca else "")
        + ")"
    )
    tls: dict[str, Any] = {}
    if tls_cert and tls_key:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
    if client_ca:
        tls |= {"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    try:
        uvicorn.run(core.app, host=host, port=port, log_level="warning", **tls)
    finally:
        engine.dispose()


@sandbox_cli.command("cards")
def sandbox_cards(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8091,
    host: str = "127.0.0.1",
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="an origin that may frame the card form (default: PUBLIC_URL)"),
    ] = None,
) -> None:
    """Run the local card sandbox: hosted card fields and a token API, on their own origin.

    Point closeloop at it with CLOSELOOP_CARD_FIELDS_URL=http://HOST:PORT and
    CLOSELOOP_CARD_API_KEY (the same key; a made-up one is printed when unset).
    """
    import uvicorn

    from closeloop.connectors.card_sandbox import CardSandbox
    from closeloop.store.database import create_engine

    settings = _settings()
    key = settings.card_api_key.get_secret_value() if settings.card_api_key else "sandbox-card-key"
    origins = allow_origin or [settings.public_url]
    for given in origins:
        if not given.startswith(("http://", "https://")):
            raise InputError(
                f"--allow-origin {given!r}: give an origin such as https://pay.example"
            )
    engine = create_engine(f"sqlite:///{settings.data_dir / 'cards.db'}")
    sandbox = CardSandbox(engine, allowed_origins=origins, api_key=key)
    err.print(f"card sandbox on http://{host}:{port} (framable by {', '.join(origins)}; key {key})")
    try:
        uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
    finally:
        engine.dispose()


@sandbox_cli.command("twilio")
def sandbox_twilio(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8089,
    host: str = "127.0.0.1",
    inbound_url: Annotated[
        str | None,
        typer.Option(
            help="closeloop's inbound webhook (default: PUBLIC_URL/webhooks/twilio/inbound)"
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="messages per second per sender")] = 100.0,
) -> None:
    """Run the local Twilio-compatible Messages API (SMS and WhatsApp).

    It uses CLOSELOOP_TWILIO_ACCOUNT_SID and CLOSELOOP_TWILIO_AUTH_TOKEN (or
    made-up ones it prints), keeps messages in the world database, and calls
    status callbacks every 200 ms. A customer's reply: curl --data-urlencode
    From=+12125550123 --data-urlencode To=+15005550006 -d Body=STOP
    http://HOST:PORT/sandbox/reply
    """
    import threading

    import uvicorn

    from closeloop.channels.twilio_sandbox import TwilioSandbox
    from closeloop.store.database import create_engine

    settings = _settings()
    sid = settings.twilio_account_sid or "AC" + "0" * 32
    token = (
        settings.twilio_auth_token.get_secret_value()
        if settings.twilio_auth_token
        else "sandbox-auth-token"
    )
    engine = create_engine(settings.resolved_world_url())
    sandbox = TwilioSandbox(
        engine,
        account_sid=sid,
        auth_token=token,
        inbound_url=inbound_url or f"{settings.public_url.rstrip('/')}/webhooks/twilio/inbound",
        rate_per_second=rate,
    )
    stop = threading.Event()

    def callbacks() -> None:
        while not stop.wait(0.2):
            sandbox.deliver_callbacks()

    threading.Thread(target=callbacks, daemon=True).start()
    err.print(f"Twilio sandbox on http://{host}:{port} (account {sid}, token {token})")
    try:
        uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        engine.dispose()


# -- demo ---------------------------------------------------------------------
@cli.command()
def demo(
    accounts: Annotated[int, typer.Option(min=1, max=1_000_000)] = 2000,
    days: Annotated[int, typer.Option(min=1, max=365)] = 30,
    seed: Annotated[int, typer.Option()] = 7,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for databases and report")] = Path(
        "closeloop-demo"
    ),
    as_json: Annotated[bool, typer.Option("--json")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed run")] = False,
    cohort: Annotated[float, typer.Option(min=0, max=100, help="rollout cohort, %")] = 100.0,
    providers: Annotated[
        str,
        typer.Option(
            help="sandbox: over real SMTP and HTTP to closeloop's SMTP and Twilio sandboxes "
            "on loopback, each in its own process; sink: straight into the local sink"
        ),
    ] = "sandbox",
) -> None:
    """Simulate a portfolio through the example workflow and report outcome metrics."""
    from contextlib import ExitStack

    from closeloop.sim import Params, Simulation, summarize, to_json
    from closeloop.sim.devices import DEMO_URL, Device, sandboxes
    from closeloop.sim.runner import START
    from closeloop.sim.visits import Visitor
    from closeloop.web import create_api

    if providers not in ("sink", "sandbox"):
        raise InputError(f"--providers must be sink or sandbox, not {providers!r}")

    if not resume:
        _fresh(out_dir)
    stack = ExitStack()
    # The card provider always runs: simulated customers type cards into its form.
    kinds = ("smtp", "twilio", "cards") if providers == "sandbox" else ("cards",)
    running = stack.enter_context(sandboxes(out_dir / "sandboxes", fresh=not resume, kinds=kinds))
    extra = {**running.settings, "public_url": DEMO_URL, "link_failure_floor_seconds": 0.0}
    if providers == "sandbox":
        # Send a batch on several connections: the providers answer from other processes.
        extra["send_concurrency"] = 8
    if "CLOSELOOP_CONSENT_NOTICE_VERSION" not in os.environ:
        extra["consent_notice_version"] = "demo-notices-2026-03"
    settings = _settings(data_dir=out_dir, workflows=[EXAMPLE], cohort_percent=cohort, **extra)
    if not resume and settings.database_url:
        _reset_database(settings.database_url)
    clock = SimClock(START)
    app = build(settings, clock=clock, seed=seed, error_rate=0.03, timeout_rate=0.01)
    if providers == "sandbox":  # providers carry the messages; the sink stands for the devices
        devices = {
            ch: Device(provider=app.channels[ch], device=app.sink)
            for ch in ("email", "sms", "whatsapp")
        }
        app.channels = app.dispatcher.channels = {**app.channels, **devices}
    params = Params(accounts=accounts, days=days, seed=seed)
    database = settings.resolved_database_url()
    settle_heap()
    visitor = Visitor(create_api(app), DEMO_URL, app.sink.engine)
    try:
        sim = Simulation(app, clock, params, visitor)
        sim.prepare(resume=resume)
        with Progress(
            TextColumn("simulated day {task.completed:.1f}/{task.total:.0f}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("demo", total=days)
            sim.run(lambda done, total: bar.update(task, completed=done))
        summary = summarize(app, params, database)
        summary["providers"] = providers
        with app.store.read() as tx:
            example = tx.first_case_id(Status.RESOLVED)
    finally:
        visitor.close()
        app.close()
        stack.close()
    if providers == "sandbox":  # what the providers accepted, counted once they stopped
        summary["provider_messages"] = running.received
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(to_json(summary) + "\n")
    if as_json:
        print(json.dumps(summary))
        return
    _print_summary(summary, out_dir)
    if example:
        print("one resolved case, with its whole history:")
        print(f"  CLOSELOOP_DATA_DIR={out_dir} closeloop case show {example}")  # one line to copy


def _fresh(out_dir: Path) -> None:
    """Remove an earlier run's databases and report from a simulation's folder."""
    for name in ("closeloop.db", "world.db", "report.json"):
        for suffix in ("", "-wal", "-shm") if name.endswith(".db") else ("",):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)


# -- drill ----------------------------------------------------------------------
@cli.command()
def drill(
    scenario: Annotated[
        str,
        typer.Option(
            help="outage, partial-timeout, malformed, latency, flapping or all (docs/drills.md)"
        ),
    ],
    accounts: Annotated[int, typer.Option(min=10, max=1_000_000)] = 1000,
    days: Annotated[int, typer.Option(min=5, max=365)] = 14,
    seed: Annotated[int, typer.Option()] = 7,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for databases and report")] = Path(
        "closeloop-drill"
    ),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the demo's workflow against the reference core with faults; check nothing is lost."""
    from contextlib import ExitStack

    from closeloop.sim import Params, Simulation, summarize
    from closeloop.sim.devices import DEMO_URL, sandboxes
    from closeloop.sim.drill import SCENARIOS, FaultSchedule, check, core_connector, load_core
    from closeloop.sim.runner import START
    from closeloop.sim.visits import Visitor
    from closeloop.store.database import create_engine
    from closeloop.web import create_api

    chosen = SCENARIOS.get(scenario)
    if chosen is None:
        raise InputError(f"--scenario must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    _fresh(out_dir)
    stack = ExitStack()
    folder = out_dir / "sandboxes"
    running = stack.enter_context(sandboxes(folder, fresh=True, kinds=("cards", "core")))
    assert running.core is not None
    core = running.core
    extra = {**running.settings, "public_url": DEMO_URL, "link_failure_floor_seconds": 0.0}
    if "CLOSELOOP_CONSENT_NOTICE_VERSION" not in os.environ:
        extra["consent_notice_version"] = "demo-notices-2026-03"
    settings = _settings(data_dir=out_dir, workflows=[EXAMPLE], **extra)
    if settings.database_url:
        _reset_database(settings.database_url)
    params = Params(accounts=accounts, days=days, seed=seed)
    clock = SimClock(START)
    schedule = FaultSchedule(chosen, core, seed)
    stack.callback(schedule.close)
    core_db = create_engine(f"sqlite:///{folder / 'core.db'}")
    stack.callback(core_db.dispose)
    try:
        load_core(core, seed, accounts)
        connector = core_connector(core)
        app = build(settings, clock=clock, seed=seed, connector=("reference_core", connector))
        stack.callback(app.close)
        settle_heap()
        visitor = Visitor(create_api(app), DEMO_URL, app.sink.engine)
        stack.callback(visitor.close)
        sim = Simulation(app, clock, params, visitor, schedule)
        sim.prepare(resume=False)
        with Progress(
            TextColumn(
                f"drill {scenario}: simulated day {{task.completed:.1f}}/{{task.total:.0f}}"
            ),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task("drill", total=days)
            sim.run(lambda done, total: bar.update(task, completed=done))
        outcome = summarize(app, params, settings.resolved_database_url())
        report = {
            "scenario": scenario,
            "faults": chosen.summary,
            "accounts": accounts,
            "days": days,
            "seed": seed,
            **check(app, chosen, core_db),
            "completion_rate": outcome["completion_rate"],
            "terminal_states": outcome["terminal_states"],
            "database": outcome["database"],
        }
    finally:
        stack.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        print(json.dumps(report))
    else:
        _print_drill(report, out_dir)
    if not report["invariants_hold"]:
        raise typer.Exit(1)


def _print_drill(r: dict[str, Any], out_dir: Path) -> None:
    table = Table(title=f"closeloop drill {r['scenario']}: {r['faults']}")
    table.add_column("invariant")
    table.add_column("value", justify="right")
    table.add_column("", justify="center")
    for name in ("outcomes_lost", "duplicate_effects", "stuck_cases"):
        table.add_row(name, str(r[name]), "pass" if r[name] == 0 else "FAIL")
    out.print(table)
    measures = Table(title=f"{r['accounts']} accounts, {r['days']} days, seed {r['seed']}")
    measures.add_column("measure")
    measures.add_column("value", justify="right")
    wb = r["writebacks"]
    for name, value in (
        ("cases", str(r["cases"])),
        ("outcomes accepted from customers", str(r["outcomes_accepted"])),
        (
            "writebacks done / failed (unknown) / pending",
            f"{wb['done']} / {wb['failed']} ({wb['unknown']}) / {wb['pending']}",
        ),
        ("effects in the core's ledger", str(r["core_effects"])),
        ("writeback success", f"{r['writeback_success_rate']:.2%}"),
        ("writeback retries", str(r["writeback_retries"])),
        ("breaker openings", str(r["breaker_openings"])),
        ("exceptions opened", str(r["exceptions_opened"])),
        ("recovery after the core's return", f"{r['max_recovery_seconds']:.0f} s (simulated)"),
        ("completion rate", f"{r['completion_rate']:.1%}"),
    ):
        measures.add_row(name, value)
    out.print(measures)
    verdict = "invariants hold" if r["invariants_hold"] else "INVARIANTS BROKEN"
    out.print(f"{verdict}; report: {out_dir / 'report.json'}")


def _reset_database(url: str) -> None:
    """A fresh demo on PostgreSQL: drop closeloop's tables first."""
    from closeloop.store import Store
    from closeloop.store.tables import metadata

    store = Store.connect(url)
    with store.engine.begin() as c:
        metadata.drop_all(c)
        c.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    store.dispose()


def _print_summary(s: dict[str, Any], out_dir: Path) -> None:
    table = Table(
        title=f"closeloop demo: {s['accounts']} accounts, {s['days']} days, seed {s['seed']}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("cases opened", str(s["cases"])),
        ("completion rate (resolved in the message)", f"{s['completion_rate']:.1%}"),
        ("median time to resolution", f"{s['median_time_to_resolution_hours']} h"),
        ("writeback success", f"{s['writeback_success_rate']:.2%}"),
        ("deflection (no agent touch)", f"{s['deflection_rate']:.1%}"),
        ("exception rate", f"{s['exception_rate']:.1%}"),
        ("touches per resolution", f"{s['touches_per_resolution']:.2f}"),
        ("duplicate writebacks", str(s["duplicate_writebacks"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    states = Table(title="where every case ended")
    states.add_column("state")
    states.add_column("cases", justify="right")
    for state, count in s["terminal_states"].items():
        states.add_row(state, str(count))
    if s["live_cases"]:
        states.add_row("still open", str(s["live_cases"]))
    out.print(states)
    sent = ", ".join(f"{ch} {n}" for ch, n in s["messages_sent"].items())
    out.print(f"messages sent: {sent}")
    out.print(f"SMS segments: {s['sms_segments']} (cost {s['sms_cost']:.2f})")
    deferred = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in s["deferred"].items())
    out.print(f"messages deferred by contact policy: {deferred}")
    blocked = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in s["blocked"].items()) or "none"
    out.print(f"messages blocked by contact policy: {blocked}")
    out.print(f"opt-outs recorded: {s['opt_outs']}")
    out.print(f"database: {s['database']}")
    out.print(f"report:   {out_dir / 'report.json'}")
    out.print("what the numbers mean: docs/demo.md")


def main() -> None:
    # Logs go to stderr, so `--json` output on stdout stays one JSON document.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        cli()
    except CloseloopError as exc:
        err.print(f"error: {exc}", style="red", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except sqlalchemy.exc.OperationalError as exc:
        err.print(
            f"error: the database failed: {exc.orig}", style="red", markup=False, highlight=False
        )
        sys.exit(1)
