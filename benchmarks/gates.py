"""Gate evaluation for a stage over a million cases: tallies from the store, then the table.

A closeloop database (its migrations) is filled with N cases of the example
workflow opened over 30 days: 5% enrolled, the rest the control; statuses,
writebacks, identity checks and the control's outcomes in realistic shares.
Timed: `Tx.rollout_tallies` (the aggregate queries) plus `judge` (gates with
their confidence sequences, minimums, guardrails), as `closeloop rollout
status` runs them; and, separately, time to resolution by cohort
(`Tx.resolution_times` and a Kaplan-Meier curve per cohort, as the arms'
report reads it). Baseline, measured in the same run: the least any gate
table needs, one bare `sqlite3` scan counting cases by cohort and status.

    python benchmarks/gates.py [--cases N] [--repeat K]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START = datetime(2026, 3, 2, tzinfo=UTC)
STATUSES = [("resolved", 0.45), ("resolved_elsewhere", 0.07), ("expired", 0.38),
            ("exception", 0.03), ("opted_out", 0.01), ("ineligible", 0.06)]  # fmt: skip


def fill(path: Path, n: int) -> None:
    """N cases with their writebacks and events, written straight into closeloop's tables."""
    from closeloop.store import Store

    store = Store.connect(f"sqlite:///{path}")
    store.upgrade()
    store.dispose()
    rng = random.Random(7)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    cases, events, outbox = [], [], []
    names = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    for i in range(n):
        case_id = f"case_{i:012d}"
        opened = (START + timedelta(seconds=rng.random() * 30 * 86400)).strftime(
            "%Y-%m-%d %H:%M:%S.%f"
        )
        enrolled = rng.random() < 0.05
        status = rng.choices(names, weights)[0] if enrolled else "not_enrolled"
        cohort = "enrolled" if enrolled else "control"
        closed = (
            datetime.strptime(opened, "%Y-%m-%d %H:%M:%S.%f")
            + timedelta(hours=rng.expovariate(1 / 30))
        ).strftime("%Y-%m-%d %H:%M:%S.%f")
        cases.append((case_id, "failed_payment@1", f"t{i}", f"A{i}", status, cohort, opened,
                      opened, closed, 2, "{}"))  # fmt: skip
        if enrolled and rng.random() < 0.6:
            passed = rng.random() < 0.9
            events.append((case_id, 3, "identity_passed" if passed else "identity_failed",
                           "customer", opened, "", "{}", None))  # fmt: skip
        if not enrolled and rng.random() < 0.1:
            events.append((case_id, 3, "resolved_outside_rollout", "backend", opened, "", "{}",
                           None))  # fmt: skip
        if status == "resolved":
            for op in range(3):
                outbox.append((case_id, "writeback", f"{case_id}.{op}", "{}",
                               "done" if rng.random() < 0.997 else "failed", 1, opened, opened,
                               opened))  # fmt: skip
    with db:
        db.executemany("INSERT INTO cases (id, workflow, trigger_id, account_id, status, cohort, "
                       "opened_at, updated_at, closed_at, seq, state) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", cases)  # fmt: skip
        db.executemany("INSERT INTO case_events (case_id, seq, kind, actor, at, reason, data, "
                       "dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events)  # fmt: skip
        db.executemany("INSERT INTO outbox (case_id, kind, idempotency_key, payload, status, "
                       "attempts, next_attempt_at, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", outbox)  # fmt: skip
    db.execute("ANALYZE")
    db.close()


def run_closeloop(path: Path) -> tuple[float, dict[str, object]]:
    from closeloop.rollout.gates import Tally, judge
    from closeloop.rollout.plan import load_plan_file
    from closeloop.store import Store

    plan = load_plan_file(ROOT / "examples" / "rollouts" / "failed_payment.yaml")
    stage = plan.stages[1]
    store = Store.connect(f"sqlite:///{path}")
    started = time.perf_counter()
    with store.read() as tx:
        tallies = tx.rollout_tallies("failed_payment", START, START + timedelta(days=31))
    verdict = judge(plan, stage, enrolled=Tally(**tallies["enrolled"]),
                    control=Tally(**tallies["control"]), elapsed=timedelta(days=30))  # fmt: skip
    elapsed = time.perf_counter() - started
    store.dispose()
    table = {g.criterion: (round(g.value or 0, 4), g.passed) for g in verdict.gates}
    return elapsed, {"tallies": tallies, "gates": table}


def run_times(path: Path) -> tuple[float, dict[str, object]]:
    from closeloop.app.rollouts import resolution_curves
    from closeloop.store import Store

    store = Store.connect(f"sqlite:///{path}")
    now = START + timedelta(days=31)
    started = time.perf_counter()
    with store.read() as tx:
        curves = resolution_curves(tx, "failed_payment", START, now, timedelta(days=8))
    elapsed = time.perf_counter() - started
    store.dispose()
    cases = {c: curve.at_risk[0] if curve.at_risk else None for c, curve in curves.items()}
    medians = {c: curve.median for c, curve in curves.items()}
    return elapsed, {"cases at risk at the first resolution": cases, "median_hours": medians}


def run_baseline(path: Path) -> float:
    db = sqlite3.connect(path)
    started = time.perf_counter()
    db.execute("SELECT cohort, status, count(*) FROM cases GROUP BY cohort, status").fetchall()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.cases < 1000 or args.repeat < 1:
        parser.error("--cases must be at least 1000 and --repeat at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "closeloop.db"
        began = time.perf_counter()
        fill(path, args.cases)
        print(f"filled {args.cases:,} cases in {time.perf_counter() - began:.0f} s")
        gates, times, bare, report, curves = float("inf"), float("inf"), float("inf"), {}, {}
        for _ in range(args.repeat):  # interleaved; the best of each counts
            bare = min(bare, run_baseline(path))
            seconds, report = run_closeloop(path)
            gates = min(gates, seconds)
            seconds, curves = run_times(path)
            times = min(times, seconds)
    print(json.dumps(report["gates"]))
    print(json.dumps(curves, default=str))
    print(f"gate table (tallies + judge)      {gates * 1000:>8,.0f} ms")
    print(f"time to resolution (Kaplan-Meier) {times * 1000:>8,.0f} ms")
    print(f"bare count by cohort and status   {bare * 1000:>8,.0f} ms")
    print(f"gate table / bare scan            {gates / bare:>8.1f}x")
    print(f"time to resolution / bare scan    {times / bare:>8.1f}x")


if __name__ == "__main__":
    main()
