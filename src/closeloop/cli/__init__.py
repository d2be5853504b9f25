"""The `closeloop` command line (Typer + Rich).

Each command builds what it needs from Settings, prints for people, and
prints JSON with --json. Errors print without a traceback: exit 2 for bad
input, 1 for a failure.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy
import structlog
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from closeloop.app import TriggerIn, build, settle_heap
from closeloop.app.settings import EXAMPLE
from closeloop.app.telemetry import configure_logs
from closeloop.cli.common import _problems, _settings, err, out
from closeloop.cli.exports import register as register_export
from closeloop.cli.rollouts import ROLLOUT_TICK_SECONDS, rollout_cli, stats_cli
from closeloop.cli.sandboxes import sandbox_cli
from closeloop.cli.staff import register as register_staff
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
cli.add_typer(stats_cli, name="stats")
cli.add_typer(rollout_cli, name="rollout")
template_cli = typer.Typer(no_args_is_help=True, help="Look at message templates.")
cli.add_typer(template_cli, name="template")
cli.add_typer(sandbox_cli, name="sandbox")
connector_cli = typer.Typer(no_args_is_help=True, help="Connector mappings.")
cli.add_typer(connector_cli, name="connector")
register_export(cli)
register_staff(cli)
# -- spec -------------------------------------------------------------------


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
    from closeloop.app.dispatch import writeback_view

    app = build(_settings())
    try:
        case = app.runtime.case(case_id)
        with app.store.read() as tx:
            history = tx.history(case_id)
            rows = tx.writebacks(case_id)
    finally:
        app.close()
    writebacks = [writeback_view(r) for r in rows]
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
    rollout: Annotated[
        str,
        typer.Option(
            help="the rollout plan the run goes through: demo (the packaged "
            "examples/rollouts/demo.yaml), a plan file, or none (every case in --cohort)"
        ),
    ] = "demo",
    inject_regression: Annotated[
        bool,
        typer.Option(
            "--inject-regression",
            help="from the rollout's third stage the core ignores idempotency keys: "
            "a guardrail halts the rollout",
        ),
    ] = False,
    cohort: Annotated[
        float | None, typer.Option(min=0, max=100, help="with --rollout none: cases enrolled, %")
    ] = None,
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

    from closeloop.rollout.plan import load_plan
    from closeloop.sim import Params, Simulation, summarize, to_json
    from closeloop.sim.devices import DEMO_URL, Device, sandboxes
    from closeloop.sim.rollout import RolloutDriver
    from closeloop.sim.rollout import summary as rollout_summary
    from closeloop.sim.runner import START
    from closeloop.sim.visits import Visitor
    from closeloop.web import create_api
    from closeloop.web.report import write_report

    if providers not in ("sink", "sandbox"):
        raise InputError(f"--providers must be sink or sandbox, not {providers!r}")
    plan_source = _demo_plan(rollout)
    if plan_source is not None and cohort is not None:
        raise InputError("--cohort applies without a rollout: add --rollout none")
    if plan_source is None and inject_regression:
        raise InputError("--inject-regression needs a rollout: leave out --rollout none")
    plan = load_plan(plan_source, filename=rollout) if plan_source else None
    if inject_regression and plan is not None and len(plan.stages) < 3:
        raise InputError(f"--inject-regression starts at the third stage: {rollout} has fewer")

    if not resume:
        _fresh(out_dir)
    stack = ExitStack()
    try:  # whatever fails while setting up stops the sandboxes it started
        # The card provider always runs: simulated customers type cards into its form.
        kinds = ("smtp", "twilio", "cards") if providers == "sandbox" else ("cards",)
        running = stack.enter_context(
            sandboxes(out_dir / "sandboxes", fresh=not resume, kinds=kinds)
        )
        extra = {**running.settings, "public_url": DEMO_URL, "link_failure_floor_seconds": 0.0}
        if providers == "sandbox":
            # Send a batch on several connections: the providers answer from other processes.
            extra["send_concurrency"] = 8
        if "CLOSELOOP_CONSENT_NOTICE_VERSION" not in os.environ:
            extra["consent_notice_version"] = "demo-notices-2026-03"
        settings = _settings(
            data_dir=out_dir,
            workflows=[EXAMPLE],
            cohort_percent=100.0 if cohort is None else cohort,
            **extra,
        )
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
        params = Params(accounts=accounts, days=days, seed=seed, rollout=rollout,
                        regression=inject_regression)  # fmt: skip
        database = settings.resolved_database_url()
        settle_heap()
        visitor = Visitor(create_api(app), DEMO_URL, app.sink.engine)
        driver = None
        if plan is not None:
            driver = RolloutDriver(
                app,
                plan.rollout,
                start=START,
                end=START + timedelta(days=days),
                regression_from=plan.stages[2].name if inject_regression else None,
            )
    except BaseException:
        stack.close()
        raise
    try:
        sim = Simulation(app, clock, params, visitor, schedule=driver)
        sim.prepare(resume=resume)
        if plan_source is not None and not resume:
            app.rollouts.start(plan_source, filename=rollout, actor="demo",
                               reason="the demo's rollout begins with its pilot")  # fmt: skip
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
        if plan is not None:
            summary["rollout"] = rollout_summary(
                app, plan.rollout, START, regression=inject_regression
            )
        with app.store.read() as tx:
            example = tx.first_case_id(Status.RESOLVED)
        summary["report_html"] = write_report(app, out_dir / "report.html").name  # in --out
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


DEMO_PLAN = EXAMPLE.parent / "rollouts" / "demo.yaml"


def _demo_plan(rollout: str) -> str | None:
    """The text of the demo's rollout plan: the packaged one, a file, or none."""
    if rollout == "none":
        return None
    path = DEMO_PLAN if rollout == "demo" else Path(rollout)
    if not path.is_file():
        raise InputError(f"--rollout: no plan file {rollout} (demo, none or a file)")
    return path.read_text()


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
    if "rollout" in s:
        _print_rollout(s["rollout"])
    out.print(f"database: {s['database']}", soft_wrap=True)  # paths stay whole, to copy
    out.print(f"report:   {out_dir / s['report_html']}", soft_wrap=True)
    out.print(f"summary:  {out_dir / 'report.json'}", soft_wrap=True)
    out.print("what the numbers mean: docs/demo.md")


