"""The mini-app over HTTP: links, sessions, identity, options and outcomes."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, TriggerIn, build
from closeloop.app.bootstrap import identity_key
from closeloop.app.documents import EICAR
from closeloop.clock import SimClock
from closeloop.engine import Status
from closeloop.errors import InputError
from closeloop.web import create_api
from closeloop.web.cards import RedactCardNumbers, has_card_number, luhn
from closeloop.web.miniapp import COOKIE
from tests.conftest import EXAMPLE, KYC, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger

RIGHT = {"date_of_birth": "1980-02-03", "postal_code": "10001"}
WRONG = {"date_of_birth": "1980-02-04", "postal_code": "10001"}


@pytest.fixture
def clock() -> SimClock:
    return SimClock(NOW)


@pytest.fixture
def app(database_url: str, tmp_path: Path, clock: SimClock) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        workflows=[EXAMPLE],
        public_url="https://pay.example",
        brand_name="Acme Card",
    )
    built = build(settings, clock=clock)
    built.ledger.add_accounts(
        [ACCOUNT, {**ACCOUNT, "account_id": "A2", "first_name": "Lucía", "locale": "es"}]
    )
    yield built
    built.close()


def browser(app: App) -> TestClient:
    return TestClient(create_api(app), base_url="https://pay.example", follow_redirects=False)


def opened(app: App, account: str = "A1", trigger_id: str = "t1") -> tuple[str, str]:
    (result,) = app.runtime.intake([trigger(trigger_id, account=account)])
    assert result.case_id is not None
    return result.case_id, app.service.issue_link(result.case_id, "sms")


def path(link: str) -> str:
    return link.removeprefix("https://pay.example")


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page
    return found.group(1)


def signed_in(app: App, client: TestClient, link: str) -> str:
    """Open the link, pass identity; return the options page."""
    assert client.post(path(link)).status_code == 303
    page = client.get("/m").text
    assert client.post("/m/identity", data={**RIGHT, "csrf": csrf(page)}).status_code == 303
    return client.get("/m").text


def history(app: App, case_id: str) -> list[dict[str, object]]:
    with app.store.read() as tx:
        return tx.history(case_id)


def test_a_get_never_uses_the_link_nor_tells_if_it_is_good(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    good, bogus = client.get(path(link)), client.get("/m/not-a-real-token-at-all")
    assert good.status_code == bogus.status_code == 200
    assert good.text.replace(path(link), "X") == bogus.text.replace(
        "/m/not-a-real-token-at-all", "X"
    )
    assert "Ana" not in good.text and "120.50" not in good.text
    assert [h["kind"] for h in history(app, case_id)].count("link_opened") == 0
    assert client.post(path(link)).status_code == 303  # still unused after the GETs


def test_the_post_uses_the_link_once_and_sets_a_host_cookie(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    answer = client.post(path(link))
    assert answer.status_code == 303 and answer.headers["location"] == "/m"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "Path=/", "SameSite=lax"):
        assert attribute.lower() in cookie.lower()
    assert "domain=" not in cookie.lower()  # __Host-: no Domain
    assert [h["kind"] for h in history(app, case_id)].count("link_opened") == 1


def test_unknown_expired_and_used_links_answer_alike(app: App, clock: SimClock) -> None:
    _, used = opened(app, trigger_id="t1")
    _, expiring = opened(app, trigger_id="t2")
    client = browser(app)
    assert client.post(path(used)).status_code == 303
    clock.advance(timedelta(hours=73))  # past the 72 h lifetime
    stranger = browser(app)  # no session: a double tap would be sent to its page
    stranger.post("/m/warm-up-token")  # the first failure also compiles its page
    answers, took = [], []
    for link in (used, expiring, "https://pay.example/m/never-issued-token"):
        started = time.monotonic()
        answers.append(stranger.post(path(link)))
        took.append(time.monotonic() - started)
    assert {a.status_code for a in answers} == {404}
    assert len({a.text for a in answers}) == 1
    assert app.settings.link_failure_floor_seconds == 0.25
    assert min(took) >= 0.25 and max(took) - min(took) < 0.2


def test_before_identity_only_a_masked_greeting_shows(app: App) -> None:
    _, link = opened(app)
    client = browser(app)
    client.post(path(link))
    page = client.get("/m")
    assert page.status_code == 200
    assert "A***" in page.text and "Ana" not in page.text
    assert "120.50" not in page.text and "Pay now" not in page.text
    assert 'autocomplete="bday"' in page.text and 'for="date_of_birth"' in page.text


def test_wrong_facts_never_say_which_and_lock_after_three(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    client.post(path(link))
    token = csrf(client.get("/m").text)
    texts = []
    for left in (2, 1):
        answer = client.post("/m/identity", data={**WRONG, "csrf": token})
        assert answer.status_code == 422
        assert f"Attempts left: {left}." in answer.text
        assert "date" not in answer.text.split('role="alert">')[1].split("</p>")[0].lower()
        texts.append(answer.text)
    locked = client.post("/m/identity", data={**WRONG, "csrf": token})
    assert locked.status_code == 403 and "could not confirm it is you" in locked.text
    case = app.runtime.case(case_id)
    assert case.status is Status.EXCEPTION
    kinds = [h["kind"] for h in history(app, case_id)]
    assert kinds.count("identity_failed") == 3  # every attempt is in the history
    assert client.get("/m").status_code == 401  # the session ended with the lock


def test_passing_identity_starts_a_new_session(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    client.post(path(link))
    before = client.cookies.get(COOKIE)
    page = client.get("/m").text
    answer = client.post("/m/identity", data={**RIGHT, "csrf": csrf(page)})
    assert answer.status_code == 303
    after = client.cookies.get(COOKIE)
    assert after and after != before
    options = client.get("/m")
    assert "Ana" in options.text and "$120.50" in options.text
    stale = browser(app)
    stale.cookies.set(COOKIE, before or "", domain="pay.example")
    assert stale.get("/m").status_code == 401  # the id from before verification is dead
    assert [h["kind"] for h in history(app, case_id)].count("identity_passed") == 1


def test_a_form_without_the_sessions_csrf_token_changes_nothing(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    client.post(path(link))
    answer = client.post("/m/identity", data={**RIGHT, "csrf": "forged"})
    assert answer.status_code == 403 and "out of date" in answer.text
    assert not [h for h in history(app, case_id) if str(h["kind"]).startswith("identity_")]
    page = signed_in(app, browser(app), app.service.issue_link(case_id, "sms"))
    assert "Pay now" in page


def test_paying_within_bounds_resolves_once_even_when_submitted_twice(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    form = {
        "csrf": csrf(page),
        "nonce": field(page, "nonce"),
        "option": "pay_now",
        "method": "pm_1",
    }
    low = client.post("/m/submit", data={**form, "amount": "1.00"})
    assert low.status_code == 422 and "from $30.13 to $120.50" in low.text
    assert 'aria-invalid="true"' in low.text
    first = client.post("/m/submit", data={**form, "amount": "100.00"})
    again = client.post("/m/submit", data={**form, "amount": "100.00"})  # a double tap
    assert first.status_code == again.status_code == 303
    done = client.get("/m")
    assert "it is done" in done.text and re.search(r"CL-[0-9A-F]{4}-[0-9A-F]{4}", done.text)
    submitted = [h for h in history(app, case_id) if h["kind"] == "outcome_submitted"]
    assert len(submitted) == 1
    assert app.runtime.case(case_id).status is Status.WRITING_BACK


def big_payment(app: App, trigger_id: str = "t9") -> tuple[str, TestClient, dict[str, str]]:
    """A case owing 900.00, signed in, with a payment of 900.00 asked for."""
    (result,) = app.runtime.intake([trigger(trigger_id, amount="900.00")])
    assert result.case_id is not None
    client = browser(app)
    page = signed_in(app, client, app.service.issue_link(result.case_id, "sms"))
    form = {
        "csrf": csrf(page),
        "nonce": field(page, "nonce"),
        "option": "pay_now",
        "method": "pm_1",
    }
    asked = client.post("/m/submit", data={**form, "amount": "900.00"})
    assert asked.status_code == 200 and "•••• 0123" in asked.text
    assert 'autocomplete="one-time-code"' in asked.text
    return result.case_id, client, {**form, "amount": "900.00"}


def codes_sent(app: App, case_id: str) -> list[str]:
    return [
        re.findall(r"\b\d{6}\b", m["body"])[0]
        for m in app.sink.delivered_after(0)
        if m["case_id"] == case_id and "code is" in m["body"]
    ]


def test_a_large_payment_needs_a_one_time_code_sent_to_the_phone_on_file(app: App) -> None:
    case_id, client, form = big_payment(app)
    (sms,) = [m for m in app.sink.delivered_after(0) if "code is" in m["body"]]
    assert (sms["channel"], sms["address"]) == ("sms", "+12125550123")
    (code,) = codes_sent(app, case_id)
    with app.store.read() as tx:  # only a keyed hash of it is kept
        stored = tx.c.execute(sa.text("SELECT code_hash FROM one_time_codes")).scalar_one()
    assert len(stored) == 64 and code not in stored
    before = client.cookies.get(COOKIE)
    paid = client.post("/m/code", data={**form, "code": code})
    assert paid.status_code == 303 and client.cookies.get(COOKIE) != before
    assert "it is done" in client.get("/m").text
    case = app.runtime.case(case_id)
    assert case.status is Status.WRITING_BACK and case.identity_level == "one_time_code"
    passed = [h for h in history(app, case_id) if h["kind"] == "identity_passed"]
    assert [p["data"]["method"] for p in passed] == ["known_facts", "one_time_code"]  # type: ignore[index]


def test_five_wrong_codes_lock_the_case(app: App) -> None:
    case_id, client, form = big_payment(app)
    (code,) = codes_sent(app, case_id)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for left in (4, 3, 2, 1):
        answer = client.post("/m/code", data={**form, "code": wrong})
        assert answer.status_code == 422 and f"Attempts left: {left}." in answer.text
        assert "•••• 0123" in answer.text
    locked = client.post("/m/code", data={**form, "code": wrong})
    assert locked.status_code == 403
    assert app.runtime.case(case_id).status is Status.EXCEPTION
    failed = [h for h in history(app, case_id) if h["kind"] == "identity_failed"]
    assert len(failed) == 5
    assert client.post("/m/code", data={**form, "code": code}).status_code == 401


def test_codes_expire_work_once_and_their_sends_are_capped(app: App, clock: SimClock) -> None:
    case_id, client, form = big_payment(app)
    (first,) = codes_sent(app, case_id)
    clock.advance(timedelta(minutes=11))
    late = client.post("/m/code", data={**form, "code": first})
    assert late.status_code == 422 and "not right" in late.text
    for sent in (2, 3):
        again = client.post("/m/code/new", data=form)
        assert again.status_code == 200 and "We sent a new code" in again.text
        assert len(codes_sent(app, case_id)) == sent
    capped = client.post("/m/code/new", data=form)
    assert capped.status_code == 429 and "too many codes" in capped.text
    assert len(codes_sent(app, case_id)) == 3
    newest = codes_sent(app, case_id)[-1]
    assert app.service.check_code(case_id, newest, key="first")
    assert not app.service.check_code(case_id, newest, key="second")  # a code works once


def test_sessions_end_after_30_idle_minutes_and_after_12_hours(app: App, clock: SimClock) -> None:
    _, link = opened(app)
    client = browser(app)
    signed_in(app, client, link)
    clock.advance(timedelta(minutes=29))
    assert client.get("/m").status_code == 200
    clock.advance(timedelta(minutes=31))
    assert client.get("/m").status_code == 401
    _, link = opened(app, trigger_id="t2")
    client = browser(app)
    started = clock.now()
    signed_in(app, client, link)
    seen = []
    for _ in range(12 * 3 + 1):  # busy all the time, 20 minutes apart
        clock.advance(timedelta(minutes=20))
        seen.append((clock.now() - started, client.get("/m").status_code))
    assert all(code == 200 for took, code in seen if took <= timedelta(hours=12))
    assert all(code == 401 for took, code in seen if took > timedelta(hours=12))


def test_pages_with_personal_data_are_not_stored_nor_referred(app: App) -> None:
    _, link = opened(app)
    client = browser(app)
    signed_in(app, client, link)
    page = client.get("/m")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    policy = page.headers["content-security-policy"]
    for directive in ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"):
        assert directive in policy
    assert "<script" not in page.text


def test_a_spanish_customer_gets_spanish_pages(app: App) -> None:
    _, link = opened(app, account="A2", trigger_id="t5")
    client = browser(app)
    client.post(path(link))
    page = client.get("/m").text
    assert '<html lang="es">' in page and "confirme que es usted" in page
    assert "L***" in page
    options = signed_in(app, browser(app), app.service.issue_link(opened(app, "A2", "t6")[0]))
    assert "Pagar ahora" in options


def test_card_numbers_are_refused_everywhere_and_kept_out_of_logs(app: App) -> None:
    client = browser(app)
    body = {"id": "t1", "type": "payment.failed", "data": {"note": "card 4111 1111 1111 1111"}}
    refused = client.post("/v1/triggers", json=body)
    assert refused.status_code == 400 and "4111" not in refused.text
    assert client.get("/m/x", params={"q": "4111-1111-1111-1111"}).status_code == 400
    assert client.get("/m/4111111111111111").status_code == 400
    assert client.post("/m/identity", data={"postal_code": "4111111111111111"}).status_code == 400
    not_a_card = client.get("/m/x", params={"q": "4111111111111112"})  # fails Luhn
    assert not_a_card.status_code == 200
    text = client.get("/metrics", headers=bearer(app, "viewer")).text
    assert 'closeloop_card_numbers_refused_total{where="body"} 2.0' in text
    assert 'closeloop_card_numbers_refused_total{where="query"} 1.0' in text
    assert 'closeloop_card_numbers_refused_total{where="path"} 1.0' in text
    record = logging.LogRecord(
        "uvicorn.access", 20, "", 0, '%s "%s"', ("1.2.3.4", "GET /m/4111111111111111"), None
    )
    RedactCardNumbers().filter(record)
    assert "4111111111111111" not in record.getMessage()
    assert luhn("79927398713") and not luhn("79927398710")
    assert has_card_number("5500 0000 0000 0004") and not has_card_number("2026-03-02 15:00")
    assert has_card_number("card4111111111111111") and has_card_number("tok_4111111111111111x")
    # A provider's identifier holds digit runs by chance (this SID holds a Luhn-valid 16):
    # a Twilio webhook carrying it is not refused; the same digits on their own are.
    sid = "SMab4242424242424242cdef0123456789ab"
    assert not has_card_number(f"MessageSid={sid}&Body=STOP")
    assert has_card_number("Body=my card is 4242424242424242 thanks")


def test_the_identity_key_is_made_once_and_bad_keys_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = identity_key(settings)
    assert len(first) == 32 and identity_key(settings) == first
    key_file = tmp_path / "keys" / "identity.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(InputError, match="64 hexadecimal digits"):
        identity_key(Settings(data_dir=tmp_path, identity_key="abc"))
    given = "ab" * 32
    assert identity_key(Settings(data_dir=tmp_path, identity_key=given)) == bytes.fromhex(given)


@pytest.fixture
def kyc(database_url: str, tmp_path: Path, clock: SimClock) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        workflows=[EXAMPLE, KYC],
        public_url="https://pay.example",
    )
    built = build(settings, clock=clock)
    built.ledger.add_accounts([ACCOUNT])
    yield built
    built.close()


def test_an_attestation_records_the_exact_statement_version(kyc: App) -> None:
    (result,) = kyc.runtime.intake(
        [
            TriggerIn(
                id="k1", type="kyc.refresh_due", data={"account_id": "A1", "due_date": "2026-04-01"}
            )
        ]
    )
    assert result.case_id is not None
    client = browser(kyc)
    page = signed_in(kyc, client, kyc.service.issue_link(result.case_id, "email"))
    assert "true, complete and current" in page and 'type="checkbox"' in page
    form = {
        "csrf": csrf(page),
        "nonce": field(page, "nonce"),
        "option": "attestation",
        "statement_version": field(page, "statement_version"),
    }
    unticked = client.post("/m/submit", data=form)
    assert unticked.status_code == 422 and "Tick the box" in unticked.text
    stale = client.post(
        "/m/submit", data={**form, "accepted": "yes", "statement_version": "kyc-2019"}
    )
    assert stale.status_code == 422 and "read it again" in stale.text
    done = client.post("/m/submit", data={**form, "accepted": "yes"})
    assert done.status_code == 303 and "it is done" in client.get("/m").text
    case = kyc.runtime.case(result.case_id)
    assert case.outcome == "attested" and case.status is Status.WRITING_BACK
    (submitted,) = [h for h in history(kyc, result.case_id) if h["kind"] == "outcome_submitted"]
    evidence = submitted["data"]["evidence"]  # type: ignore[index]
    assert evidence["attestation_text_version"] == "kyc-declaration-2026-01"
    assert evidence["identity_level"] == "known_facts" and evidence["submitted_at"]


def test_a_payment_plan_is_reviewed_then_agreed(app: App, clock: SimClock) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    assert "Pay in instalments" in page and "6 payments of about $20.08" in page
    form = {"csrf": csrf(page), "nonce": field(page, "nonce")}
    today = clock.now().date()
    late = {
        **form,
        "instalments": "3",
        "frequency": "monthly",
        "first_date": (today + timedelta(days=15)).isoformat(),
    }
    refused = client.post("/m/plan", data=late)
    assert refused.status_code == 422 and "a first date from" in refused.text
    assert client.post("/m/plan", data={**late, "instalments": "5"}).status_code == 422
    chosen = {**late, "first_date": (today + timedelta(days=3)).isoformat()}
    review = client.post("/m/plan", data=chosen)
    assert review.status_code == 200
    assert review.text.count("$40.16") == 2 and "$40.18" in review.text
    assert app.runtime.case(case_id).status is not Status.WRITING_BACK  # reviewing changes nothing
    agreed = client.post("/m/submit", data={**chosen, "option": "arrangement"})
    assert agreed.status_code == 303 and "it is done" in client.get("/m").text
    case = app.runtime.case(case_id)
    assert case.outcome == "arranged"
    plan = case.submission["schedule"]
    assert [p["amount"] for p in plan] == ["40.16", "40.16", "40.18"]  # type: ignore[index]
    with app.store.read() as tx:
        (row,) = tx.c.execute(
            sa.text("SELECT payload FROM outbox WHERE kind = 'writeback' ORDER BY id LIMIT 1")
        ).fetchall()
    assert "40.18" in str(row[0])  # the schedule goes to the system of record


def test_details_are_checked_and_a_new_phone_needs_a_code(kyc: App) -> None:
    due = {"account_id": "A1", "due_date": "2026-04-01"}
    (result,) = kyc.runtime.intake([TriggerIn(id="k2", type="kyc.refresh_due", data=due)])
    assert result.case_id is not None
    client = browser(kyc)
    page = signed_in(kyc, client, kyc.service.issue_link(result.case_id, "email"))
    assert 'value="ana@example.com"' in page and 'value="+12125550123"' in page
    form = {"csrf": csrf(page), "nonce": field(page, "nonce"), "option": "confirm_details"}
    kept = {"email": "ana@example.com", "phone": "+12125550123"}
    bad = client.post("/m/submit", data={**form, **kept, "phone": "555"})
    assert bad.status_code == 422 and "phone number is not valid" in bad.text
    half = client.post("/m/submit", data={**form, **kept, "line1": "1 Main St"})
    assert half.status_code == 422 and "needs a street, a city" in half.text
    new = {
        **form,
        **kept,
        "phone": "(646) 555-0199",
        "line1": "1 Main St",
        "city": "Albany",
        "state": "ny",
        "postal_code": "12207",
    }
    asked = client.post("/m/submit", data=new)
    assert asked.status_code == 200 and "a•••@example.com" in asked.text  # to the email on file
    assert "change where we reach you" in asked.text
    (code,) = codes_sent(kyc, result.case_id)
    done = client.post("/m/code", data={**new, "code": code})
    assert done.status_code == 303 and "it is done" in client.get("/m").text
    case = kyc.runtime.case(result.case_id)
    assert case.outcome == "details_updated"
    assert case.submission["phone"] == "+16465550199" and case.submission["state"] == "NY"
    assert case.submission["changed"] == ["phone"]


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


def test_documents_are_checked_kept_out_of_reach_and_scanned(kyc: App, tmp_path: Path) -> None:
    due = {"account_id": "A1", "due_date": "2026-04-01"}
    (result,) = kyc.runtime.intake([TriggerIn(id="k3", type="kyc.refresh_due", data=due)])
    assert result.case_id is not None
    client = browser(kyc)
    page = signed_in(kyc, client, kyc.service.issue_link(result.case_id, "email"))
    assert 'enctype="multipart/form-data"' in page and "PDF, JPEG, PNG, up to 5 MB" in page
    form = {"csrf": csrf(page), "nonce": field(page, "nonce")}
    folder = tmp_path / "documents"

    def send(content: bytes, name: str = "proof.pdf", data: dict[str, str] = form) -> object:
        return client.post(
            "/m/upload", data=data, files={"file": (name, content, "application/pdf")}
        )

    gif = send(b"GIF89a" + b"\0" * 100, name="proof.pdf")  # its name says PDF; its bytes do not
    assert gif.status_code == 415 and "send a PDF, JPEG, PNG" in gif.text
    big = send(PDF + b"0" * (5 * 1024 * 1024))
    assert big.status_code == 413 and "larger than 5 MB" in big.text
    forged = send(PDF, data={**form, "csrf": "forged"})
    assert forged.status_code == 403
    broken = client.post(
        "/m/upload",
        content=b"--xyz\r\nno headers here\r\n\r\n%PDF-",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken.status_code == 400
    eicar = send(PDF + b"\n" + EICAR)
    assert eicar.status_code == 422 and "security check" in eicar.text
    assert list((folder / "incoming").iterdir()) == []  # nothing refused is left behind
    done = send(PDF)
    assert done.status_code == 303 and "it is done" in client.get("/m").text
    case = kyc.runtime.case(result.case_id)
    assert case.outcome == "document_received"
    ref = str(case.submission["document_ref"])
    with kyc.store.read() as tx:
        row = tx.document(ref)
        statuses = sorted(
            r[0] for r in tx.c.execute(sa.text("SELECT status FROM documents")).fetchall()
        )
    assert row is not None and row["status"] == "clean" and row["type"] == "pdf"
    assert statuses == ["clean", "infected"]
    kept = folder / "store" / ref
    assert kept.read_bytes() == PDF and "proof" not in ref  # a name the server made
    assert client.get(f"/m/{ref}").status_code == 200  # only the landing page: nothing served
    assert PDF not in client.get(f"/m/{ref}").content


def test_a_fact_the_record_lacks_matches_no_answer(app: App) -> None:
    blank = {
        **ACCOUNT,
        "account_id": "A3",
        "secrets": {"date_of_birth": "1980-02-03", "postal_code": ""},
    }
    app.ledger.add_accounts([blank])
    case_id, link = opened(app, account="A3", trigger_id="t-blank")
    app.service.redeem(link.rsplit("/", 1)[1], key="open")
    answers = {"date_of_birth": "1980-02-03", "postal_code": ""}
    assert not app.service.verify_identity(case_id, answers, key="try-1")


def test_a_payment_uses_a_method_on_file_and_only_one_on_file(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    assert 'value="new"' not in page  # no card provider configured: no new card offered
    form = {"csrf": csrf(page), "nonce": field(page, "nonce"), "option": "pay_now"}
    foreign = client.post("/m/submit", data={**form, "amount": "50.00", "method": "pm_9"})
    assert foreign.status_code == 422 and "not on file" in foreign.text
    paid = client.post("/m/submit", data={**form, "amount": "50.00", "method": "pm_1"})
    assert paid.status_code == 303
    (writeback, *_) = [h for h in history(app, case_id) if h["kind"] == "outcome_submitted"]
    assert app.runtime.case(case_id).submission["method"] == "pm_1"
    assert writeback["data"]["option"] == "pay_now"  # type: ignore[index]


def test_a_refusal_is_explained_in_the_customers_language(app: App) -> None:
    _, link = opened(app, account="A2", trigger_id="t2")  # Lucía reads Spanish
    client = browser(app)
    page = signed_in(app, client, link)
    form = {"csrf": csrf(page), "nonce": field(page, "nonce"), "option": "pay_now"}
    refused = client.post("/m/submit", data={**form, "amount": "50.00", "method": "pm_9"})
    assert refused.status_code == 422
    assert "No pudimos aceptarlo: esa forma de pago no está registrada" in refused.text


def test_a_customer_who_says_something_is_wrong_reaches_a_person(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    form = {"csrf": csrf(page), "nonce": field(page, "nonce")}
    told = client.post("/m/dispute", data={**form, "reason": "Not my   charge\n"})
    assert told.status_code == 200 and "A person will look at this" in told.text
    case = app.runtime.case(case_id)
    assert case.status is Status.EXCEPTION
    (closed,) = [h for h in history(app, case_id) if h["kind"] == "exception"]
    assert closed["reason"] == "disputed: Not my charge" and closed["actor"] == "customer"
    assert client.get("/m").status_code == 401  # the session ended with it
