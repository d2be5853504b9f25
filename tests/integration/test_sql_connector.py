"""The SQL connector against a core's staging schema, on a real SQLite file and PostgreSQL.

The "core database" here is a separate database with the tables a core's
team would expose (a view of accounts, instruction tables with a unique
reference column); closeloop reads and inserts through SQLAlchemy with the
example mapping `examples/connectors/core_staging.yaml`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.mapping import SqlMapping, load_mapping_file
from closeloop.connectors.sql import SqlConnector
from closeloop.engine import Status
from closeloop.errors import InputError
from tests.conftest import EXAMPLE, NOW, ROOT
from tests.integration.test_runtime import ACCOUNT
from tests.integration.test_writebacks import paid

MAPPING = ROOT / "examples" / "connectors" / "core_staging.yaml"
PAID = {"account_id": "A1", "case_id": "case_1", "amount": "120.50", "method": "pm_1"}


def staging_schema() -> sa.MetaData:
    """The tables a core's team exposes to closeloop (as the example mapping expects)."""
    meta = sa.MetaData()
    sa.Table(
        "closeloop_accounts",
        meta,
        sa.Column("account_no", sa.String(40), primary_key=True),
        sa.Column("first_name", sa.String(80)),
        sa.Column("language", sa.String(8)),
        sa.Column("time_zone", sa.String(40)),
        sa.Column("balance", sa.Float),
        sa.Column("product", sa.String(40)),
        sa.Column("state", sa.String(2)),
        sa.Column("days_past_due", sa.Integer),
        sa.Column("extra_facts", sa.Text),
        sa.Column("contacts", sa.Text),
        sa.Column("payment_methods", sa.Text),
        sa.Column("known_facts", sa.Text),
    )

    def instructions(name: str, key: str, *columns: sa.Column[object]) -> None:
        sa.Table(
            name,
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(key, sa.String(128), nullable=False, unique=True),
            sa.Column("account_no", sa.String(40), nullable=False),
            *columns,
        )

    instructions(
        "payment_instructions",
        "instruction_ref",
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column("method_ref", sa.String(40)),
        sa.Column("token_ref", sa.String(80)),
        sa.Column("case_ref", sa.String(64)),
        sa.Column("status", sa.String(8), nullable=False),
    )
    instructions(
        "arrangement_instructions",
        "instruction_ref",
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column("instalments", sa.Integer, nullable=False),
        sa.Column("frequency", sa.String(16), nullable=False),
        sa.Column("first_date", sa.String(10), nullable=False),
        sa.Column("case_ref", sa.String(64)),
    )
    instructions(
        "card_instructions",
        "instruction_ref",
        sa.Column("token_ref", sa.String(80)),
        sa.Column("action", sa.String(16), nullable=False),
    )
    instructions(
        "contact_changes",
        "change_ref",
        sa.Column("email", sa.String(120)),
        sa.Column("phone", sa.String(20)),
    )
    instructions(
        "flag_changes",
        "change_ref",
        sa.Column("flag", sa.String(40), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
    )
    instructions(
        "account_notes",
        "note_ref",
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("author", sa.String(40)),
    )
    instructions(
        "document_links",
        "link_ref",
        sa.Column("document_ref", sa.String(80), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )
    return meta


@pytest.fixture
def core_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A core database with its staging tables and one account (the same server as the test's
    store on PostgreSQL; a file of its own on SQLite)."""
    url = database_url if database_url.startswith("postgresql") else f"sqlite:///{tmp_path}/core.db"
    engine = sa.create_engine(url)
    meta = staging_schema()
    meta.create_all(engine)
    account = {
        "account_no": "A1",
        "first_name": "Ana",
        "language": "en",
        "time_zone": "America/New_York",
        **{k: ACCOUNT["facts"][k] for k in ("balance", "product", "state", "days_past_due")},  # type: ignore[index]
        "extra_facts": json.dumps({"flags": ["past_due"]}),
        "contacts": json.dumps(ACCOUNT["contacts"]),
        "payment_methods": json.dumps(ACCOUNT["payment_methods"]),
        "known_facts": json.dumps(ACCOUNT["secrets"]),
    }
    with engine.begin() as c:
        c.execute(meta.tables["closeloop_accounts"].insert(), [account])
    yield url
    meta.drop_all(engine)
    engine.dispose()


def rows(url: str, table: str) -> list[dict[str, object]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.text(f"SELECT * FROM {table}"))]
    finally:
        engine.dispose()


def mapping() -> SqlMapping:
    loaded = load_mapping_file(MAPPING)
    assert isinstance(loaded, SqlMapping)
    return loaded


def test_an_account_and_each_write_as_a_staging_row(core_url: str) -> None:
    sql = SqlConnector(mapping(), url=core_url)
    try:
        account = sql.read_account("A1")
        assert account is not None and account.first_name == "Ana"
        assert account.facts["flags"] == ["past_due"] and account.facts["balance"] == 300.0
        assert account.contacts[0]["channel"] == "email" and account.secrets
        assert sql.read_account("nobody") is None
        first = sql.execute("post_payment", None, PAID, "case_1.k.post_payment")
        again = sql.execute("post_payment", None, PAID, "case_1.k.post_payment")
        assert first.ok and again.ok and first.reference == again.reference
        cleared = sql.execute("clear_flag", "past_due", PAID, "case_1.k.clear_flag")
        noted = sql.execute("add_note", None, {**PAID, "outcome": "paid"}, "case_1.k.add_note")
        assert cleared.ok and noted.ok
    finally:
        sql.close()
    (payment,) = rows(core_url, "payment_instructions")
    assert payment["amount_cents"] == 12050 and payment["status"] == "NEW"
    assert payment["instruction_ref"] == "case_1.k.post_payment"
    assert rows(core_url, "flag_changes")[0]["action"] == "clear"


def test_what_the_database_refuses_and_what_a_retry_may_fix(core_url: str) -> None:
    sql = SqlConnector(mapping(), url=core_url)
    try:
        unbuildable = sql.execute("post_payment", None, {"account_id": "A1"}, "k1")
        assert not unbuildable.ok and not unbuildable.retryable
        assert "amount is required" in unbuildable.error
        refused = sql.execute("add_note", None, {"account_id": "A1"}, "k2")  # body NOT NULL
        assert not refused.ok and not refused.retryable
        assert refused.error.startswith("refused by the database: ")
    finally:
        sql.close()
    assert rows(core_url, "account_notes") == []
    down = SqlConnector(mapping(), url="postgresql+psycopg://closeloop@127.0.0.1:1/core")
    try:
        gone = down.execute("post_payment", None, PAID, "k3")
        assert not gone.ok and gone.retryable and gone.error.startswith("database: ")
    finally:
        down.close()


def test_the_app_writes_back_through_the_staging_schema(
    core_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOSELOOP_CORE_DATABASE_URL", core_url)
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE], connector=MAPPING
    )
    app: App = build(settings, clock=SimClock(NOW))
    try:
        case_id = paid(app, "A1", "t1")
        app.dispatcher.run_writebacks()
        assert app.runtime.case(case_id).status is Status.RESOLVED
    finally:
        app.close()
    (payment,) = rows(core_url, "payment_instructions")
    assert payment["account_no"] == "A1" and payment["case_ref"] == case_id
    assert [r["flag"] for r in rows(core_url, "flag_changes")] == ["past_due"]
    assert len(rows(core_url, "account_notes")) == 1


def test_the_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOSELOOP_CORE_DATABASE_URL", raising=False)
    with pytest.raises(InputError, match="set CLOSELOOP_CORE_DATABASE_URL"):
        SqlConnector(mapping())
