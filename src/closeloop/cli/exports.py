"""`closeloop export`: the data team's copy of what happened (docs/operating.md#export)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from closeloop.cli.common import _settings, out


def export(
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write the tables into")],
    form: Annotated[
        str, typer.Option("--format", help="parquet (partitioned by day), csv or jsonl")
    ] = "parquet",
    since: Annotated[
        datetime | None, typer.Option(help="only what happened from then on (UTC unless given)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="only what happened before then")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Export cases, events, messages, writebacks and rollout decisions, without personal data."""
    from closeloop.app.bootstrap import data_key
    from closeloop.app.export import export as write
    from closeloop.store import Store

    since = since.replace(tzinfo=UTC) if since and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until and until.tzinfo is None else until
    settings = _settings()
    store = Store.connect(settings.resolved_database_url())
    try:
        done = write(store, out_dir, form=form, key=data_key(settings.data_dir, "export"),
                     since=since, until=until)  # fmt: skip
    finally:
        store.dispose()
    if as_json:
        print(json.dumps({"format": form, "tables": {
            e.table: {"rows": e.rows, "path": str(e.path)} for e in done}}))  # fmt: skip
        return
    table = Table("table", "rows", "written to", title=f"closeloop export ({form})")
    for e in done:
        table.add_row(e.table, f"{e.rows:,}", str(e.path))
    out.print(table)


def register(cli: typer.Typer) -> None:
    cli.command("export")(export)
