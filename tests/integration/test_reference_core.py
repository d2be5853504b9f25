"""The reference billing core over real HTTP: idempotency keys, the ledger, injected faults."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from closeloop.connectors.reference_core import Faults, ReferenceCore, core_keys
from closeloop.store.database import create_engine
from tests.servers import Served, free_port

API, ADMIN = "core-api-key", "core-admin-key"
ACCOUNT = {
    "account_id": "A1",
    "first_name": "Ana",
    "facts": {"flags": ["past_due"], "balance": 300.0},
    "payment_methods": [{"id": "pm_1", "kind": "card", "last4": "4242"}],
}
PAYMENT = {"amount": "120.50", "method": "pm_1", "case_id": "case_1", "reference": "case_1:paid"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(tmp_path: Path, clock: Clock) -> Iterator[tuple[ReferenceCore, str]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    reference = ReferenceCore(engine, api_key=API, admin_key=ADMIN, clock=clock)
    reference.add_accounts(
        [ACCOUNT, {**ACCOUNT, "account_id": "A2", "facts": {"flags": ["closed"]}}]
    )
    served = Served(reference.app, free_port())
    yield reference, served.url
    served.stop()
    engine.dispose()


def client(url: str, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API}"}, timeout=timeout)


def pay(http: httpx.Client, key: str, body: dict[str, Any] = PAYMENT) -> httpx.Response:
    return http.post("/v1/accounts/A1/payments", json=body, headers={"Idempotency-Key": key})


def faults(url: str, **given: Any) -> None:
    answer = httpx.put(
        f"{url}/_admin/faults", json=given, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 200, answer.text


def test_the_same_key_and_request_replays_with_no_second_effect(
    core: tuple[ReferenceCore, str],
) -> None:
    reference, url = core
    with client(url) as http:
        first = pay(http, "k1")
        again = pay(http, "k1")
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        assert first.json()["balance"] == "179.50"
        account = http.get("/v1/accounts/A1").json()
    assert account["facts"]["balance"] == 179.5
    assert reference.ledger() == {"effects": 1, "duplicate_keys": 0, "duplicate_outcomes": 0}


def test_a_key_reused_for_another_request_or_still_in_flight_is_refused(
    core: tuple[ReferenceCore, str], clock: Clock
) -> None:
    reference, url = core
    with client(url) as http:
        assert pay(http, "k1").status_code == 201
        other = pay(http, "k1", {**PAYMENT, "amount": "10.00"})
        assert other.status_code == 422 and "different request" in other.json()["error"]
        with reference.engine.begin() as c:  # a first request with k2 is being processed
            c.execute(
                core_keys.insert().values(
                    key="k2", fingerprint=_fingerprint(), state="processing", created_at=clock.now
                )
            )
        busy = pay(http, "k2")
        assert busy.status_code == 409 and "in progress" in busy.json()["error"]
        clock.now += timedelta(minutes=2)  # the first one died without committing anything
        assert pay(http, "k2").status_code == 201
    assert reference.ledger()["effects"] == 2


def _fingerprint() -> str:
    """How the core fingerprints PAYMENT's request."""
    return hashlib.sha256(
        b"POST /v1/accounts/A1/payments " + json.dumps(PAYMENT, sort_keys=True).encode()
    ).hexdigest()


def test_writes_need_a_key_and_a_token(core: tuple[ReferenceCore, str]) -> None:
    _, url = core
    with client(url) as http:
        assert http.post("/v1/accounts/A1/payments", json=PAYMENT).status_code == 400
        refused = http.post(
            "/v1/accounts/A2/payments", json=PAYMENT, headers={"Idempotency-Key": "k"}
        )
        assert refused.status_code == 422 and "closed" in refused.json()["error"]
        missing = http.post(
            "/v1/accounts/A9/payments", json=PAYMENT, headers={"Idempotency-Key": "k9"}
        )
        assert missing.status_code == 404
        bad = pay(http, "k3", {**PAYMENT, "amount": "lots"})
        assert bad.status_code == 422 and "decimal" in bad.json()["error"]
    assert httpx.post(f"{url}/v1/accounts/A1/payments", json=PAYMENT).status_code == 401


