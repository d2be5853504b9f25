"""Writebacks per second to the reference core over HTTP: no faults, and 10% errors.

The reference core runs in its own process on loopback (as `closeloop
sandbox core` does). N cases of the standard journey each have a customer's
payment waiting in the outbox (one `post_payment` writeback each); the
timer runs while closeloop's dispatcher claims them in batches, sends each
to the core through the REST connector and the example mapping
(Idempotency-Key, JSON answer checked against the mapping), and records the
results, retries and case events. Retries are due at once: the simulated
clock jumps to the next one, so the figure measures work, not backoff.

Measured in the same run:

- **the core alone**: a bare httpx client sending the same N payments
  (same bodies, keys, one connection) and nothing else: the ceiling;
- **closeloop, no faults**;
- **closeloop, 10% errors**: the core answers 5% `500` and 5% `503`
  (`Retry-After: 1`) before any effect; every writeback must still land
  exactly once.

    python benchmarks/writebacks.py [--writebacks N] [--repeat K]

Each side runs K times, interleaved; the best run of each counts. The core's
ledger is checked at the end: as many effects as payments sent, none twice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
BATCH = 500
TEN_PERCENT = {"errors": {"500": 0.05, "503": 0.05}}


def admin(core: Any) -> httpx.Client:
    return httpx.Client(
        base_url=core.url, headers={"Authorization": f"Bearer {core.admin_key}"}, timeout=60
    )


def run_raw(core: Any, n: int, tag: str) -> float:
    """The same payments from a bare client: the core's own speed on this machine."""
    with httpx.Client(
        base_url=core.url, headers={"Authorization": f"Bearer {core.api_key}"}, timeout=10
    ) as client:
        started = time.perf_counter()
        for i in range(n):
            key = f"{tag}-{i}"
            answer = client.post(
                f"/v1/accounts/A{i}/payments",
                json={"amount": "100.00", "method": "pm_1", "case_id": key, "reference": key},
                headers={"Idempotency-Key": key},
            )
            assert answer.status_code == 201 and answer.json()["id"], answer.text
        return n / (time.perf_counter() - started)


def run_closeloop(core: Any, n: int, tag: str, folder: Path, faults: dict[str, Any]) -> float:
    from closeloop.app import Dispatcher, RetryPolicy, Runtime, TriggerIn, Workflows, settle_heap
    from closeloop.clock import SimClock
    from closeloop.engine import OutcomeSubmitted, Status
    from closeloop.sim.drill import core_connector
    from closeloop.spec import load_spec_file
    from closeloop.store import Store
    from closeloop.testing import InMemoryConnector, account

    store = Store.connect(f"sqlite:///{folder / f'{tag}.db'}")
    store.upgrade()
    clock = SimClock(START)
    accounts = InMemoryConnector({f"A{i}": account(f"A{i}") for i in range(n)})
    runtime = Runtime(
        store=store,
        workflows=Workflows([load_spec_file(HERE / "journey.yaml")]),
        connector=accounts,  # accounts are read locally: only writebacks go to the core
        clock=clock,
    )
    runtime.register_workflows()
    rest = core_connector(core)
    dispatcher = Dispatcher(
        runtime,
        channels={},
        connector=rest,
        connector_name="reference_core",
        retry=RetryPolicy(max_attempts=20),
        public_url="https://closeloop.invalid",
        link_lifetime=timedelta(hours=72),
    )
    triggers = [
        TriggerIn(
            id=f"{tag}-{i}",
            type="bench.failed",
            data={"account_id": f"A{i}", "amount_due": "100.00"},
        )
        for i in range(n)
    ]
    case_ids = [r.case_id for r in runtime.intake(triggers)]
    for i, case_id in enumerate(case_ids):
        assert case_id is not None
        runtime.apply(
            case_id,
            OutcomeSubmitted(
                option="pay_now", values={"amount": "100.00", "method": "pm_1"}, key=f"s{i}"
            ),
        )
    with admin(core) as client:
        assert client.put("/_admin/faults", json={"seed": 1, **faults}).status_code == 200
    settle_heap()
    started = time.perf_counter()
    while True:
        dispatcher.run_writebacks(BATCH)
        with store.read() as tx:
            due = tx.next_outbox_due(("writeback",))
        if due is None:
            break
        clock.set(max(clock.now(), due))  # the next retry, at once
    elapsed = time.perf_counter() - started
    with admin(core) as client:
        client.put("/_admin/faults", json={})
    with store.read() as tx:
        counts = tx.status_counts()
    assert counts == {Status.RESOLVED.value: n}, counts
    rest.close()
    store.dispose()
    return n / elapsed


def main() -> None:
    from closeloop.sim.devices import sandboxes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writebacks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.writebacks < 10 or args.repeat < 1:
        parser.error("--writebacks must be at least 10 and --repeat at least 1")
    n = args.writebacks
    raw = clean = noisy = 0.0
    with tempfile.TemporaryDirectory() as tmp, sandboxes(Path(tmp), kinds=("core",)) as running:
        core = running.core
        assert core is not None
        with admin(core) as client:
            records = [{"account_id": f"A{i}", "facts": {"balance": 1_000_000.0}} for i in range(n)]
            assert client.post("/_admin/accounts", json=records).status_code == 200
        for run in range(args.repeat):  # interleaved, so every side sees the same machine
            raw = max(raw, run_raw(core, n, f"raw{run}"))
            clean = max(clean, run_closeloop(core, n, f"clean{run}", Path(tmp), {}))
            noisy = max(noisy, run_closeloop(core, n, f"noisy{run}", Path(tmp), TEN_PERCENT))
        with admin(core) as client:
            ledger = client.get("/_admin/ledger").json()
    expected = 3 * n * args.repeat
    assert ledger == {"effects": expected, "duplicate_keys": 0, "duplicate_outcomes": 0}, ledger
    print(f"writebacks: {n} per run, best of {args.repeat} runs; core ledger: {ledger}")
    print(f"the core alone (bare client)   {raw:>8,.0f} writes/s")
    print(f"closeloop, no faults           {clean:>8,.0f} writebacks/s")
    print(f"closeloop, 10% errors          {noisy:>8,.0f} writebacks/s")
    print(f"closeloop / the core alone     {clean / raw:>8.1%}")
    print(f"10% errors / no faults         {noisy / clean:>8.1%}")


if __name__ == "__main__":
    main()
