"""The public API over real HTTP: `closeloop serve` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from closeloop.connectors import LedgerCore
from tests.acceptance.conftest import CLI
from tests.integration.test_runtime import ACCOUNT

AUTH: dict[str, str] = {}  # an operator's API token, made when the server starts
FAILED = {
    "account_id": "A1",
    "amount_due": "120.50",
    "decline_code": "51",
    "due_date": "2026-03-01",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    here = tmp_path_factory.mktemp("serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(here / "data")}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    made = subprocess.run(
        [str(CLI), "tokens", "create", "--name", "tests", "--role", "operator", "--json"],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    )
    AUTH["Authorization"] = f"Bearer {json.loads(made.stdout)['token']}"
    process = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port)],
        cwd=here,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "no start")
        time.sleep(0.1)
    yield base, here / "data"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(served: tuple[str, Path]) -> str:
    return served[0]


def test_single_trigger_opens_one_case_idempotently(server: str) -> None:
    body = {"id": "evt-1", "type": "payment.failed", "data": FAILED}
    first = httpx.post(f"{server}/v1/triggers", json=body, headers=AUTH)
    again = httpx.post(f"{server}/v1/triggers", json=body, headers=AUTH)
    assert first.status_code == 200 and again.status_code == 200
    assert first.json()["created"] and not again.json()["created"]
    assert first.json()["case_id"] == again.json()["case_id"]
    case = httpx.get(f"{server}/v1/cases/{first.json()['case_id']}", headers=AUTH).json()
    # Account A1 is unknown to this system of record: policy fails closed.
    assert case["history"][0]["kind"] == "opened"


def test_batch_with_a_bad_trigger_is_422_with_paths_and_stores_nothing(server: str) -> None:
    batch = {
        "triggers": [
            {"id": "evt-2", "type": "payment.failed", "data": FAILED},
            {
                "id": "evt-3",
                "type": "payment.failed",
                "data": {**FAILED, "amount_due": "lots", "extra": 1},
            },
            {"id": "evt-4", "type": "payment.failed"},
            {"type": "payment.failed", "data": FAILED},
        ]
    }
    response = httpx.post(f"{server}/v1/triggers", json=batch, headers=AUTH)
    assert response.status_code == 422
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "triggers", 3, "id") in locs
    response = httpx.post(
        f"{server}/v1/triggers", json={"triggers": batch["triggers"][:3]}, headers=AUTH
    )
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "triggers", 1, "data", "amount_due") in locs
    assert ("body", "triggers", 1, "data", "extra") in locs
    assert ("body", "triggers", 2, "data", "account_id") in locs
    ok = httpx.post(f"{server}/v1/triggers", json=[batch["triggers"][0]], headers=AUTH)
    assert ok.json()["results"][0]["created"] is True  # evt-2 was not stored before


def test_unknown_event_type_and_unknown_case(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/triggers", json={"id": "x", "type": "card.melted"}, headers=AUTH
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "type"]
    assert httpx.get(f"{server}/v1/cases/case_nope", headers=AUTH).status_code == 404
    assert (
        httpx.post(
            f"{server}/v1/triggers",
            content=b"{not json",
            headers={**AUTH, "content-type": "application/json"},
        ).status_code
        == 422
    )


def test_closing_event_over_http(server: str, tmp_path: Path) -> None:
    response = httpx.post(
        f"{server}/v1/triggers",
        headers=AUTH,
        json={"id": "pp-1", "type": "payment.posted", "data": {"account_id": "A1"}},
    )
    assert response.status_code == 200
    assert response.json()["status"] in {"closing_event", "duplicate"}


def test_one_click_unsubscribe_over_http(served: tuple[str, Path]) -> None:
    """RFC 8058: a POST with List-Unsubscribe=One-Click unsubscribes; a GET never does."""
    base, data = served
    world = sa.create_engine(f"sqlite:///{data / 'world.db'}")
    ledger = LedgerCore(world, clock=lambda: datetime.now(UTC))  # the system of record
    # The server runs on the wall clock: give the customer a zone where it is daytime now.
    hour = datetime.now(UTC).hour
    daytime = next(f"Etc/GMT{-o:+d}" for o in range(-10, 13) if 10 <= (hour + o) % 24 < 18)
    ledger.add_accounts([{**ACCOUNT, "account_id": "A2", "time_zone": daytime}])
    world.dispose()
    body = {"id": "evt-unsub", "type": "payment.failed", "data": {**FAILED, "account_id": "A2"}}
    case_id = httpx.post(f"{base}/v1/triggers", json=body, headers=AUTH).json()["case_id"]
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(data)}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    subprocess.run([str(CLI), "work", "--once"], env=env, check=True, capture_output=True)
    with sqlite3.connect(data / "world.db") as sink:
        (text,) = sink.execute(
            "SELECT body FROM sink_messages WHERE case_id = ? AND channel = 'email'", (case_id,)
        ).fetchone()
    token = text.split("/u/", 1)[1].split()[0]
    url = f"{base}/u/{token}"

    page = httpx.get(url)
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert httpx.get(f"{base}/v1/cases/{case_id}", headers=AUTH).json()["status"] == "outreach"

    assert httpx.post(url, data={"List-Unsubscribe": "Yes"}).status_code == 400
    assert httpx.post(url).status_code == 400
    done = httpx.post(url, data={"List-Unsubscribe": "One-Click"})  # no cookie, no login
    assert done.status_code == 200 and "Unsubscribed" in done.text
    assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert httpx.get(f"{base}/v1/cases/{case_id}", headers=AUTH).json()["status"] == "opted_out"
    with sqlite3.connect(data / "closeloop.db") as db:
        rows = db.execute("SELECT channel, granted, method FROM consents ORDER BY id").fetchall()
    assert rows == [
        ("email", 1, "account record"),
        ("email", 0, "one-click unsubscribe (RFC 8058)"),
    ]
    assert httpx.get(f"{base}/u/not-a-token").status_code == 404
    assert (
        httpx.post(f"{base}/u/not-a-token", data={"List-Unsubscribe": "One-Click"}).status_code
        == 404
    )


def test_the_api_refuses_callers_without_a_live_token(server: str) -> None:
    body = {"id": "evt-anon", "type": "payment.failed", "data": FAILED}
    anonymous = httpx.post(f"{server}/v1/triggers", json=body)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = {"Authorization": "Bearer cl.0123456789abcdef.not-the-secret"}
    assert httpx.post(f"{server}/v1/triggers", json=body, headers=forged).status_code == 401
    assert httpx.get(f"{server}/metrics").status_code == 401
    assert httpx.get(f"{server}/healthz").status_code == 200  # the load balancer's probe
