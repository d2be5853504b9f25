"""Random fault schedules against the reference core: nothing lost, nothing doubled.

Hypothesis draws a few paid cases, a schedule of the core's faults hour by
hour (error statuses, outages, writes refused, answers withheld after the
commit, broken, cut short or drifted answers) and, maybe, the moment the
worker dies: right after the core committed the n-th write and before
closeloop recorded it (the exception escapes the dispatcher as SIGKILL
would end it: nothing of its batch is committed, the rows stay leased). A
new worker on the same database takes the leases back and carries on. Once
the core is healthy again, every outcome must be in the core's ledger
exactly once, or its case in the exception queue.

Each example starts a fresh SQLite store; the core (served over real HTTP on
loopback) starts each example empty. `test_writebacks.py` runs the same path
on PostgreSQL.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from closeloop.app import App, Settings, build
from closeloop.app.breaker import CircuitBreaker
from closeloop.clock import SimClock
from closeloop.connectors import WritebackResult
from closeloop.connectors.mapping import Timeouts
from closeloop.connectors.reference_core import (
    Faults,
    ReferenceCore,
    core_accounts,
    core_effects,
    core_keys,
    effect_keys,
)
from closeloop.connectors.rest import RestConnector
from closeloop.engine import Status
from closeloop.sim.drill import core_mapping
from closeloop.store.database import create_engine
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import ACCOUNT
from tests.integration.test_writebacks import paid
from tests.servers import Served, free_port

API, ADMIN = "fs-api-key", "fs-admin-key"
ACCOUNTS = [{**ACCOUNT, "account_id": f"A{i}"} for i in range(3)]


class Crash(BaseException):  # the process dying, not an error anyone handles
    """The worker dies: nothing after this point of its batch happens."""


@dataclass
class CrashAfterCommit:
    """The connector, with the worker dying right after the core answers the n-th write."""

    inner: RestConnector
    at_call: int
    calls: int = 0

    def read_account(self, account_id: str) -> Any:
        return self.inner.read_account(account_id)

    def execute(
        self, operation: str, argument: str | None, data: Mapping[str, Any], idempotency_key: str
    ) -> WritebackResult:
        result = self.inner.execute(operation, argument, data, idempotency_key)
        self.calls += 1
        if self.calls == self.at_call:
            raise Crash
        return result


@pytest.fixture(scope="module")
def core() -> Iterator[tuple[ReferenceCore, str]]:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'core.db'}")
        reference = ReferenceCore(engine, api_key=API, admin_key=ADMIN)
        served = Served(reference.app, free_port())
        yield reference, served.url
        served.stop()
        engine.dispose()


def fresh(core: ReferenceCore) -> None:
    """The core as at the start of a run: the accounts, no effects, no keys, no faults."""
    core.faults = Faults()
    core._attempts.clear()
    with core.engine.begin() as c:
        for table in (core_effects, core_keys, core_accounts):
            c.execute(table.delete())
    core.add_accounts(ACCOUNTS)


def worker(folder: Path, clock: SimClock, url: str) -> tuple[App, RestConnector]:
    """A worker process's app, on the example's database, writing back to the core."""
    mapping = core_mapping().model_copy(
        update={
            "base_url": url,
            "timeouts": Timeouts(connect=timedelta(seconds=1), read=timedelta(seconds=0.2)),
        }
    )
    rest = RestConnector(mapping, secret=API)
    settings = Settings(
        data_dir=folder, database_url=f"sqlite:///{folder / 'closeloop.db'}", workflows=[EXAMPLE]
    )
    app = build(settings, clock=clock, connector=("reference_core", rest))
    app.dispatcher.breaker = CircuitBreaker(failures=3, open_for=timedelta(minutes=10))
    return app, rest


shares = st.sampled_from([0.0, 0.0, 0.25, 0.5])
hour_of_faults = st.fixed_dictionaries(
    {},
    optional={
        "errors": st.dictionaries(
            st.sampled_from([500, 502, 503, 429, 408, 400]),
            st.sampled_from([0.1, 0.3]),
            max_size=2,
        ),
        "timeout_after_commit": st.sampled_from([0.0, 0.3]),
        "malformed": shares,
        "truncated": shares,
        "down": st.booleans(),
        "writes_down": st.booleans(),
        "drift": st.booleans(),
    },
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cases=st.integers(min_value=1, max_value=2),
    schedule=st.lists(hour_of_faults, min_size=1, max_size=3),
    crash_at=st.none() | st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_random_fault_schedules_lose_and_double_nothing(
    core: tuple[ReferenceCore, str],
    cases: int,
    schedule: list[dict[str, Any]],
    crash_at: int | None,
    seed: int,
) -> None:
    reference, url = core
    fresh(reference)
    clock = SimClock(NOW)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        app, rest = worker(folder, clock, url)
        try:
            case_ids = [paid(app, f"A{i}", f"t{i}") for i in range(cases)]
            if crash_at is not None:
                app.dispatcher.connector = CrashAfterCommit(rest, crash_at)
            # An hour of each drawn fault, then the core healthy again for longer than a
            # writeback's deadline (a day).
            hours = [Faults(seed=seed, hang_seconds=0.4, **f) for f in schedule]
            for faults in hours + [Faults()] * 40:
                reference.faults = faults
                clock.advance(timedelta(hours=1))
                try:
                    for _ in range(2):
                        app.dispatcher.run_writebacks()
                except Crash:  # the worker is gone; a new one takes its leases back
                    event("the worker died after the core's commit")
                    app.close()
                    app, rest = worker(folder, clock, url)
                    app.dispatcher.release_leases()
            with app.store.read() as tx:
                rows = tx.writebacks()
            in_core = effect_keys(reference.engine)
            assert rows and all(r["status"] in ("done", "failed") for r in rows), rows
            assert all(n == 1 for n in in_core.values()), in_core  # no key twice
            done = {r["idempotency_key"] for r in rows if r["status"] == "done"}
            assert done <= set(in_core), "closeloop recorded writebacks the core never made"
            assert reference.ledger()["duplicate_outcomes"] == 0
            for case_id in case_ids:
                case = app.runtime.case(case_id)
                mine = [r for r in rows if r["case_id"] == case_id]
                event(f"a case ended {case.status.value}")
                if case.status is Status.RESOLVED:
                    assert all(r["idempotency_key"] in in_core for r in mine)
                else:  # not all written back: an agent has it, with the reason
                    assert case.status is Status.EXCEPTION, (case.status, mine)
                    assert any(r["status"] == "failed" for r in mine)
        finally:
            app.close()
            rest.close()
