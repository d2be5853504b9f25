"""A customer on a phone, in headless Chromium, through the mini-app over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, TriggerIn, build
from closeloop.clock import SimClock
from closeloop.connectors.card_sandbox import CardSandbox
from closeloop.engine import Status
from closeloop.web import create_api
from tests.browser.conftest import serious_violations
from tests.conftest import EXAMPLE, KYC, NOW
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def served(tmp_path: Path, clock: SimClock) -> Iterator[tuple[App, str]]:
    port = free_port()
    url = f"http://localhost:{port}"
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cards.db'}")
    cards = Served(CardSandbox(engine, allowed_origins=[url], api_key="k").app, free_port())
    settings = Settings(
        data_dir=tmp_path,
        workflows=[EXAMPLE, KYC],
        public_url=url,
        brand_name="Acme Card",
        card_fields_url=cards.url,  # 127.0.0.1: another origin than localhost
        card_api_key="k",
    )
    app = build(settings, clock=clock)
    app.ledger.add_accounts(
        [ACCOUNT, {**ACCOUNT, "account_id": "A2", "first_name": "Lucía", "locale": "es"}]
    )
    server = Served(create_api(app), port)
    yield app, url
    server.stop()
    app.close()
    cards.stop()
    engine.dispose()


def case_and_link(
    app: App, amount: str = "120.50", account: str = "A1", ident: str = "t1"
) -> tuple[str, str]:
    (result,) = app.runtime.intake([trigger(ident, account=account, amount=amount)])
    assert result.case_id is not None
    return result.case_id, app.service.issue_link(result.case_id, "sms")


def kyc_case(app: App, ident: str) -> str:
    due = {"account_id": "A1", "due_date": "2026-04-01"}
    (result,) = app.runtime.intake([TriggerIn(id=ident, type="kyc.refresh_due", data=due)])
    assert result.case_id is not None
    return result.case_id


def link_for(app: App, amount: str = "120.50", account: str = "A1", ident: str = "t1") -> str:
    return case_and_link(app, amount, account, ident)[1]


def accessible(page: Any) -> None:
    assert serious_violations(page) == [], page.url


def open_and_verify(page: Any, link: str, dob: str = "1980-02-03") -> None:
    page.goto(link)
    accessible(page)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(re.compile(r"/m$"))
    accessible(page)
    page.get_by_label("Date of birth").fill(dob)
    page.get_by_label("ZIP code").fill("10001")
    page.get_by_role("button", name="Confirm").click()


def test_paying_in_part_on_a_phone(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app)
    open_and_verify(phone, link)
    assert phone.get_by_text("Amount due: $120.50").is_visible()
    accessible(phone)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    phone.get_by_label(re.compile("Amount to pay")).fill("60.00")
    phone.get_by_role("button", name="Pay").click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    accessible(phone)
    assert re.search(r"CL-[0-9A-F]{4}-[0-9A-F]{4}", phone.content())
    assert app.runtime.case(case_id).status is Status.WRITING_BACK


def test_wrong_facts_until_the_lock(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    open_and_verify(phone, link_for(app), dob="1999-09-09")
    alert = phone.get_by_role("alert")
    assert "Attempts left: 2." in alert.inner_text()
    assert phone.get_by_label("Date of birth").get_attribute("aria-invalid") == "true"
    accessible(phone)
    for _ in range(2):
        phone.get_by_label("Date of birth").fill("1999-09-09")
        phone.get_by_label("ZIP code").fill("10001")
        phone.get_by_role("button", name="Confirm").click()
    phone.get_by_role("heading", name="We could not confirm it is you").wait_for()
    accessible(phone)


def test_a_large_payment_with_a_one_time_code(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    open_and_verify(phone, link_for(app, amount="900.00"))
    phone.get_by_label(re.compile("Amount to pay")).fill("900.00")
    phone.get_by_role("button", name="Pay").click()
    phone.get_by_role("heading", name="Enter the code we sent you").wait_for()
    accessible(phone)
    (sms,) = [m for m in app.sink.delivered_after(0) if "code is" in m["body"]]
    code = re.findall(r"\b\d{6}\b", sms["body"])[0]
    phone.get_by_label("6-digit code").fill(code)
    phone.get_by_role("button", name=re.compile("Confirm the payment")).click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()


def test_wrong_codes_until_the_lock(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app, amount="900.00", ident="t-codes")
    open_and_verify(phone, link)
    phone.get_by_label(re.compile("Amount to pay")).fill("900.00")
    phone.get_by_role("button", name="Pay", exact=True).click()
    phone.get_by_role("heading", name="Enter the code we sent you").wait_for()
    (sms,) = [m for m in app.sink.delivered_after(0) if m["case_id"] == case_id]
    code = int(re.findall(r"\b\d{6}\b", sms["body"])[0])
    wrong = f"{(code + 1) % 10**6:06d}"
    for left in (4, 3, 2, 1):
        phone.get_by_label("6-digit code").fill(wrong)
        phone.get_by_role("button", name=re.compile("Confirm the payment")).click()
        phone.get_by_text(f"That code is not right. Attempts left: {left}.").wait_for()
        assert phone.get_by_label("6-digit code").get_attribute("aria-invalid") == "true"
    accessible(phone)
    phone.get_by_label("6-digit code").fill(wrong)
    phone.get_by_role("button", name=re.compile("Confirm the payment")).click()
    phone.get_by_role("heading", name="We could not confirm it is you").wait_for()
    accessible(phone)
    assert app.runtime.case(case_id).status is Status.EXCEPTION


def test_an_expired_link_and_a_double_tap(
    served: tuple[App, str], phone: Any, clock: SimClock
) -> None:
    app, _ = served
    stale = link_for(app, ident="t-old")
    clock.advance(timedelta(hours=73))
    phone.goto(stale)
    phone.get_by_role("button", name="Continue").click()
    phone.get_by_role("heading", name="This link does not work").wait_for()
    accessible(phone)
    case_id, link = case_and_link(app, ident="t-new")
    open_and_verify(phone, link)
    phone.get_by_label(re.compile("Amount to pay")).fill("120.50")
    phone.get_by_role("button", name="Pay").dblclick()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    with app.store.read() as tx:
        kinds = [h["kind"] for h in tx.history(case_id)]
    assert kinds.count("outcome_submitted") == 1


def test_a_spanish_customer_reads_spanish(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    phone.goto(link_for(app, account="A2", ident="t-es"))
    phone.get_by_role("button", name="Continue").click()
    phone.get_by_role("heading", name="Primero, confirme que es usted").wait_for()
    assert phone.get_attribute("html", "lang") == "es"
    accessible(phone)


def test_a_new_card_typed_into_the_providers_frame(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app, ident="t-card")
    open_and_verify(phone, link)
    fields = phone.frame_locator("iframe.card-fields")
    fields.get_by_label("Card number").fill("4242 4242 4242 4242")
    fields.get_by_label("Expiry (MM/YY)").fill("12/39")
    fields.get_by_label("Security code").fill("123")
    fields.get_by_role("button", name="Save card").click()
    phone.get_by_role("heading", name="Your new card").wait_for()
    assert "ending 4242" in phone.content()
    accessible(phone)
    phone.get_by_role("button", name="Use this card").click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    assert app.runtime.case(case_id).outcome == "card_updated"


def test_paying_with_a_new_card_on_a_phone(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app, ident="t-pay-card")
    open_and_verify(phone, link)
    assert phone.get_by_label("Visa card ending 4242, expires 08/28").is_checked()
    phone.get_by_label(re.compile("Amount to pay")).fill("50.00")
    phone.get_by_label("A new card").check()
    phone.get_by_role("button", name="Pay", exact=True).click()
    phone.get_by_role("heading", name="Pay with your new card").wait_for()
    accessible(phone)
    fields = phone.frame_locator("iframe.card-fields")
    fields.get_by_label("Card number").fill("4242 4242 4242 4242")
    fields.get_by_label("Expiry (MM/YY)").fill("12/39")
    fields.get_by_label("Security code").fill("123")
    fields.get_by_role("button", name="Save card").click()
    phone.get_by_text(re.compile(r"Pay \$50\.00 with the visa card ending 4242")).wait_for()
    accessible(phone)
    phone.get_by_role("button", name="Pay", exact=True).click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    submission = app.runtime.case(case_id).submission
    assert submission["amount"] == "50.00" and str(submission["token_ref"]).startswith("tok_")


def test_telling_us_something_is_wrong(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app, ident="t-dispute")
    open_and_verify(phone, link)
    phone.get_by_label(re.compile("Tell us what is wrong")).fill("Not my charge")
    phone.get_by_role("button", name="Ask a person to look at it").click()
    phone.get_by_role("heading", name="A person will look at this").wait_for()
    accessible(phone)
    assert app.runtime.case(case_id).status is Status.EXCEPTION


def test_an_attestation_read_and_confirmed(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id = kyc_case(app, "k1")
    open_and_verify(phone, app.service.issue_link(case_id, "email"))
    assert "true, complete and current" in phone.get_by_role("blockquote").inner_text()
    accessible(phone)
    confirm = phone.get_by_role("button", name="Confirm the statement")
    confirm.click()  # not ticked: told what to do
    assert "Tick the box" in phone.get_by_role("alert").inner_text()
    phone.get_by_label("I have read this statement and I confirm it").check()
    confirm.click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    assert app.runtime.case(case_id).outcome == "attested"


def test_a_payment_plan_on_a_phone(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id, link = case_and_link(app, ident="t-plan")
    open_and_verify(phone, link)
    phone.get_by_label("3 payments of about $40.17").check()
    phone.get_by_label("How often").select_option("monthly")
    phone.get_by_role("button", name="Review the plan").click()
    phone.get_by_role("heading", name="Your payment plan").wait_for()
    assert phone.get_by_role("row").count() == 4  # a header and three payments
    accessible(phone)
    phone.get_by_role("button", name="Agree to this plan").click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    assert app.runtime.case(case_id).outcome == "arranged"


def test_correcting_details_on_a_phone(served: tuple[App, str], phone: Any) -> None:
    app, _ = served
    case_id = kyc_case(app, "k2")
    open_and_verify(phone, app.service.issue_link(case_id, "sms"))
    accessible(phone)
    phone.get_by_label("Email").fill("ana.new@example.com")
    phone.get_by_role("button", name="Confirm these details").click()
    phone.get_by_role("heading", name="Enter the code we sent you").wait_for()
    accessible(phone)
    (sms,) = [m for m in app.sink.delivered_after(0) if "code is" in m["body"]]
    phone.get_by_label("6-digit code").fill(re.findall(r"\b\d{6}\b", sms["body"])[0])
    phone.get_by_role("button", name="Confirm", exact=True).click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    assert app.runtime.case(case_id).submission["email"] == "ana.new@example.com"


def test_sending_a_document_from_a_phone(
    served: tuple[App, str], phone: Any, tmp_path: Path
) -> None:
    app, _ = served
    case_id = kyc_case(app, "k3")
    open_and_verify(phone, app.service.issue_link(case_id, "email"))
    wrong = tmp_path / "photo.png"
    wrong.write_bytes(b"GIF89a" + b"\0" * 64)
    phone.get_by_label("Your document").set_input_files(str(wrong))
    phone.get_by_role("button", name="Send the document").click()
    assert "not one we take" in phone.get_by_role("alert").inner_text()
    assert phone.get_by_label("Your document").get_attribute("aria-invalid") == "true"
    accessible(phone)
    proof = tmp_path / "proof.pdf"
    proof.write_bytes(b"%PDF-1.4\n%%EOF\n")
    phone.get_by_label("Your document").set_input_files(str(proof))
    phone.get_by_role("button", name="Send the document").click()
    phone.get_by_role("heading", name="Thank you, it is done").wait_for()
    assert app.runtime.case(case_id).outcome == "document_received"
