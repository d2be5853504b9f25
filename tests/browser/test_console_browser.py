"""Staff in headless Chromium, through the consoles over real HTTP.

Each role signs in and sees what it may; an operator halts and resumes a rollout; an agent
claims an exception, reads its timeline and resolves it, and the resolution's writeback
reaches the reference core over HTTP. Every page is scanned with axe-core, and the main
pages are photographed at desktop and phone widths into CLOSELOOP_ARTIFACTS (default
artifacts/screenshots) for people to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closeloop.app import Settings, build
from closeloop.app.links import token_from_url
from closeloop.clock import SimClock
from closeloop.connectors.mapping import load_mapping
from closeloop.connectors.reference_core import ReferenceCore
from closeloop.connectors.rest import RestConnector
from closeloop.engine import Status
from closeloop.web import create_api
from tests.browser.conftest import PHONE, serious_violations
from tests.conftest import EXAMPLE, NOW, ROOT
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port

PASSWORD = "a long and memorable passphrase"
STAFF = {"viewer": "vera", "agent": "ana", "operator": "otto", "admin": "adam"}
DESKTOP = {"width": 1280, "height": 900}
SHOTS = Path(os.environ.get("CLOSELOOP_ARTIFACTS", ROOT / "artifacts")) / "screenshots"
PLAN = """
rollout: pilot
version: 1
workflow: failed_payment
promotion: approval
sequential_tuning: 100
stages:
  - name: pilot
    share: 5
    min_duration: 1d
  - name: wider
    share: 50
    min_duration: 1d
    experiment:
      name: first_channel
      arms: [{name: email_first, weight: 1}, {name: sms_first, weight: 1}]
      hypothesis: {baseline: 0.4, minimum_detectable_effect: 0.5}
    gates:
      - {metric: exception_rate, at_most: 0.5}
  - name: everyone
    share: 100
guardrails:
  - {metric: opt_out_rate, above: 0.5}
"""
FACTS = {"date_of_birth": "1980-02-03", "postal_code": "10001"}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A rollout with a few days of cases, some paid, and one locked out for an agent."""
    here = tmp_path_factory.mktemp("console")
    core_engine = sa.create_engine(f"sqlite:///{here / 'core.db'}")
    accounts = [{**ACCOUNT, "account_id": f"A{i}"} for i in range(120)]
    core = ReferenceCore(core_engine, api_key="k", admin_key="admin")
    core.add_accounts(accounts)
    core_served = Served(core.app, free_port())
    patch = pytest.MonkeyPatch()
    patch.setenv("CLOSELOOP_CORE_API_KEY", "k")
    text = (ROOT / "examples" / "connectors" / "reference_core.yaml").read_text()
    rest = RestConnector(load_mapping(text.replace("http://127.0.0.1:8092", core_served.url)))
    clock = SimClock(NOW)
    port = free_port()
    url = f"http://localhost:{port}"
    app = build(Settings(data_dir=here, workflows=[EXAMPLE], public_url=url), clock=clock)
    app.ledger.add_accounts(accounts)
    app.dispatcher.connector = rest
    app.rollouts.start(PLAN, filename="pilot.yaml", actor="staff:otto", reason="pilot begins")
    locked = ""
    for day in range(4):
        if day == 1:  # a day in the pilot: wider
            app.rollouts.promote("pilot", actor="staff:otto", reason="the pilot's gates pass")
        for i in range(day * 30, day * 30 + 30):
            (opened,) = app.runtime.intake([trigger(f"t{i}", account=f"A{i}")])
            case_id = opened.case_id
            if case_id is None or app.runtime.case(case_id).status is not Status.OUTREACH:
                continue
            app.work()
            visit = app.service.redeem(token_from_url(app.service.issue_link(case_id)), key=f"o{i}")
            if i % 3 == 0:  # pays in the message
                app.service.verify_identity(visit.case_id, FACTS, key=f"v{i}")
                values = {"amount": "120.50", "method": "pm_1"}
                app.service.submit(case_id, "pay_now", values, key=f"p{i}")
            elif day >= 2 and not locked and i % 3 == 1:  # cannot confirm who they are
                wrong = {"date_of_birth": "1999-09-09", "postal_code": "99999"}
                for attempt in range(5):
                    if app.runtime.case(case_id).status is Status.EXCEPTION:
                        break
                    app.service.verify_identity(visit.case_id, wrong, key=f"w{i}-{attempt}")
                locked = case_id
        app.work()
        clock.advance(timedelta(days=1))
    assert locked and app.runtime.case(locked).status is Status.EXCEPTION
    for role, name in STAFF.items():
        app.staff.add_user(name, role, password=PASSWORD, name=name.title())
    served = Served(create_api(app), port)
    yield {"app": app, "url": url, "core": core, "locked": locked}
    served.stop()
    app.close()
    rest.close()
    core_served.stop()
    core_engine.dispose()
    patch.undo()


@pytest.fixture
def desktop(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Any, url: str, role: str, next_path: str = "/console") -> None:
    page.goto(f"{url}{next_path}")
    page.wait_for_url(re.compile(r"/console/sign-in"))
    accessible(page)
    page.get_by_label("Username").fill(STAFF[role])
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(next_path) + "$"))


