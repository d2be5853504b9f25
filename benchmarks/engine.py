"""Engine bookkeeping throughput: closeloop vs raw sqlite3 (ceiling) vs DBOS.

The standard journey for N cases: trigger -> eligibility -> email -> 24 h timer
-> SMS -> 48 h timer -> expire, with 30% completing after the first message
(outcome submitted, writeback confirmed). Every wait is made due at once on
all sides, so the figures measure bookkeeping, not waiting. A case-step is one
engine input applied: intake, a timer, a customer submission, a writeback
result (3 per case on every side). Customers submit one at a time (one
transaction each, as the mini-app does); writebacks are claimed, carried out
and confirmed in batches, as closeloop's dispatcher does.

    python benchmarks/engine.py [--cases N] [--dbos-cases M] [--repeat K]

Every side runs K times, interleaved, and the best run of each counts.
Prints case-steps per second for each side and the ratios. Targets: closeloop
reaches at least 30% of the raw ceiling and at least 50x DBOS.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # inside contact hours in New York
BATCH = 500


def completes(i: int) -> bool:
    return i % 10 < 3


# -- closeloop -----------------------------------------------------------------
def run_closeloop(n: int, folder: Path) -> float:
    from closeloop.app import Dispatcher, RetryPolicy, Runtime, TriggerIn, Workflows, settle_heap
    from closeloop.clock import SimClock
    from closeloop.engine import OutcomeSubmitted
    from closeloop.spec import load_spec_file
    from closeloop.store import Store
    from closeloop.testing import InMemoryConnector, account

    store = Store.connect(f"sqlite:///{folder / 'closeloop.db'}")
    store.upgrade()
    clock = SimClock(START)
    connector = InMemoryConnector({f"A{i}": account(f"A{i}") for i in range(n)})
    runtime = Runtime(
        store=store,
        workflows=Workflows([load_spec_file(HERE / "journey.yaml")]),
        connector=connector,
        clock=clock,
    )
    runtime.register_workflows()
    dispatcher = Dispatcher(
        runtime,
        channels={},
        connector=connector,
        retry=RetryPolicy(),
        public_url="https://closeloop.invalid",
        link_lifetime=timedelta(hours=72),
    )
    settle_heap()  # as `closeloop work` does once it has started
    started = time.perf_counter()
    case_ids = []
    for first in range(0, n, BATCH):
        # Triggers arrive over time: the clock moves with real time during
        # intake, as it does in production (case ids are time-ordered).
        clock.set(START + timedelta(seconds=time.perf_counter() - started))
        batch = [
            TriggerIn(
                id=f"t{i}",
                type="bench.failed",
                data={"account_id": f"A{i}", "amount_due": "100.00"},
            )
            for i in range(first, min(n, first + BATCH))
        ]
        case_ids += [r.case_id for r in runtime.intake(batch)]
    for i, case_id in enumerate(case_ids):
        if completes(i):  # one customer at a time, as the mini-app submits
            runtime.apply(
                case_id,
                OutcomeSubmitted(
                    option="pay_now",
                    values={"amount": "100.00", "method": "pm_1"},
                    key=f"submit:{i}",
                ),
            )
    while dispatcher.run_writebacks(BATCH):  # claimed, carried out, confirmed in batches
        pass
    for hours in (24, 72):  # a minute past each wait, for triggers taken in at START + seconds
        clock.set(START + timedelta(hours=hours, minutes=1))
        while runtime.run_due_timers(BATCH):
            pass
    elapsed = time.perf_counter() - started
    with store.read() as tx:
        counts = tx.status_counts()
    expected = {
        "resolved": sum(map(completes, range(n))),
        "expired": n - sum(map(completes, range(n))),
    }
    assert counts == expected, counts
    assert len(connector.effects) == expected["resolved"]
    store.dispose()
    return 3 * n / elapsed


# -- raw sqlite3: the same writes with no engine logic ---------------------------
# The same schema (closeloop's own migrations), the same statements, the same
# transaction boundaries and rows of the same size: what is left between this
# side and closeloop's is the engine (policy, the state machine, building the
# decision) and the runtime around it.
T0, T1, T2 = (
    "2026-03-02 15:00:00.000000",
    "2026-03-03 15:00:00.000000",
    "2026-03-05 15:00:00.000000",
)
STATE = (
    '{"data": {"account_id": "A%d", "amount_due": "100.00"}, "account": {"flags": [], '
    '"balance": 250.0, "state": "NY", "product": "card", "days_past_due": 5, '
    '"first_name": "Ana", "locale": "en", "payment_methods": [{"id": "pm_1", "kind": "card", '
    '"brand": "Visa", "last4": "4242", "expiry": "08/28"}]}, "time_zone": "America/New_York", '
    '"next_step": %d, '
    '"link_opened": false, "verified": false, "identity_level": "none", '
    '"identity_failures": 0, "code_failures": 0, "outcome": %s, "submission": {}, "touches": %d, '
    '"agent_touched": false, "reason": null, "contacts": [{"channel": "email", '
    '"address": "a%d@example.com", "consent": true}, {"channel": "sms", "address": '
    '"+12125550123", "consent": true}, {"channel": "whatsapp", "address": "+12125550123", '
    '"consent": true}], "pending_writebacks": []}'
)
CASE_COLUMNS = (
    "id, workflow, trigger_id, account_id, status, cohort, opened_at, updated_at, "
    "closed_at, seq, state"
)
SELECT_CASE = (
    f"SELECT {CASE_COLUMNS}, EXISTS (SELECT 1 FROM case_events WHERE case_id = cases.id "
    "AND dedupe_key = ?) FROM cases WHERE id = ?"
)
UPDATE_CASE = (
    "UPDATE cases SET status = ?, cohort = ?, updated_at = ?, closed_at = ?, seq = ?, "
    "state = ? WHERE id = ?"
)
INSERT_EVENT = (
    "INSERT INTO case_events (case_id, seq, kind, actor, at, reason, data, dedupe_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_OUTBOX = (
    "INSERT INTO outbox (case_id, kind, idempotency_key, payload, status, attempts, "
    "next_attempt_at, leased_until, created_at, updated_at, result) "
    "VALUES (?, ?, ?, ?, 'pending', 0, ?, NULL, ?, ?, NULL)"
)
UPSERT_TIMER = (
    "INSERT INTO timers (case_id, name, due_at) VALUES (?, ?, ?) "
    "ON CONFLICT (case_id, name) DO UPDATE SET due_at = excluded.due_at"
)


def _key(tag: str, i: int) -> str:
    return f"{tag}{i:0{64 - len(tag)}d}"


def _requested(channel: str, template: str, key: str) -> str:
    return f'{{"channel": "{channel}", "template": "{template}", "message_key": "{key}"}}'


def _payload(channel: str, i: int) -> str:
    return (
        f'{{"channel": "{channel}", "address": "a{i}@example.com", "template": "e", '
        f'"step": 0, "step_name": "{channel}"}}'
    )


def run_raw(n: int, folder: Path) -> float:
    from closeloop.store import Store

    path = folder / "raw.db"
    store = Store.connect(f"sqlite:///{path}")
    store.upgrade()  # closeloop's schema, set up before the clock starts
    store.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    case = [f"case_{i:032d}" for i in range(n)]
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        ids = range(first, min(n, first + BATCH))
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE trigger_id IN "
            "(SELECT value FROM json_each(?))",
            (json.dumps([f"t{i}" for i in ids]),),
        ).fetchall()
        db.executemany(
            f"INSERT INTO cases ({CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    case[i],
                    "bench_journey@1",
                    f"t{i}",
                    f"A{i}",
                    "outreach",
                    "enrolled",
                    T0,
                    T0,
                    None,
                    2,
                    STATE % (i, 1, "null", 1, i),
                )
                for i in ids
            ],
        )
        db.executemany(
            INSERT_EVENT,
            [
                row
                for i in ids
                for row in (
                    (
                        case[i],
                        1,
                        "opened",
                        "backend",
                        T0,
                        f"trigger t{i} (bench.failed)",
                        '{"workflow": "bench_journey@1"}',
                        f"trigger:t{i}",
                    ),
                    (
                        case[i],
                        2,
                        "message_requested",
                        "engine",
                        T0,
                        "outreach step email",
                        _requested("email", "e", _key("m0", i)),
                        None,
                    ),
                )
            ],
        )
        db.executemany(
            UPSERT_TIMER,
            [(case[i], name, due) for i in ids for name, due in (("expire", T2), ("cadence", T1))],
        )
        db.executemany(
            INSERT_OUTBOX,
            [(case[i], "message", _key("m0", i), _payload("email", i), T0, T0, T0) for i in ids],
        )
        db.execute("COMMIT")
    for i in range(n):  # the customers' submissions, one transaction each
        if not completes(i):
            continue
        key = f"submit:{i}"
        db.execute("BEGIN IMMEDIATE")
        db.execute(SELECT_CASE, (key, case[i])).fetchone()
        state = STATE % (i, 1, '"paid"', 1, i)
        db.execute(UPDATE_CASE, ("writing_back", "enrolled", T0, None, 3, state, case[i]))
        data = f'{{"outcome": "paid", "option": "pay_now", "writebacks": ["{_key("w", i)}"]}}'
        db.execute(
            INSERT_EVENT, (case[i], 3, "outcome_submitted", "system", T0, "Paid.", data, key)
        )
        db.execute("DELETE FROM timers WHERE case_id = ?", (case[i],))
        payload = f'{{"operation": "post_payment", "data": {{"account_id": "A{i}"}}}}'
        db.execute(INSERT_OUTBOX, (case[i], "writeback", _key("w", i), payload, T0, T0, T0))
        db.execute("COMMIT")
    while True:  # writebacks: claim and lease a batch, then confirm it
        db.execute("BEGIN IMMEDIATE")
        claimed = db.execute(
            "SELECT id, case_id, kind, idempotency_key, payload, attempts FROM outbox "
            "WHERE kind = 'writeback' AND status = 'pending' AND next_attempt_at <= ? "
            "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY id LIMIT ?",
            (T0, T0, BATCH),
        ).fetchall()
        db.execute(
            "UPDATE outbox SET leased_until = ? WHERE id IN (SELECT value FROM json_each(?))",
            (T1, json.dumps([row[0] for row in claimed])),
        )
        db.execute("COMMIT")
        if not claimed:
            break
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([row[1] for row in claimed]),),
        ).fetchall()
        db.execute(
            "SELECT case_id, dedupe_key FROM case_events WHERE (case_id, dedupe_key) IN ("
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
            "FROM json_each(?))",
            (json.dumps([(row[1], f"outbox:{row[0]}") for row in claimed]),),
        ).fetchall()
        db.executemany(
            "UPDATE outbox SET status = 'done', result = ?, attempts = attempts + 1, "
            "updated_at = ?, leased_until = NULL WHERE id = ?",
            [
                (f'{{"reference": "ref_{row[3][:8]}", "error": null}}', T0, row[0])
                for row in claimed
            ],
        )
        number = {c: int(c[5:]) for c, *_ in rows}
        db.executemany(
            UPDATE_CASE,
            [
                (
                    "resolved",
                    "enrolled",
                    T0,
                    T0,
                    5,
                    STATE % (number[c], 1, '"paid"', 1, number[c]),
                    c,
                )
                for c, *_ in rows
            ],
        )
        box = {row[1]: row[0] for row in claimed}
        db.executemany(
            INSERT_EVENT,
            [
                event
                for c, *_ in rows
                for event in (
                    (
                        c,
                        4,
                        "writeback_succeeded",
                        "connector",
                        T0,
                        "",
                        f'{{"operation_key": "{_key("w", number[c])}", "reference": "ref"}}',
                        f"outbox:{box[c]}",
                    ),
                    (c, 5, "resolved", "engine", T0, "outcome paid written back", "{}", None),
                )
            ],
        )
        db.executemany("DELETE FROM timers WHERE case_id = ?", [(c,) for c, *_ in rows])
        db.execute("COMMIT")
    for now, sends in ((T1, True), (T2, False)):
        while True:
            db.execute("BEGIN IMMEDIATE")
            due = db.execute(
                "SELECT case_id, name FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, BATCH),
            ).fetchall()
            if not due:
                db.execute("COMMIT")
                break
            rows = db.execute(
                f"SELECT {CASE_COLUMNS} FROM cases WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([c for c, _ in due]),),
            ).fetchall()
            number = {c: int(c[5:]) for c, *_ in rows}
            db.executemany(
                UPDATE_CASE,
                [
                    (
                        "outreach" if sends else "expired",
                        "enrolled",
                        now,
                        None if sends else now,
                        seq + 1,
                        STATE % (number[c], 2, "null", 2, number[c]),
                        c,
                    )
                    for c, *_, seq, _state in rows
                ],
            )
            db.executemany(
                INSERT_EVENT,
                [
                    (
                        c,
                        seq + 1,
                        "message_requested" if sends else "expired",
                        "engine" if sends else "timer",
                        now,
                        "outreach step sms" if sends else "no resolution before the deadline",
                        _requested("sms", "s", _key("m1", number[c])) if sends else "{}",
                        None,
                    )
                    for c, *_, seq, _state in rows
                ],
            )
            db.executemany("DELETE FROM timers WHERE case_id = ? AND name = ?", due)
            if sends:
                db.executemany(
                    INSERT_OUTBOX,
                    [
                        (
                            c,
                            "message",
                            _key("m1", number[c]),
                            _payload("sms", number[c]),
                            now,
                            now,
                            now,
                        )
                        for c, *_ in rows
                    ],
                )
            else:
                db.executemany("DELETE FROM timers WHERE case_id = ?", [(c,) for c, *_ in rows])
            db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    statuses = dict(db.execute("SELECT status, count(*) FROM cases GROUP BY status").fetchall())
    db.close()
    assert statuses == {
        "resolved": sum(map(completes, range(n))),
        "expired": n - sum(map(completes, range(n))),
    }, statuses
    return 3 * n / elapsed


# -- DBOS: the same journey as durable workflows on SQLite ------------------------
DBOS_SCRIPT = r"""
import json, sys, time
from dbos import DBOS

