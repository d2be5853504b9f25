"""The public API over real HTTP: `closeloop serve` in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import CLI

FAILED = {
    "account_id": "A1",
    "amount_due": "120.50",
    "decline_code": "51",
    "due_date": "2026-03-01",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    here = tmp_path_factory.mktemp("serve")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(here / "data")}
    env.pop("CLOSELOOP_DATABASE_URL", None)
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
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_single_trigger_opens_one_case_idempotently(server: str) -> None:
    body = {"id": "evt-1", "type": "payment.failed", "data": FAILED}
    first = httpx.post(f"{server}/v1/triggers", json=body)
    again = httpx.post(f"{server}/v1/triggers", json=body)
    assert first.status_code == 200 and again.status_code == 200
    assert first.json()["created"] and not again.json()["created"]
    assert first.json()["case_id"] == again.json()["case_id"]
    case = httpx.get(f"{server}/v1/cases/{first.json()['case_id']}").json()
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
    response = httpx.post(f"{server}/v1/triggers", json=batch)
    assert response.status_code == 422
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "triggers", 3, "id") in locs
    response = httpx.post(f"{server}/v1/triggers", json={"triggers": batch["triggers"][:3]})
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "triggers", 1, "data", "amount_due") in locs
    assert ("body", "triggers", 1, "data", "extra") in locs
    assert ("body", "triggers", 2, "data", "account_id") in locs
    ok = httpx.post(f"{server}/v1/triggers", json=[batch["triggers"][0]])
    assert ok.json()["results"][0]["created"] is True  # evt-2 was not stored before


def test_unknown_event_type_and_unknown_case(server: str) -> None:
    response = httpx.post(f"{server}/v1/triggers", json={"id": "x", "type": "card.melted"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "type"]
    assert httpx.get(f"{server}/v1/cases/case_nope").status_code == 404
    assert (
        httpx.post(
            f"{server}/v1/triggers",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ).status_code
        == 422
    )


def test_closing_event_over_http(server: str, tmp_path: Path) -> None:
    response = httpx.post(
        f"{server}/v1/triggers",
        json={"id": "pp-1", "type": "payment.posted", "data": {"account_id": "A1"}},
    )
    assert response.status_code == 200
    assert response.json()["status"] in {"closing_event", "duplicate"}