def accessible(page: Any) -> None:
    assert serious_violations(page) == [], page.url


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("role", ["viewer", "agent", "operator", "admin"])
def test_each_role_sees_what_it_may_and_is_refused_the_rest(
    console: dict[str, Any], desktop: Any, role: str
) -> None:
    url = console["url"]
    sign_in(desktop, url, role)
    assert desktop.get_by_text(STAFF[role]).first.is_visible()
    for path, heading in [
        ("/console", "Overview"),
        ("/console/rollouts", "Rollouts"),
        ("/console/rollouts/pilot", "Rollout pilot"),
        ("/console/workflows", "Workflows"),
        ("/console/health", "Channels and connectors"),
    ]:
        answer = desktop.goto(f"{url}{path}")
        assert answer.status == 200, path
        desktop.get_by_role("heading", name=heading, exact=True).wait_for()
        accessible(desktop)
    desktop.goto(f"{url}/console/rollouts/pilot")
    decide = desktop.get_by_role("button", name="Halt")
    assert (decide.count() == 1) is (role in ("operator", "admin"))
    for path in ("/console/exceptions", f"/console/cases/{console['locked']}"):
        answer = desktop.goto(f"{url}{path}")
        if role in ("agent", "operator", "admin"):
            assert answer.status == 200, path
        else:
            assert answer.status == 403, path
            desktop.get_by_role("heading", name="Not allowed").wait_for()
            said = " ".join(desktop.locator("main").inner_text().split())
            assert f"Your role, {role}, may not open this page: it needs the agent role" in said
        accessible(desktop)
    nav = desktop.get_by_role("navigation", name="Console")
    assert (nav.get_by_role("link", name="Exceptions").count() == 1) is (role != "viewer")


def test_screenshots_of_the_consoles_and_the_report(console: dict[str, Any], chromium: Any) -> None:
    url = console["url"]
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = chromium.new_context(viewport=viewport)
        page = context.new_page()
        sign_in(page, url, "admin")
        for path, name in [
            ("/console", "overview"),
            ("/console/rollouts/pilot", "rollout"),
            ("/console/health", "health"),
            ("/console/exceptions", "exceptions"),
            (f"/console/cases/{console['locked']}", "case"),
            ("/console/report", "report"),
        ]:
            page.goto(f"{url}{path}")
            accessible(page)
            if width == "phone":  # nothing wider than the phone but the tables' own scroll
                assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            shoot(page, f"{name}-{width}")
        context.close()
    assert len(list(SHOTS.glob("*.png"))) >= 12


def test_an_operator_halts_and_resumes_the_rollout(console: dict[str, Any], desktop: Any) -> None:
    app, url = console["app"], console["url"]
    sign_in(desktop, url, "operator", "/console/rollouts/pilot")
    desktop.get_by_label("Reason for the decision").fill("complaints from the branch network")
    desktop.get_by_role("button", name="Halt").click()
    desktop.wait_for_url(re.compile(r"/console/rollouts/pilot$"))
    assert app.rollouts.get("pilot").state == "halted"
    log = desktop.get_by_role("table", name="Decisions of rollout pilot")
    assert log.get_by_text("complaints from the branch network").is_visible()
    assert log.get_by_text("staff:otto").count() >= 1
    accessible(desktop)
    desktop.get_by_role("button", name="Promote").click()  # the reason is required first
    assert desktop.evaluate("document.querySelector('#reason').validity.valueMissing")
    desktop.get_by_label("Reason for the decision").fill("the branch issue was a misprint")
    desktop.get_by_role("button", name="Resume").click()
    desktop.wait_for_url(re.compile(r"/console/rollouts/pilot$"))
    assert app.rollouts.get("pilot").state == "running"
    (resume,) = [d for d in app.rollouts.decisions("pilot") if d["action"] == "resume"]
    assert resume["actor"] == "staff:otto" and resume["reason"].startswith("the branch issue")


def test_an_agent_claims_reads_and_resolves_and_the_core_gets_the_payment(
    console: dict[str, Any], desktop: Any
) -> None:
    app, url, core, case_id = console["app"], console["url"], console["core"], console["locked"]
    before = core.ledger()["effects"]
    sign_in(desktop, url, "agent", "/console/exceptions")
    queue = desktop.get_by_role("table", name="Open exceptions, the most urgent first")
    assert queue.get_by_text("identity_locked", exact=False).count() >= 1
    desktop.get_by_role("button", name=f"Claim case {case_id}").click()
    desktop.wait_for_url(re.compile(f"/console/cases/{case_id}$"))
    accessible(desktop)
    timeline = desktop.get_by_role("table", name=re.compile("Everything that happened"))
    assert timeline.get_by_text("identity_failed").count() >= 3
    assert timeline.get_by_text("message_sent").count() >= 1
    desktop.get_by_label("Outcome", exact=True).select_option("pay_now")
    desktop.get_by_label(re.compile("Amount")).fill("120.50")
    desktop.get_by_label("What was agreed with the customer").fill(
        "called the customer, confirmed identity by phone, paid in full with card on file"
    )
    desktop.get_by_role("button", name="Resolve and write back").click()
    desktop.wait_for_url(re.compile(f"/console/cases/{case_id}$"))
    assert app.runtime.case(case_id).status is Status.WRITING_BACK
    app.dispatcher.run_writebacks()  # the worker's next round
    desktop.reload()
    desktop.get_by_role("heading", name="Resolved").wait_for()
    accessible(desktop)
    assert app.runtime.case(case_id).status is Status.RESOLVED
    assert core.ledger()["effects"] > before  # the payment reached the reference core
    with app.store.read() as tx:
        (submitted,) = [h for h in tx.history(case_id) if h["kind"] == "outcome_submitted"]
    assert submitted["actor"] == "staff:ana"