def _print_rollout(r: dict[str, Any]) -> None:
    reached = " -> ".join(r["stages_reached"])
    out.print(f"rollout {r['plan']}: {r['state']} ({reached})", soft_wrap=True)
    log = Table(title="rollout decisions")
    for column in ("day", "decision", "stage", "who", "why"):
        log.add_column(column)
    for d in r["decisions"]:
        log.add_row(f"{d['day']:.1f}", d["action"], d["stage"], d["actor"], d["reason"])
    out.print(log)
    if not r["arms"]:
        return
    arms = Table(title="experiment arms (every case each arm took)")
    for column in ("arm", "treatment", "cases", "completion", "vs first arm", "median to resolve"):
        arms.add_column(column)
    for name, a in r["arms"].items():
        vs = a["versus_first_arm"]
        versus = (
            "-" if name == next(iter(r["arms"]))
            else "no data yet" if vs is None
            else f"{vs['difference']:+.1%} ({vs['interval'][0]:+.1%} to "
            f"{vs['interval'][1]:+.1%}), {vs['chance_to_win']:.0%} to win"
        )  # fmt: skip
        rate = "-" if a["completion_rate"] is None else f"{a['completion_rate']:.1%}"
        hours = a["median_hours_to_resolution"]
        arms.add_row(name, a["treatment"], str(a["cases"]), rate, versus,
                     "-" if hours is None else f"{hours:.1f} h")  # fmt: skip
    out.print(arms)


def main() -> None:
    # Logs go to stderr, so `--json` output on stdout stays one JSON document.
    configure_logs(sys.stderr)
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
