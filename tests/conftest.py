"""Shared fixtures: the example spec, clocks, and databases (SQLite file and PostgreSQL).

Tests that need PostgreSQL skip with the reason when it is not reachable, and
fail instead under CI=true, where it must be there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings

from closeloop.spec import CompiledSpec, load_spec_file

# Under CI the property tests draw the same examples every run, so a run's verdict
# is the code's; elsewhere they explore afresh each time (and a failure they find
# becomes an example test, as test_quiet_hours_reach_a_zone_a_local_date_ahead did).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "failed_payment.yaml"
KYC = ROOT / "examples" / "kyc_attestation.yaml"
PG_ADMIN_URL = os.environ.get("CLOSELOOP_TEST_PG", "postgresql+psycopg://127.0.0.1:5432/postgres")
# Monday 2026-03-02 15:00 UTC: 10:00 in New York, inside contact hours.
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def compiled() -> CompiledSpec:
    return load_spec_file(EXAMPLE)


def _postgres_or_skip() -> sa.Engine:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true needs it)")
        pytest.skip(reason)
    return engine


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin = _postgres_or_skip()
    name = f"closeloop_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against a real SQLite file and a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'closeloop.db'}"
    return str(request.getfixturevalue("postgres_url"))


def bearer(app: Any, role: str = "admin") -> dict[str, str]:
    """Headers with a new API token of `role` for the app's API."""
    _, token = app.staff.create_token(f"tests-{role}", role)
    return {"Authorization": f"Bearer {token}"}
