"""The SQL connector: writebacks as rows in a core's staging tables, through SQLAlchemy.

Many cores take instructions from a staging schema: closeloop inserts a row
(a payment instruction, a note, a flag change) and the core's own jobs pick
it up. The mapping names, per operation, the table, the columns (taken from
closeloop's data, renamed, converted, or fixed) and the column that holds
the writeback's idempotency key, which must be unique in the table: a second
insert with the same key finds the first row and answers with its
reference, so a retry after an ambiguous failure never makes a second
instruction. Accounts are read from one row of an accounts table (or view).

A database that cannot be reached, or times out, is an error a retry may
fix; a row the database refuses (a type, a constraint other than the key) is
one no retry fixes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import sqlalchemy as sa

from closeloop.connectors.mapping import SqlAccount, SqlMapping, build_body
from closeloop.connectors.port import Account, WritebackResult
from closeloop.errors import InputError, OperationalError


class SqlConnector:
    def __init__(self, mapping: SqlMapping, *, url: str | None = None) -> None:
        url = url or os.environ.get(mapping.url_env)
        if not url:
            raise InputError(
                f"connector {mapping.connector}: set {mapping.url_env} (the database's URL)"
            )
        self.mapping = mapping
        try:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise InputError(f"connector {mapping.connector}: {mapping.url_env}: {exc}") from exc
        self._tables: dict[str, sa.Table] = {}

    def close(self) -> None:
        self.engine.dispose()

    def _table(self, name: str) -> sa.Table:
        """The table as the database has it (read once): closeloop never creates or alters it."""
        if name not in self._tables:
            metadata = sa.MetaData(schema=self.mapping.db_schema)
            self._tables[name] = sa.Table(name, metadata, autoload_with=self.engine)
        return self._tables[name]

    # -- the port -------------------------------------------------------------------
    def read_account(self, account_id: str) -> Account | None:
        where = self.mapping.account
        try:
            table = self._table(where.table)
            with self.engine.connect() as c:
                row = c.execute(sa.select(table).where(table.c[where.key] == account_id)).first()
        except (sa.exc.OperationalError, sa.exc.NoSuchTableError, KeyError) as exc:
            raise OperationalError(f"connector {self.mapping.connector}: {exc}") from exc
        if row is None:
            return None
        return _account(account_id, dict(row._mapping), where)

    def execute(
        self, operation: str, argument: str | None, data: Any, idempotency_key: str
    ) -> WritebackResult:
        target = self.mapping.operations.get(operation)  # type: ignore[call-overload]
        if target is None:
            return WritebackResult(
                ok=False, error=f"connector {self.mapping.connector} has no {operation}"
            )
        values = {**data, "argument": argument, "idempotency_key": idempotency_key}
        try:
            row = build_body(target.columns, values)
        except (KeyError, ValueError) as exc:
            return WritebackResult(ok=False, error=f"cannot build {operation}: {exc}")
        reference = target.reference_column or target.key_column
        try:
            table = self._table(target.table)
            with self.engine.begin() as c:
                c.execute(table.insert().values(**row))
                made = c.execute(
                    sa.select(table.c[reference]).where(
                        table.c[target.key_column] == idempotency_key
                    )
                ).scalar_one()
            return WritebackResult(ok=True, reference=str(made))
        except sa.exc.IntegrityError as exc:  # the key is taken: this instruction exists already
            return self._existing(table, target.key_column, reference, idempotency_key, exc)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            return WritebackResult(ok=False, retryable=True, error=f"database: {_first(exc)}")
        except (sa.exc.DBAPIError, sa.exc.NoSuchTableError, KeyError) as exc:
            return WritebackResult(ok=False, error=f"refused by the database: {_first(exc)}")

    def _existing(
        self, table: sa.Table, key: str, reference: str, idempotency_key: str, exc: Exception
    ) -> WritebackResult:
        try:
            with self.engine.connect() as c:
                found = c.execute(
                    sa.select(table.c[reference]).where(table.c[key] == idempotency_key)
                ).scalar_one_or_none()
        except sa.exc.DBAPIError as again:
            return WritebackResult(ok=False, retryable=True, error=f"database: {_first(again)}")
        if found is None:  # another constraint refused the row
            return WritebackResult(ok=False, error=f"refused by the database: {_first(exc)}")
        return WritebackResult(ok=True, reference=str(found))


def _json(value: Any) -> Any:
    """A JSON column's value, whether the driver decoded it or left it as text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def _account(account_id: str, row: dict[str, Any], where: SqlAccount) -> Account:
    facts = dict(_json(row[where.facts_json]) or {}) if where.facts_json else {}
    facts |= {column: row[column] for column in where.facts}
    return Account(
        account_id=account_id,
        first_name=str(row.get(where.first_name) or ""),
        locale=str(row.get(where.locale) or "en") if where.locale else "en",
        time_zone=row.get(where.time_zone) if where.time_zone else None,
        facts=facts,
        contacts=tuple(_json(row[where.contacts_json]) or ()) if where.contacts_json else (),
        payment_methods=tuple(_json(row[where.payment_methods_json]) or ())
        if where.payment_methods_json
        else (),
        secrets=dict(_json(row[where.secrets_json]) or {}) if where.secrets_json else {},
    )


def _first(exc: Exception) -> str:
    """The database's own words, first line only (no SQL, no parameters)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
