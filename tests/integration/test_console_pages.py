"""What the operator's pages count, against cases whose story is known."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, build
from closeloop.app.links import token_from_url
from closeloop.app.overview import overview
from closeloop.clock import SimClock
from closeloop.web import create_api
from tests.conftest import EXAMPLE, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=SimClock(NOW))
    built.ledger.add_accounts([{**ACCOUNT, "account_id": a} for a in ("A1", "A2", "A3")])
    yield built
    built.close()


def test_the_funnel_channels_and_connector_count_what_happened(app: App) -> None:
    """Three cases: one pays in the message, one opens the link only, one is not reached."""
    opened = [app.runtime.intake([trigger(f"t{i}", account=f"A{i}")])[0] for i in (1, 2, 3)]
    app.work()  # the first emails go
    for result, key in zip(opened[:2], ("o1", "o2"), strict=True):
        assert result.case_id is not None
        app.service.redeem(token_from_url(app.service.issue_link(result.case_id)), key=key)
    paid = opened[0].case_id
    assert paid is not None
    facts = {"date_of_birth": "1980-02-03", "postal_code": "10001"}
    app.service.verify_identity(paid, facts, key="v")
    app.service.submit(paid, "pay_now", {"amount": "120.50", "method": "pm_1"}, key="p")
    app.work()  # its three writebacks

    state = overview(app)
    assert state["funnel"] == {
        "triggered": 3,
        "eligible": 3,
        "enrolled": 3,
        "message_sent": 3,
        "link_opened": 2,
        "identity_passed": 1,
        "outcome_submitted": 1,
        "resolved": 1,
    }
    assert state["channels"]["email"]["sent"] == 3
    connector = state["connector"]
    assert (connector["succeeded"], connector["failed"], connector["success_rate"]) == (3, 0, 1.0)
    assert connector["breaker"] == "closed" and connector["call_mean_seconds"] is not None

    client = TestClient(create_api(app), headers=bearer(app, "viewer"))
    health = client.get("/console/health")
    assert health.status_code == 200
    assert "Core&#39;s answer" in health.text or "Core's answer" in health.text
    assert re.search(r"Confirmed identity</th><td class=\"num\">1<", health.text)
    workflows = client.get("/console/workflows").text
    assert "failed_payment" in workflows and '<td class="num">3</td>' in workflows
    report = client.get("/console/report")
    assert report.status_code == 200 and report.text.count("<svg") >= 3
    assert "nonce-" in report.headers["content-security-policy"]
