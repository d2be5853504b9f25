"""The batch-file connector: instruction files out, acknowledgement files back.

For cores that run on nightly files. Each writeback becomes one record of an
outbound instruction file (CSV with a header, or fixed-width records, laid
out by the mapping); the core's batch run answers with acknowledgement files
that accept or reject each instruction by its idempotency key, which every
record carries.

closeloop keeps a journal of each instruction (a SQLite file the connector
owns) so that a writeback goes into exactly one file, however often it is
retried and wherever a worker dies:

1. ``execute`` records the instruction as *staged* (once per key) and answers
   *pending*; the dispatcher asks again later without using up an attempt.
2. ``settle``, at the end of the dispatcher's round, writes every staged
   instruction to one new file: its name is recorded first, then the file is
   written beside its final name, flushed, and renamed into the outbound
   folder (so the core never picks up half a file), then the instructions
   are marked *written*. A worker killed in between finds the file's name in
   the journal and writes that same file again, never a second one.
3. Acknowledgement files are read as they arrive (each once); ``execute``
   then answers success with the core's reference, or the core's reason for
   a rejection, which no retry fixes.

Accounts are read from the core's account extract (a CSV file, reread when
it changes).
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from closeloop.connectors.mapping import (
    AckColumn,
    BatchField,
    BatchMapping,
    build_body,
)
from closeloop.connectors.port import Account, WritebackResult
from closeloop.errors import InputError, OperationalError

_meta = sa.MetaData()
_instructions = sa.Table(
    "instructions",
    _meta,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # the line, as it goes into the file
    sa.Column("state", sa.String(16), nullable=False),  # staged|written|accepted|rejected
    sa.Column("file", sa.String(200)),
    sa.Column("reference", sa.String(200)),
    sa.Column("reason", sa.Text),
)
_files = sa.Table(  # outbound files by name, and acknowledgement files already read
    "files",
    _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("direction", sa.String(8), nullable=False),  # out | ack
    sa.Column("done", sa.Boolean, nullable=False),
)
POLL_SECONDS = 900.0  # how soon to ask again for an instruction not yet acknowledged


class BatchFileConnector:
    def __init__(self, mapping: BatchMapping) -> None:
        self.mapping = mapping
        self.outbound = Path(mapping.outbound)
        self.acks = Path(mapping.ack.folder)
        for folder, what in ((self.outbound, "outbound"), (self.acks, "ack.folder")):
            if not folder.is_dir():
                raise InputError(f"connector {mapping.connector}: {what} {folder}: no such folder")
        journal = Path(mapping.journal)
        journal.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(f"sqlite:///{journal}")
        _meta.create_all(self.engine)
        self._lock = threading.Lock()
        self._accounts: dict[str, dict[str, str]] = {}
        self._extract_seen: float | None = None
        self._finish_interrupted()

    def close(self) -> None:
        self.engine.dispose()

    # -- the port -------------------------------------------------------------------
    def read_account(self, account_id: str) -> Account | None:
        extract = self.mapping.accounts
        path = Path(extract.file)
        try:
            seen = path.stat().st_mtime
            if seen != self._extract_seen:
                with path.open(newline="", encoding="utf-8") as handle:
                    self._accounts = {r[extract.key]: r for r in csv.DictReader(handle)}
                self._extract_seen = seen
        except (OSError, KeyError, csv.Error) as exc:
            raise OperationalError(f"connector {self.mapping.connector}: {path}: {exc}") from exc
        row = self._accounts.get(account_id)
        return None if row is None else _account(account_id, row, self.mapping)

    def execute(
        self, operation: str, argument: str | None, data: Any, idempotency_key: str
    ) -> WritebackResult:
        layout = self.mapping.operations.get(operation)  # type: ignore[call-overload]
        if layout is None:
            return WritebackResult(
                ok=False, error=f"connector {self.mapping.connector} has no {operation}"
            )
        self._read_acks()
        with self.engine.begin() as c:
            known = c.execute(
                sa.select(_instructions).where(_instructions.c.key == idempotency_key)
            ).first()
            if known is None:
                values = {**data, "argument": argument, "idempotency_key": idempotency_key}
                try:
                    record = self._record(layout.fields, values)
                except (KeyError, ValueError) as exc:
                    return WritebackResult(ok=False, error=f"cannot build {operation}: {exc}")
                c.execute(
                    _instructions.insert().values(
                        key=idempotency_key, operation=operation, record=record, state="staged"
                    )
                )
                return _waiting("staged for the next instruction file")
        if known.state == "accepted":
            return WritebackResult(ok=True, reference=known.reference or idempotency_key)
        if known.state == "rejected":
            return WritebackResult(ok=False, error=f"rejected by the core: {known.reason}")
        where = f"in {known.file}" if known.file else "staged for the next instruction file"
        return _waiting(f"{where}, not acknowledged yet")

    # -- files ------------------------------------------------------------------------
    def settle(self) -> None:
        """Write everything staged to one new instruction file (called after each round)."""
        with self._lock, self.engine.begin() as c:
            staged = c.execute(
                sa.select(_instructions.c.key, _instructions.c.record)
                .where(_instructions.c.state == "staged")
                .order_by(_instructions.c.key)
            ).all()
            if not staged:
                return
            number = c.execute(
                sa.select(sa.func.count()).select_from(_files).where(_files.c.direction == "out")
            ).scalar_one()
            extension = "csv" if self.mapping.format == "csv" else "txt"
            name = f"{self.mapping.connector}-{number + 1:06d}.{extension}"
            c.execute(_files.insert().values(name=name, direction="out", done=False))
            c.execute(
                _instructions.update()
                .where(_instructions.c.key.in_([k for k, _ in staged]))
                .values(state="writing", file=name)
            )
        self._write(name)

    def _write(self, name: str) -> None:
        """Write (or write again) the file `name` from the journal, atomically; mark it done."""
        with self.engine.connect() as c:
            records = [
                r[0]
                for r in c.execute(
                    sa.select(_instructions.c.record)
                    .where(_instructions.c.file == name)
                    .order_by(_instructions.c.key)
                )
            ]
        header = self._header() if self.mapping.format == "csv" else []
        text = "".join(line + "\r\n" for line in [*header, *records])
        final = self.outbound / name
        partial = self.outbound / f".{name}.partial"
        with partial.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(final)
        with self.engine.begin() as c:
            c.execute(_files.update().where(_files.c.name == name).values(done=True))
            c.execute(
                _instructions.update()
                .where(_instructions.c.file == name, _instructions.c.state == "writing")
                .values(state="written")
            )

    def _finish_interrupted(self) -> None:
        """Files named but not finished when a worker died: written again, same name."""
        with self.engine.connect() as c:
            names = [
                r[0]
                for r in c.execute(
                    sa.select(_files.c.name).where(
                        _files.c.direction == "out", _files.c.done.is_(False)
                    )
                )
            ]
        for name in names:
            self._write(name)

    def _read_acks(self) -> None:
        """Read acknowledgement files not read before; record each instruction's answer."""
        ack = self.mapping.ack
        with self.engine.connect() as c:
            read = {
                r[0] for r in c.execute(sa.select(_files.c.name).where(_files.c.direction == "ack"))
            }
        for path in sorted(self.acks.iterdir()):
            if path.name in read or not fnmatch(path.name, ack.pattern) or not path.is_file():
                continue
            answers = list(self._parse_ack(path.read_text(encoding="utf-8")))
            with self.engine.begin() as c:
                for key, status, reference, reason in answers:
                    accepted = status in ack.accepted
                    c.execute(
                        _instructions.update()
                        .where(
                            _instructions.c.key == key,
                            _instructions.c.state.in_(("written", "writing")),
                        )
                        .values(
                            state="accepted" if accepted else "rejected",
                            reference=reference or None,
                            reason=None if accepted else (reason or f"status {status}"),
                        )
                    )
                c.execute(_files.insert().values(name=path.name, direction="ack", done=True))

    def _parse_ack(self, text: str) -> list[tuple[str, str, str, str]]:
        ack = self.mapping.ack
        if ack.format == "csv":
            rows: list[dict[str, str]] = list(csv.DictReader(io.StringIO(text)))

            def get(row: Any, where: AckColumn | None) -> str:
                return str(row.get(where.column, "") or "").strip() if where else ""

        else:
            rows = [line for line in text.splitlines() if line.strip()]  # type: ignore[misc]

            def get(row: Any, where: AckColumn | None) -> str:
                if where is None or where.start is None or where.width is None:
                    return ""
                return str(row[where.start - 1 : where.start - 1 + where.width]).strip()

        return [
            (get(r, ack.key), get(r, ack.status), get(r, ack.reference), get(r, ack.reason))
            for r in rows
        ]

    # -- records ----------------------------------------------------------------------
    def _header(self) -> list[str]:
        names = next(iter(self.mapping.operations.values())).fields
        return [_csv_line([f.name for f in names])]

    def _record(self, fields: list[BatchField], values: dict[str, Any]) -> str:
        body = build_body({f.name: f for f in fields}, values)
        cells = ["" if body.get(f.name) is None else str(body[f.name]) for f in fields]
        if self.mapping.format == "csv":
            return _csv_line(cells)
        out = []
        for field, cell in zip(fields, cells, strict=True):
            assert field.width is not None  # the mapping requires widths for this format
            if len(cell) > field.width:
                raise ValueError(f"{field.name} is longer than its {field.width} characters")
            if "\n" in cell or "\r" in cell:
                raise ValueError(f"{field.name} holds a line break")
            fill = field.pad
            out.append(cell.rjust(field.width, fill) if field.align == "right" else
                       cell.ljust(field.width, fill))  # fmt: skip
        return "".join(out)


def _waiting(why: str) -> WritebackResult:
    return WritebackResult(ok=False, pending=True, retry_after=POLL_SECONDS, error=why)


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def _account(account_id: str, row: dict[str, str], mapping: BatchMapping) -> Account:
    where = mapping.accounts

    def loaded(column: str | None, empty: Any) -> Any:
        return json.loads(row[column]) if column and row.get(column) else empty

    facts = dict(loaded(where.facts_json, {}))
    for column in where.facts:
        facts[column] = float(row[column]) if column in where.numbers else row[column]
    return Account(
        account_id=account_id,
        first_name=row.get(where.first_name, ""),
        locale=row.get(where.locale, "en") if where.locale else "en",
        time_zone=row.get(where.time_zone) if where.time_zone else None,
        facts=facts,
        contacts=tuple(loaded(where.contacts_json, [])),
        payment_methods=tuple(loaded(where.payment_methods_json, [])),
        secrets=dict(loaded(where.secrets_json, {})),
    )
