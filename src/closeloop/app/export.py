"""`closeloop export`: what happened, for a data team's own systems.

Five tables (cases, events, messages, writebacks, rollout decisions) as
Parquet datasets partitioned by day (`TABLE/day=YYYY-MM-DD/part-0.parquet`,
Hive style, so DuckDB, Spark and pyarrow read the partitions as a column), or
one CSV or JSON Lines file per table. The columns are `SCHEMAS` (documented in
docs/operating.md#export).

Personal data does not leave: account ids become pseudonyms (HMAC-SHA256
under the data directory's export key: the same account is always the same
pseudonym, and nobody without the key can go back), contact addresses and the
data customers gave (event data, writeback payloads) are left out, and free
text (reasons, errors) is scrubbed of addresses, numbers and tokens as logs
are. Rows are read and written in batches: an export of millions of rows
holds one batch in memory per table.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

from closeloop.app.telemetry import scrub
from closeloop.errors import InputError
from closeloop.store import Store
from closeloop.store.export_queries import EXPORTED

FORMATS = ("parquet", "csv", "jsonl")
_TIME = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "cases": pa.schema([
        ("case_id", pa.string()), ("workflow", pa.string()), ("account", pa.string()),
        ("cohort", pa.string()), ("status", pa.string()), ("opened_at", _TIME),
        ("closed_at", _TIME), ("day", pa.string()),
    ]),
    "events": pa.schema([
        ("case_id", pa.string()), ("seq", pa.int64()), ("kind", pa.string()),
        ("actor", pa.string()), ("at", _TIME), ("reason", pa.string()), ("day", pa.string()),
    ]),
    "messages": pa.schema([
        ("case_id", pa.string()), ("idempotency_key", pa.string()), ("channel", pa.string()),
        ("template", pa.string()), ("step", pa.string()), ("status", pa.string()),
        ("attempts", pa.int64()), ("created_at", _TIME), ("updated_at", _TIME),
        ("error", pa.string()), ("day", pa.string()),
    ]),
    "writebacks": pa.schema([
        ("case_id", pa.string()), ("idempotency_key", pa.string()), ("operation", pa.string()),
        ("argument", pa.string()), ("outcome", pa.string()), ("status", pa.string()),
        ("attempts", pa.int64()), ("created_at", _TIME), ("updated_at", _TIME),
        ("reference", pa.string()), ("error", pa.string()), ("day", pa.string()),
    ]),
    "decisions": pa.schema([
        ("rollout", pa.string()), ("at", _TIME), ("action", pa.string()),
        ("stage", pa.string()), ("actor", pa.string()), ("reason", pa.string()),
        ("day", pa.string()),
    ]),
}  # fmt: skip
assert set(SCHEMAS) == set(EXPORTED)
# With personal data (an admin asked): the account id itself, the address a message went
# to, and what the customer gave (event data) as JSON text.
PERSONAL: dict[str, list[tuple[str, pa.DataType]]] = {
    "messages": [("address", pa.string())],
    "events": [("data", pa.string())],
}


def schema_of(table: str, personal: bool = False) -> pa.Schema:
    schema = SCHEMAS[table]
    for name, kind in PERSONAL.get(table, []) if personal else []:
        schema = schema.insert(schema.get_field_index("day"), pa.field(name, kind))
    return schema


def pseudonym(key: bytes, value: str, prefix: str = "acct") -> str:
    """`value` under the export key: always the same pseudonym, and no way back without it."""
    return f"{prefix}_{hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:24]}"


@dataclass(frozen=True, kw_only=True)
class Exported:
    table: str
    rows: int
    path: Path


def export(
    store: Store,
    out: Path,
    *,
    form: str,
    key: bytes,
    since: datetime | None = None,
    until: datetime | None = None,
    personal: bool = False,
) -> list[Exported]:
    """Write every table to `out` in `form`; what was written, table by table. With
    `personal` (an admin asked for it) account ids, addresses and inputs stay as they are."""
    if form not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)} or ocsf, not {form!r}")
    out.mkdir(parents=True, exist_ok=True)
    shape = _Shape(key, personal=personal)
    done = []
    for table in EXPORTED:
        counted = [0]
        schema = schema_of(table, personal)
        batches = _batches(store, shape, table, schema, since, until, counted)
        path = _WRITERS[form](out, table, schema, batches)
        done.append(Exported(table=table, rows=counted[0], path=path))
    return done


def _batches(
    store: Store,
    shape: _Shape,
    table: str,
    schema: pa.Schema,
    since: datetime | None,
    until: datetime | None,
    counted: list[int],
) -> Iterator[pa.RecordBatch]:
    """The table's rows, shaped for export, a batch at a time; `counted` keeps the total."""
    make = getattr(shape, table)
    with store.read() as tx:
        for rows in tx.rows_to_export(table, since, until):
            counted[0] += len(rows)
            yield pa.RecordBatch.from_pylist([make(r) for r in rows], schema=schema)


