"""Failure drills: the demo's workflow against the reference core, with faults injected.

A drill runs the demo's simulation (the same portfolio, customers and
engine) with the reference billing core as the system of record: accounts
are read from it and every outcome is written back to it over HTTP, through
the REST connector and the example mapping. A scenario changes the core's
faults at set simulated times (`FaultSchedule`), and once the run is over
the drill checks closeloop's store against the core's ledger:

- ``outcomes_lost``: outcomes customers gave that are neither in the core's
  ledger (every writeback of the outcome, found there by its key) nor in the
  exception queue;
- ``duplicate_effects``: effects the core applied more than once for one
  idempotency key or one case outcome;
- ``stuck_cases``: cases neither terminal nor waiting on anything (no timer,
  no message or writeback still to carry out).

All three must be 0. It also reports the writeback success rate, retries,
breaker openings, exceptions opened and ``max_recovery_seconds``: from the
core's return (the last fault cleared) to the last writeback that was
pending then landing, in simulated time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import httpx
import sqlalchemy as sa

from closeloop.app import App
from closeloop.app.dispatch import writeback_state
from closeloop.connectors.mapping import RestMapping, Timeouts, load_rest_mapping
from closeloop.connectors.reference_core import effect_keys, ledger_counts
from closeloop.connectors.rest import RestConnector
from closeloop.engine import Status
from closeloop.errors import OperationalError
from closeloop.sim.devices import CoreAccess
from closeloop.sim.portfolio import make_account
from closeloop.sim.runner import START

# The connector's timeouts in a drill (the core is on loopback): a withheld answer
# costs the run a quarter of a second, and the core holds one for twice that.
READ_TIMEOUT = timedelta(seconds=0.25)
HANG_SECONDS = 0.5
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Faults begin a day in, when cases are open and customers are answering, and the
# core returns on day four (the outage and the long windows of `all` end earlier).
BEGIN, RETURN = DAY, 4 * DAY


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    # (time after the start of the run, the core's faults from then on); the last
    # entry clears them: the core's return.
    changes: tuple[tuple[timedelta, dict[str, Any]], ...]

    @property
    def returns_at(self) -> timedelta:
        return self.changes[-1][0]


def _flapping(start: timedelta, end: timedelta, down: timedelta, up: timedelta) -> list[timedelta]:
    """Starts of the down windows between `start` and `end`."""
    starts, at = [], start
    while at + down <= end:
        starts.append(at)
        at += down + up
    return starts


def _scenarios() -> dict[str, Scenario]:
    hang = {"hang_seconds": HANG_SECONDS}
    flaps = _flapping(BEGIN, RETURN, 2 * HOUR, 4 * HOUR)
    flapping: list[tuple[timedelta, dict[str, Any]]] = []
    for n, at in enumerate(flaps):  # fully down, then writes only, in turn
        flapping += [(at, {"writes_down": True} if n % 2 else {"down": True}), (at + 2 * HOUR, {})]
    noisy = {
        "errors": {500: 0.04, 503: 0.03, 429: 0.03},
        "timeout_after_commit": 0.05,
        "malformed": 0.03,
        "truncated": 0.03,
        "latency_ms": 10,
        **hang,
    }
    everything: list[tuple[timedelta, dict[str, Any]]] = [(BEGIN, noisy)]
    for at in flaps[:3]:
        everything += [(at + 3 * HOUR, {**noisy, "down": True}), (at + 5 * HOUR, noisy)]
    everything += [
        (2 * DAY, {**noisy, "drift": True}),
        (2 * DAY + 3 * HOUR, noisy),
        (2 * DAY + 12 * HOUR, {**noisy, "down": True}),
        (2 * DAY + 14 * HOUR, {**noisy, "writes_down": True}),
        (2 * DAY + 22 * HOUR, noisy),
        (RETURN, {}),
    ]
    return {
        s.name: s
        for s in (
            Scenario(
                name="outage",
                summary="the core is down for 2 hours, then takes no writes for 10 more "
                "(its posting window closed) on a business day",
                changes=(
                    (BEGIN + 2 * HOUR, {"down": True}),
                    (BEGIN + 4 * HOUR, {"writes_down": True}),
                    (BEGIN + 14 * HOUR, {}),
                ),
            ),
            Scenario(
                name="partial-timeout",
                summary="one answer in five withheld after the core committed, for 3 days",
                changes=((BEGIN, {"timeout_after_commit": 0.2, **hang}), (RETURN, {})),
            ),
            Scenario(
                name="malformed",
                summary="one answer in ten broken and one in ten cut short, for 3 days",
                changes=((BEGIN, {"malformed": 0.1, "truncated": 0.1}), (RETURN, {})),
            ),
            Scenario(
                name="latency",
                summary="every answer 25 ms late and one in twenty past the caller's "
                "timeout, for 3 days",
                changes=(
                    (BEGIN, {"latency_ms": 25, "timeout_after_commit": 0.05, **hang}),
                    (RETURN, {}),
                ),
            ),
            Scenario(
                name="flapping",
                summary="down 2 hours (fully, or for writes, in turn), up 4, for 3 days",
                changes=(*flapping, (RETURN, {})),
            ),
            Scenario(
                name="all",
                summary="errors, timeouts after commit, broken answers, latency, "
                "flapping, schema drift and a 10-hour outage at once, for 3 days",
                changes=tuple(everything),
            ),
        )
    }


SCENARIOS = _scenarios()


class FaultSchedule:
    """Sets the core's faults (over its admin API) as the simulated clock passes each change."""

    def __init__(self, scenario: Scenario, core: CoreAccess, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.admin = httpx.Client(
            base_url=core.url, headers={"Authorization": f"Bearer {core.admin_key}"}, timeout=10
        )
        self._applied: int | None = None  # index of the change in force

    def close(self) -> None:
        self.admin.close()

    def apply(self, now: datetime) -> None:
        passed = [i for i, (at, _) in enumerate(self.scenario.changes) if START + at <= now]
        current = passed[-1] if passed else None
        if current == self._applied:
            return
        faults = self.scenario.changes[current][1] if current is not None else {}
        answer = self.admin.put("/_admin/faults", json={"seed": self.seed, **faults})
        if answer.status_code != 200:
            raise OperationalError(f"the reference core refused the faults: {answer.text}")
        self._applied = current

    def next_change(self, now: datetime) -> datetime | None:
        return min(
            (START + at for at, _ in self.scenario.changes if START + at > now), default=None
        )


def load_core(core: CoreAccess, seed: int, accounts: int) -> None:
    """Put the run's portfolio in the core (the same accounts the simulation's customers hold)."""
    with httpx.Client(
        base_url=core.url, headers={"Authorization": f"Bearer {core.admin_key}"}, timeout=60
    ) as admin:
        for first in range(0, accounts, 1000):
            records = [make_account(seed, i) for i in range(first, min(accounts, first + 1000))]
            answer = admin.post("/_admin/accounts", json=records)
            if answer.status_code != 200:
                raise OperationalError(f"the reference core refused the accounts: {answer.text}")


def core_mapping() -> RestMapping:
    """The example mapping to the reference core, as shipped with closeloop."""
    source = resources.files("closeloop") / "examples" / "connectors" / "reference_core.yaml"
    return load_rest_mapping(source.read_text(), filename="reference_core.yaml")


def core_connector(core: CoreAccess) -> RestConnector:
    """The REST connector to this run's core: the example mapping, drill timeouts."""
    mapping = core_mapping().model_copy(
        update={
            "base_url": core.url,
            "timeouts": Timeouts(connect=timedelta(seconds=1), read=READ_TIMEOUT),
        }
    )
    return RestConnector(mapping, secret=core.api_key)


def check(app: App, scenario: Scenario, core_db: sa.Engine) -> dict[str, Any]:
    """The drill's invariants and measures, from closeloop's store and the core's ledger."""
    ledger = ledger_counts(core_db)
    in_core = effect_keys(core_db)
    with app.store.read() as tx:
        rows = tx.writebacks()
        cases = list(tx.all_cases())
        live = [c.id for c in cases if not c.status.terminal]
        idle = tx.cases_without_work(live)
        retries = tx.writeback_retries()
        breaker = tx.connector_events().get("breaker_opened", 0)
        reconciled = tx.event_counts(("reconciled", "writeback_duplicated", "writeback_missing"))
    by_case: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], []).append(row)
    statuses = Counter(r["status"] for r in rows)
    states = Counter(writeback_state(r) for r in rows)
    # closeloop recorded it as done, but the core has no effect under its key
    phantom = [r for r in rows if r["status"] == "done" and r["idempotency_key"] not in in_core]
    accepted = [c for c in cases if c.outcome is not None]
    lost = [
        c.id
        for c in accepted
        if c.status is not Status.EXCEPTION
        and not (
            by_case.get(c.id)
            and all(
                r["status"] == "done" and r["idempotency_key"] in in_core for r in by_case[c.id]
            )
        )
    ]
    back = START + scenario.returns_at
    recovery = max(
        (
            (r["updated_at"] - back).total_seconds()
            for r in rows
            if r["status"] == "done" and r["created_at"] < back <= r["updated_at"]
        ),
        default=0.0,
    )
    done, failed = statuses.get("done", 0), statuses.get("failed", 0)
    report: dict[str, Any] = {
        "cases": len(cases),
        "outcomes_accepted": len(accepted),
        "writebacks": {
            "done": done,
            "failed": failed,
            "pending": statuses.get("pending", 0),
            # failed after an attempt that was never answered cleanly: the core may hold it
            "unknown": states.get("unknown", 0),
        },
        "core_effects": ledger["effects"],
        "outcomes_lost": len(lost),
        "duplicate_effects": ledger["duplicate_keys"] + ledger["duplicate_outcomes"],
        "stuck_cases": len(idle),
        "writeback_success_rate": round(done / (done + failed), 4) if done + failed else 1.0,
        "writeback_retries": retries,
        "breaker_openings": breaker,
        "exceptions_opened": sum(1 for c in cases if c.status is Status.EXCEPTION),
        "max_recovery_seconds": round(recovery, 1),
        "phantom_writebacks": len(phantom),
        # closeloop's own check against the core's effects, case by case (docs/connectors.md)
        "reconciliation": {
            "cases": reconciled["reconciled"],
            "duplicated": reconciled["writeback_duplicated"],
            "missing": reconciled["writeback_missing"],
        },
        "examples": {"lost": lost[:5], "stuck": idle[:5]},
    }
    report["invariants_hold"] = (
        report["outcomes_lost"] == 0
        and report["duplicate_effects"] == 0
        and report["stuck_cases"] == 0
    )
    return report
