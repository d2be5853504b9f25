"""When the system of record cannot be read: nothing opened on a guess, nothing lost.

A trigger whose account cannot be read opens no case and is answered
`unavailable` (503 on the API, alone), so its sender sends it again; the
other triggers of its batch are taken. A customer whose known facts cannot
be checked is asked to try again later, with no failed attempt counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, build
from closeloop.app.links import token_from_url
from closeloop.clock import SimClock
from closeloop.connectors import Account
from closeloop.testing import InMemoryConnector
from closeloop.web import create_api
from tests.conftest import EXAMPLE, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger

ACCOUNTS = {
    i: Account(
        account_id=i,
        first_name="Ana",
        time_zone="America/New_York",
        facts=ACCOUNT["facts"],  # type: ignore[arg-type]
        contacts=tuple(ACCOUNT["contacts"]),  # type: ignore[arg-type]
        payment_methods=tuple(ACCOUNT["payment_methods"]),  # type: ignore[arg-type]
        secrets=ACCOUNT["secrets"],  # type: ignore[arg-type]
    )
    for i in ("A1", "A2")
}


@pytest.fixture
def core() -> InMemoryConnector:
    return InMemoryConnector(dict(ACCOUNTS))


@pytest.fixture
def app(database_url: str, tmp_path: Path, core: InMemoryConnector) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=SimClock(NOW), connector=("core", core))
    yield built
    built.close()


def test_an_unreadable_account_opens_nothing_and_the_batch_goes_on(
    app: App, core: InMemoryConnector
) -> None:
    core.unreadable = {"A2"}
    first, second = app.runtime.intake([trigger("t1", "A1"), trigger("t2", "A2")])
    assert first.created and first.status == "outreach"
    assert second.status == "unavailable" and second.case_id is None and not second.created
    assert "A2" in second.reason
    with app.store.read() as tx:
        assert sum(tx.status_counts().values()) == 1
    core.unreadable = set()  # the core answers again: the sender sends the trigger again
    (again,) = app.runtime.intake([trigger("t2", "A2")])
    assert again.created and again.status == "outreach"
    (repeat,) = app.runtime.intake([trigger("t2", "A2")])
    assert not repeat.created and repeat.case_id == again.case_id


def test_the_api_answers_503_for_a_trigger_it_could_not_take(
    app: App, core: InMemoryConnector
) -> None:
    client = TestClient(create_api(app), headers=bearer(app, "operator"))
    core.unreadable = {"A2"}
    body = {"id": "t2", "type": "payment.failed", "data": dict(trigger("t2", "A2").data)}
    alone = client.post("/v1/triggers", json=body)
    assert alone.status_code == 503 and alone.headers["retry-after"] == "30"
    assert alone.json()["status"] == "unavailable" and alone.json()["case_id"] is None
    batch = client.post(
        "/v1/triggers",
        json={"triggers": [{**body, "id": "t1", "data": dict(trigger("t1").data)}, body]},
    )
    assert batch.status_code == 200
    statuses = [r["status"] for r in batch.json()["results"]]
    assert statuses == ["outreach", "unavailable"]
    assert "reason" in batch.json()["results"][1]


def test_identity_cannot_be_checked_so_no_attempt_is_counted(
    app: App, core: InMemoryConnector
) -> None:
    (opened,) = app.runtime.intake([trigger("t1", "A1")])
    assert opened.case_id is not None
    link = app.service.issue_link(opened.case_id, "sms")
    client = TestClient(create_api(app), base_url="https://testserver")
    client.post(f"/m/{token_from_url(link)}")
    page = client.get("/m").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    core.unreadable = {"A1"}
    answer = client.post(
        "/m/identity",
        data={"csrf": csrf, "date_of_birth": "1980-02-03", "postal_code": "10001"},
    )
    assert answer.status_code == 503
    assert "We cannot check your details right now" in answer.text
    assert app.runtime.case(opened.case_id).identity_failures == 0
    core.unreadable = set()
    again = client.post(
        "/m/identity",
        data={"csrf": csrf, "date_of_birth": "1980-02-03", "postal_code": "10001"},
        follow_redirects=False,
    )
    assert again.status_code == 303