class _Shape:
    """Each table's row as it leaves closeloop: pseudonymised, scrubbed, with its day."""

    def __init__(self, key: bytes, *, personal: bool = False) -> None:
        self.key = key
        self.personal = personal

    def _pseudonym(self, account_id: str) -> str:
        return account_id if self.personal else pseudonym(self.key, account_id)

    def cases(self, r: dict[str, Any]) -> dict[str, Any]:
        return {
            "case_id": r["case_id"], "workflow": r["workflow"],
            "account": self._pseudonym(r["account_id"]), "cohort": r["cohort"],
            "status": r["status"], "opened_at": r["opened_at"], "closed_at": r["closed_at"],
            "day": _day(r["opened_at"]),
        }  # fmt: skip

    def events(self, r: dict[str, Any]) -> dict[str, Any]:
        row = {
            "case_id": r["case_id"], "seq": r["seq"], "kind": r["kind"], "actor": r["actor"],
            "at": r["at"], "reason": scrub(r["reason"] or ""), "day": _day(r["at"]),
        }  # fmt: skip
        if self.personal:
            row["reason"] = r["reason"] or ""
            row["data"] = orjson.dumps(r["data"] or {}).decode()
        return row

    def messages(self, r: dict[str, Any]) -> dict[str, Any]:
        payload, result = r["payload"] or {}, r["result"] or {}
        extra = {"address": payload.get("address")} if self.personal else {}
        return extra | {
            "case_id": r["case_id"], "idempotency_key": r["idempotency_key"],
            "channel": payload.get("channel"), "template": payload.get("template"),
            "step": payload.get("step_name"), "status": r["status"], "attempts": r["attempts"],
            "created_at": r["created_at"], "updated_at": r["updated_at"],
            "error": scrub(str(result.get("reason") or result.get("error") or "")) or None,
            "day": _day(r["created_at"]),
        }  # fmt: skip

    def writebacks(self, r: dict[str, Any]) -> dict[str, Any]:
        payload, result = r["payload"] or {}, r["result"] or {}
        return {
            "case_id": r["case_id"], "idempotency_key": r["idempotency_key"],
            "operation": payload.get("operation"), "argument": payload.get("argument"),
            "outcome": payload.get("outcome"), "status": r["status"], "attempts": r["attempts"],
            "created_at": r["created_at"], "updated_at": r["updated_at"],
            "reference": result.get("reference") or None,
            "error": scrub(str(result.get("error") or "")) or None,
            "day": _day(r["created_at"]),
        }  # fmt: skip

    def decisions(self, r: dict[str, Any]) -> dict[str, Any]:
        return {
            "rollout": r["rollout"], "at": r["at"], "action": r["action"], "stage": r["stage"],
            "actor": r["actor"], "reason": scrub(r["reason"] or ""), "day": _day(r["at"]),
        }  # fmt: skip


def _day(when: datetime) -> str:
    return when.date().isoformat()


def _parquet(out: Path, table: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Path:
    base = out / table
    first = next(batches, None)
    if first is None:  # nothing in the window: an empty file says so, with the schema
        base.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), base / "part-0.parquet")
        return base
    pa_ds.write_dataset(
        itertools.chain([first], batches),
        base,
        schema=schema,
        format="parquet",
        partitioning=pa_ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
        existing_data_behavior="delete_matching",
    )
    return base


def _csv(out: Path, table: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Path:
    path = out / f"{table}.csv"
    with pa_csv.CSVWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return path


def _jsonl(out: Path, table: str, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Path:
    path = out / f"{table}.jsonl"
    with path.open("wb") as handle:
        for batch in batches:
            for row in batch.to_pylist():
                handle.write(orjson.dumps(row, option=orjson.OPT_UTC_Z) + b"\n")
    return path


_WRITERS: dict[str, Callable[[Path, str, pa.Schema, Iterator[pa.RecordBatch]], Path]] = {
    "parquet": _parquet,
    "csv": _csv,
    "jsonl": _jsonl,
}
