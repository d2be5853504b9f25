"""`closeloop export`: the data team's copy of what happened (docs/operating.md#export)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from closeloop.cli.common import _settings, out
from closeloop.errors import InputError


def export(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write the tables into")],
    form: Annotated[
        str,
        typer.Option(
            "--format",
            help="parquet (partitioned by day), csv or jsonl; or ocsf: security events as "
            "OCSF JSON lines for a SIEM",
        ),
    ] = "parquet",
    since: Annotated[
        datetime | None, typer.Option(help="only what happened from then on (UTC unless given)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="only what happened before then")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    personal_data: Annotated[
        bool,
        typer.Option(
            "--personal-data",
            help="keep account ids, addresses and customers' inputs: needs an admin's API "
            "token in CLOSELOOP_TOKEN, and is recorded in the staff audit",
        ),
    ] = False,
) -> None:
    """Export cases, events, messages, writebacks and rollout decisions, without personal data
    (or, with --format ocsf, sign-ins, identity checks, consent changes and writebacks)."""
    from closeloop.app import ocsf
    from closeloop.app.bootstrap import data_key
    from closeloop.app.export import export as write
    from closeloop.store import Store

    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    settings = _settings()
    store = Store.connect(settings.resolved_database_url())
    key = data_key(settings.data_dir, "export")
    try:
        if personal_data:
            _admin_asks(store, out_dir)
        if form == "ocsf":
            path, counts = ocsf.write(
                store, out_dir, key=key, since=since, until=until, personal=personal_data
            )
            if as_json:
                print(json.dumps({"format": form, "path": str(path), "classes": counts}))
            else:
                table = Table("OCSF class", "events", title=f"closeloop export (ocsf) {path}")
                for class_uid, n in sorted(counts.items()):
                    table.add_row(f"{ocsf.CLASS_NAMES[class_uid]} ({class_uid})", f"{n:,}")
                out.print(table)
            return
        done = write(
            store, out_dir, form=form, key=key, since=since, until=until, personal=personal_data
        )
    finally:
        store.dispose()
    if as_json:
        print(
            json.dumps(
                {
                    "format": form,
                    "tables": {e.table: {"rows": e.rows, "path": str(e.path)} for e in done},
                }
            )
        )
        return
    table = Table("table", "rows", "written to", title=f"closeloop export ({form})")
    for e in done:
        table.add_row(e.table, f"{e.rows:,}", str(e.path))
    out.print(table)


def _admin_asks(store: Any, out_dir: Path) -> None:
    """Personal data leaves only for an admin who says who they are: their API token."""
    from closeloop.app.staff import Staff
    from closeloop.clock import SystemClock

    staff = Staff(store, SystemClock())
    presented = os.environ.get("CLOSELOOP_TOKEN", "")
    caller = staff.token(presented, remote="cli") if presented else None
    if caller is None or not caller.may("admin"):
        raise InputError(
            "--personal-data needs an admin's API token in CLOSELOOP_TOKEN "
            "(closeloop tokens create --role admin)"
        )
    staff.record(caller.name, "export_personal_data", f"to {out_dir}", remote="cli")


def register(cli: typer.Typer) -> None:
    cli.command("export")(export)