def test_keys_are_kept_a_day(core: tuple[ReferenceCore, str], clock: Clock) -> None:
    reference, url = core
    with client(url) as http:
        assert pay(http, "k1").status_code == 201
        clock.now += timedelta(hours=23)
        assert pay(http, "k1").headers.get("Idempotent-Replayed") == "true"
        clock.now += timedelta(hours=2)
        assert pay(http, "k1").headers.get("Idempotent-Replayed") is None  # a new request
    assert reference.ledger()["effects"] == 2


def test_injected_errors_and_outages_come_before_any_effect(
    core: tuple[ReferenceCore, str], clock: Clock
) -> None:
    reference, url = core
    faults(url, errors={503: 1.0})
    with client(url) as http:
        failed = pay(http, "k1")
        assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
        faults(
            url,
            outages=[
                {
                    "start": clock.now.isoformat(),
                    "end": (clock.now + timedelta(minutes=5)).isoformat(),
                }
            ],
        )
        assert pay(http, "k1").status_code == 503
        clock.now += timedelta(minutes=5)
        assert pay(http, "k1").status_code == 201  # the key was never taken by the failures
    assert reference.ledger()["effects"] == 1


def test_a_timeout_after_commit_leaves_one_effect_that_a_retry_replays(
    core: tuple[ReferenceCore, str],
) -> None:
    reference, url = core
    faults(url, timeout_after_commit=1.0, hang_seconds=2.0)
    with client(url, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        pay(http, "k1")
    assert reference.ledger()["effects"] == 1  # it happened; the caller never heard
    faults(url)
    with client(url) as http:
        again = pay(http, "k1")
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        found = http.get("/v1/accounts/A1/effects", params={"reference": "case_1:paid"}).json()
    assert [e["operation"] for e in found["data"]] == ["post_payment"]  # read before a retry
    assert reference.ledger()["effects"] == 1


def test_broken_answers_after_a_real_effect(core: tuple[ReferenceCore, str]) -> None:
    reference, url = core
    with client(url) as http:
        faults(url, malformed=1.0)
        broken = pay(http, "k1")
        assert broken.status_code == 201
        with pytest.raises(ValueError):
            broken.json()
        faults(url, truncated=1.0)
        with pytest.raises(httpx.RemoteProtocolError):
            pay(http, "k2", {**PAYMENT, "reference": "r2"})
        faults(url, drift=True)
        drifted = pay(http, "k3", {**PAYMENT, "reference": "r3"}).json()
    assert "payment_id" in drifted and drifted["amount_cents"] == 12050 and "id" not in drifted
    assert reference.ledger()["effects"] == 3


def test_faults_are_drawn_from_the_seed_and_the_attempt(tmp_path: Path, clock: Clock) -> None:
    outcomes = []
    for run in range(2):
        engine = create_engine(f"sqlite:///{tmp_path / f'core{run}.db'}")
        reference = ReferenceCore(
            engine,
            api_key=API,
            admin_key=ADMIN,
            clock=clock,
            faults=Faults(seed=7, errors={500: 0.3, 429: 0.2}),
        )
        reference.add_accounts([ACCOUNT])
        served = Served(reference.app, free_port())
        with client(served.url) as http:
            outcomes.append([pay(http, f"k{i % 5}").status_code for i in range(30)])
        served.stop()
        engine.dispose()
    assert outcomes[0] == outcomes[1]
    assert {500, 429, 201} <= set(outcomes[0])


def test_bad_fault_settings_are_refused(core: tuple[ReferenceCore, str]) -> None:
    _, url = core
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for bad in ({"errors": {"200": 0.5}}, {"errors": {"503": 2}}, {"latency": 5}):
        answer = httpx.put(f"{url}/_admin/faults", json=bad, headers=headers)
        assert answer.status_code == 422, bad
    assert httpx.put(f"{url}/_admin/faults", json={}).status_code == 401
