"""Kill the worker between the core's commit and closeloop's record of it: one effect."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from closeloop.app import Settings, build
from closeloop.app.links import token_from_url
from closeloop.connectors.reference_core import ReferenceCore
from closeloop.engine import Status
from closeloop.store.database import create_engine
from closeloop.store.tables import outbox
from tests.acceptance.conftest import CLI, run
from tests.conftest import ROOT
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port

API, ADMIN = "crash-api-key", "crash-admin-key"


def test_sigkill_after_the_core_committed_leaves_exactly_one_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    core = ReferenceCore(engine, api_key=API, admin_key=ADMIN)
    core.add_accounts([ACCOUNT])
    served = Served(core.app, free_port())
    mapping = tmp_path / "core.yaml"
    example = ROOT / "examples" / "connectors" / "reference_core.yaml"
    mapping.write_text(example.read_text().replace("http://127.0.0.1:8092", served.url))
    env = {
        "CLOSELOOP_DATA_DIR": str(tmp_path / "data"),
        "CLOSELOOP_CONNECTOR": str(mapping),
        "CLOSELOOP_CORE_API_KEY": API,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CLOSELOOP_DATABASE_URL", raising=False)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        app = build(Settings())  # the customer pays in the mini-app's service
        (opened,) = app.runtime.intake([trigger("t1")])
        assert opened.case_id is not None
        link = app.service.issue_link(opened.case_id, "sms")
        visit = app.service.redeem(token_from_url(link), key="open")
        facts = {"date_of_birth": "1980-02-03", "postal_code": "10001"}
        assert app.service.verify_identity(visit.case_id, facts, key="id")
        pay = {"amount": "120.50", "method": "pm_1"}
        app.service.submit(visit.case_id, "pay_now", pay, key="pay")
        # The core commits the payment, then holds its answer back.
        hang = {"timeout_after_commit": 1.0, "hang_seconds": 60}
        assert httpx.put(f"{served.url}/_admin/faults", json=hang, headers=admin).is_success
        worker = subprocess.Popen(
            [str(CLI), "work"],
            env={k: v for k, v in os.environ.items() if k != "CLOSELOOP_DATABASE_URL"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while core.ledger()["effects"] < 1:
            assert worker.poll() is None and time.monotonic() < deadline, "no writeback arrived"
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)  # the core committed; closeloop never heard
        worker.wait()
        assert core.ledger()["effects"] == 1
        with app.store.read() as tx:
            statuses = tx.c.execute(
                sa.select(outbox.c.status).where(outbox.c.kind == "writeback")
            ).scalars()
            assert set(statuses) == {"pending"}  # nothing recorded: the outcome is not lost
        assert httpx.put(f"{served.url}/_admin/faults", json={}, headers=admin).is_success
        app.dispatcher.release_leases()  # the dead worker's lease, as its restart would wait out
        done = run("work", "--once", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert app.runtime.case(opened.case_id).status is Status.RESOLVED
        assert core.ledger() == {"effects": 3, "duplicate_keys": 0, "duplicate_outcomes": 0}
        app.close()
    finally:
        served.stop()
        engine.dispose()