n, path = int(sys.argv[1]), sys.argv[2]
DBOS(config={"name": "closeloop-bench", "system_database_url": f"sqlite:///{path}",
             "log_level": "WARNING"})

@DBOS.step()
def eligibility(case_id: str, amount: float) -> bool:
    return amount > 0

@DBOS.step()
def send(case_id: str, channel: str) -> str:
    return f"{case_id}:{channel}"

@DBOS.step()
def write_back(case_id: str) -> str:
    return f"{case_id}:post_payment"

@DBOS.workflow()
def journey(case_id: str, completes: bool) -> str:
    if not eligibility(case_id, 100.0):
        return "ineligible"
    send(case_id, "email")
    if completes:
        write_back(case_id)
        return "resolved"
    DBOS.sleep(0)  # the 24 h wait, made due at once
    send(case_id, "sms")
    DBOS.sleep(0)  # the 48 h wait, made due at once
    return "expired"

DBOS.launch()
queue = DBOS.register_queue("cases", polling_interval_sec=0.01)
started = time.perf_counter()
handles = [queue.enqueue(journey, f"c{i}", i % 10 < 3) for i in range(n)]
results = [h.get_result() for h in handles]
elapsed = time.perf_counter() - started
assert results.count("resolved") == sum(1 for i in range(n) if i % 10 < 3)
print(json.dumps({"steps_per_second": 3 * n / elapsed}))
DBOS.destroy()
"""


def run_dbos(n: int, folder: Path) -> float:
    script = folder / "dbos_journey.py"
    script.write_text(DBOS_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(n), str(folder / "dbos.db")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the DBOS side failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["steps_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side; the best of each counts"
    )
    parser.add_argument(
        "--dbos-cases",
        type=int,
        default=None,
        help="cases for the DBOS side (default: --cases; it takes about a minute per 5,000)",
    )
    args = parser.parse_args()
    if args.dbos_cases is None:
        args.dbos_cases = args.cases
    if args.cases < 10 or args.dbos_cases < 10:
        parser.error("--cases and --dbos-cases must be at least 10")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    raw = engine = dbos = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):  # interleaved, so both sides see the same machine
            folder = Path(tmp) / str(run)
            folder.mkdir()
            raw = max(raw, run_raw(args.cases, folder))
            engine = max(engine, run_closeloop(args.cases, folder))
            dbos = max(dbos, run_dbos(args.dbos_cases, folder))
    print(
        f"cases: {args.cases} (DBOS: {args.dbos_cases}), 3 case-steps per case, "
        f"best of {args.repeat} runs"
    )
    print(f"raw sqlite3 (ceiling)   {raw:>10,.0f} case-steps/s")
    print(f"closeloop engine        {engine:>10,.0f} case-steps/s")
    print(f"DBOS workflows (SQLite) {dbos:>10,.0f} case-steps/s")
    print(f"closeloop / ceiling     {engine / raw:>10.1%}   (target >= 30%)")
    print(f"closeloop / DBOS        {engine / dbos:>10.1f}x  (target >= 50x)")


if __name__ == "__main__":
    main()
