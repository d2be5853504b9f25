"""Engine bookkeeping throughput: closeloop vs raw sqlite3 (ceiling) vs DBOS.

The standard journey for N cases: trigger -> eligibility -> email -> 24 h timer
-> SMS -> 48 h timer -> expire, with 30% completing after the first message
(outcome submitted, writeback confirmed). Every wait is made due at once on
all sides, so the figures measure bookkeeping, not waiting. A case-step is one
engine input applied: intake, a timer, a customer submission, a writeback
result (3 per case on every side).

    python benchmarks/engine.py [--cases N] [--dbos-cases M]

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
    from closeloop.app import Runtime, TriggerIn, Workflows
    from closeloop.clock import SimClock
    from closeloop.engine import OutcomeSubmitted, RequestWriteback, WritebackSucceeded
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
    started = time.perf_counter()
    case_ids = []
    for first in range(0, n, BATCH):
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
        if completes(i):
            d = runtime.apply(
                case_id,
                OutcomeSubmitted(option="pay_now", values={"amount": "100.00"}, key=f"submit:{i}"),
            )
            (wb,) = [x for x in d.intents if isinstance(x, RequestWriteback)]
            runtime.apply(
                case_id, WritebackSucceeded(operation_key=wb.idempotency_key, key=f"wb:{i}")
            )
    for hours in (24, 72):
        clock.set(START + timedelta(hours=hours))
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
    store.dispose()
    return 3 * n / elapsed


# -- raw sqlite3: the same writes with no engine logic ---------------------------
RAW_SCHEMA = """
CREATE TABLE cases (id TEXT PRIMARY KEY, trigger_id TEXT UNIQUE, account_id TEXT, status TEXT,
  updated_at TEXT, seq INTEGER, state TEXT);
CREATE TABLE case_events (id INTEGER PRIMARY KEY, case_id TEXT, seq INTEGER, kind TEXT,
  at TEXT, data TEXT, dedupe_key TEXT, UNIQUE (case_id, seq), UNIQUE (case_id, dedupe_key));
CREATE TABLE timers (case_id TEXT, name TEXT, due_at TEXT, PRIMARY KEY (case_id, name));
CREATE INDEX ix_timers_due ON timers (due_at);
CREATE TABLE outbox (id INTEGER PRIMARY KEY, case_id TEXT, kind TEXT, idempotency_key TEXT UNIQUE,
  payload TEXT, status TEXT);
"""


def run_raw(n: int, folder: Path) -> float:
    db = sqlite3.connect(folder / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(RAW_SCHEMA)
    at = START.isoformat()
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        ids = range(first, min(n, first + BATCH))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO cases VALUES (?,?,?,?,?,?,?)",
            [(f"c{i}", f"t{i}", f"A{i}", "outreach", at, 2, '{"next_step": 1}') for i in ids],
        )
        db.executemany(
            "INSERT INTO case_events (case_id, seq, kind, at, data, dedupe_key) "
            "VALUES (?,?,?,?,?,?)",
            [
                (f"c{i}", s, k, at, "{}", f"trigger:t{i}" if s == 1 else None)
                for i in ids
                for s, k in ((1, "opened"), (2, "message_requested"))
            ],
        )
        db.executemany(
            "INSERT INTO timers VALUES (?,?,?)",
            [
                (f"c{i}", name, due)
                for i in ids
                for name, due in (("cadence", "2026-03-03"), ("expire", "2026-03-05"))
            ],
        )
        db.executemany(
            "INSERT INTO outbox (case_id, kind, idempotency_key, payload, status) "
            "VALUES (?,?,?,?,?)",
            [(f"c{i}", "message", f"m0:{i}", '{"channel": "email"}', "pending") for i in ids],
        )
        db.execute("COMMIT")
    for i in range(n):
        if not completes(i):
            continue
        for kind, key in (("outcome_submitted", f"submit:{i}"), ("resolved", f"wb:{i}")):
            db.execute("BEGIN IMMEDIATE")
            seq = db.execute("SELECT seq FROM cases WHERE id=?", (f"c{i}",)).fetchone()[0]
            db.execute(
                "SELECT 1 FROM case_events WHERE case_id=? AND dedupe_key=?", (f"c{i}", key)
            ).fetchone()
            db.execute(
                "UPDATE cases SET status=?, seq=?, state=? WHERE id=?",
                (kind, seq + 1, '{"outcome": "paid"}', f"c{i}"),
            )
            db.execute(
                "INSERT INTO case_events (case_id, seq, kind, at, data, dedupe_key) "
                "VALUES (?,?,?,?,?,?)",
                (f"c{i}", seq + 1, kind, at, "{}", key),
            )
            db.execute("DELETE FROM timers WHERE case_id=?", (f"c{i}",))
            if kind == "outcome_submitted":
                db.execute(
                    "INSERT INTO outbox (case_id, kind, idempotency_key, payload, status) "
                    "VALUES (?,?,?,?,?)",
                    (f"c{i}", "writeback", f"w:{i}", "{}", "pending"),
                )
            db.execute("COMMIT")
    for now, follow in (("2026-03-03", ("cadence", None)), ("2026-03-05", None)):
        while True:
            db.execute("BEGIN IMMEDIATE")
            due = db.execute(
                "SELECT case_id, name FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, BATCH),
            ).fetchall()
            if not due:
                db.execute("COMMIT")
                break
            ids = [c for c, _ in due]
            marks = ",".join("?" * len(ids))
            rows = db.execute(
                f"SELECT id, seq, state FROM cases WHERE id IN ({marks})", ids
            ).fetchall()
            db.executemany(
                "UPDATE cases SET status=?, seq=?, state=? WHERE id=?",
                [
                    ("outreach" if follow else "expired", seq + 1, state, cid)
                    for cid, seq, state in rows
                ],
            )
            db.executemany(
                "INSERT INTO case_events (case_id, seq, kind, at, data) VALUES (?,?,?,?,?)",
                [
                    (cid, seq + 1, "message_requested" if follow else "expired", now, "{}")
                    for cid, seq, _ in rows
                ],
            )
            db.executemany("DELETE FROM timers WHERE case_id=? AND name=?", due)
            if follow:
                db.executemany(
                    "INSERT INTO outbox (case_id, kind, idempotency_key, payload, "
                    "status) VALUES (?,?,?,?,?)",
                    [(cid, "message", f"m1:{cid}", '{"channel": "sms"}', "pending") for cid in ids],
                )
            else:
                db.executemany("DELETE FROM timers WHERE case_id=?", [(c,) for c in ids])
            db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
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
        "--dbos-cases",
        type=int,
        default=500,
        help="DBOS is slower; a smaller N gives the same rate",
    )
    args = parser.parse_args()
    if args.cases < 10 or args.dbos_cases < 10:
        parser.error("--cases and --dbos-cases must be at least 10")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = run_raw(args.cases, folder)
        engine = run_closeloop(args.cases, folder)
        dbos = run_dbos(args.dbos_cases, folder)
    print(f"cases: {args.cases} (DBOS: {args.dbos_cases}), 3 case-steps per case")
    print(f"raw sqlite3 (ceiling)   {raw:>10,.0f} case-steps/s")
    print(f"closeloop engine        {engine:>10,.0f} case-steps/s")
    print(f"DBOS workflows (SQLite) {dbos:>10,.0f} case-steps/s")
    print(f"closeloop / ceiling     {engine / raw:>10.1%}   (target >= 30%)")
    print(f"closeloop / DBOS        {engine / dbos:>10.1f}x  (target >= 50x)")


if __name__ == "__main__":
    main()
