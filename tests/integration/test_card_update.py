"""Updating a card: the number goes to the provider's hosted fields, closeloop gets a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.card_sandbox import CardSandbox
from closeloop.engine import Status
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_miniapp import browser, csrf, field, opened, signed_in
from tests.integration.test_runtime import ACCOUNT
from tests.servers import Served, free_port

KEY = "card-test-key"


@pytest.fixture
def cards(tmp_path: Path) -> Iterator[str]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cards.db'}")
    sandbox = CardSandbox(engine, allowed_origins=["https://pay.example"], api_key=KEY)
    served = Served(sandbox.app, free_port())
    yield served.url
    served.stop()
    engine.dispose()


@pytest.fixture
def app(database_url: str, tmp_path: Path, cards: str) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        workflows=[EXAMPLE],
        public_url="https://pay.example",
        card_fields_url=cards,
        card_api_key=KEY,
    )
    built = build(settings, clock=SimClock(NOW))
    built.ledger.add_accounts([ACCOUNT])
    yield built
    built.close()


def test_a_new_card_is_saved_by_token_and_confirmed(app: App, cards: str) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    frame = re.search(r'<iframe class="card-fields" src="([^"]+)"', page)
    assert frame, page
    src = frame.group(1).replace("&amp;", "&")
    assert src.startswith(f"{cards}/fields?")
    assert f"frame-src {cards}" in client.get("/m").headers["content-security-policy"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    # Neither the state nor the token is hex, where a run of digits could pass as a card.
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", params["state"])
    form = httpx.get(src)  # what the iframe shows, from the provider's origin
    assert form.status_code == 200 and 'autocomplete="cc-number"' in form.text
    assert "frame-ancestors https://pay.example" in form.headers["content-security-policy"]
    card = {"number": "4242 4242 4242 4242", "expiry": "12/39", "cvc": "123", **params}
    bad = httpx.post(f"{cards}/tokenize", data={**card, "number": "4242 4242 4242 4241"})
    assert bad.status_code == 422 and "not valid" in bad.text
    saved = httpx.post(f"{cards}/tokenize", data=card)
    assert saved.status_code == 303
    back = urlsplit(saved.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "https://pay.example/m/card"
    assert re.fullmatch(r"tok_[A-Za-z0-9]{24}", parse_qs(back.query)["token"][0])
    shown = client.get(f"/m/card?{back.query}")
    assert shown.status_code == 200 and "ending 4242" in shown.text and "12/39" in shown.text
    assert "4242 4242" not in shown.text
    done = client.post(
        "/m/card",
        data={
            "csrf": csrf(shown.text),
            "nonce": field(shown.text, "nonce"),
            "token": field(shown.text, "token"),
        },
    )
    assert done.status_code == 303
    assert "it is done" in client.get("/m").text
    case = app.runtime.case(case_id)
    assert case.status is Status.WRITING_BACK and case.outcome == "card_updated"
    assert str(case.submission["token_ref"]).startswith("tok_")


def test_the_provider_only_sends_customers_back_to_allowed_origins(cards: str) -> None:
    away = httpx.get(
        f"{cards}/fields", params={"return_to": "https://evil.example/x", "state": "s"}
    )
    assert away.status_code == 400
    assert httpx.get(f"{cards}/v1/tokens/tok_abc").status_code == 401


def test_a_token_without_this_sessions_state_is_refused(app: App) -> None:
    _, link = opened(app)
    client = browser(app)
    signed_in(app, client, link)
    forged = client.get("/m/card", params={"token": "tok_0123456789ab", "state": "forged"})
    assert forged.status_code == 403


def test_paying_with_a_new_card_goes_through_the_providers_form(app: App, cards: str) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    assert 'name="method" value="pm_1" checked' in page and 'value="new"' in page
    assert "Visa card ending 4242, expires 08/28" in page
    form = {"csrf": csrf(page), "nonce": field(page, "nonce"), "option": "pay_now"}
    asked = client.post("/m/submit", data={**form, "amount": "50.00", "method": "new"})
    assert asked.status_code == 200 and "Enter the card to pay $50.00" in asked.text
    frame = re.search(r'<iframe class="card-fields" src="([^"]+)"', asked.text)
    assert frame, asked.text
    src = frame.group(1).replace("&amp;", "&")
    params = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    assert params["return_to"] == "https://pay.example/m/pay/50.00"
    card = {"number": "5555 5555 5555 4444", "expiry": "11/38", "cvc": "321", **params}
    saved = httpx.post(f"{cards}/tokenize", data=card)
    back = urlsplit(saved.headers["location"])
    tampered = client.get(f"/m/pay/5.00?{back.query}")  # the state is bound to the amount
    assert tampered.status_code == 403
    shown = client.get(f"{back.path}?{back.query}")
    assert shown.status_code == 200
    assert "Pay $50.00 with the mastercard card ending 4444 (expires 11/38)?" in shown.text
    hidden = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', shown.text))
    assert hidden["method"] == "new" and hidden["token"].startswith("tok_")
    done = client.post("/m/submit", data=hidden)
    assert done.status_code == 303 and "it is done" in client.get("/m").text
    case = app.runtime.case(case_id)
    assert case.submission == {
        "option": "pay_now",
        "amount": "50.00",
        "token_ref": hidden["token"],
    }


def test_a_made_up_token_pays_nothing(app: App) -> None:
    case_id, link = opened(app)
    client = browser(app)
    page = signed_in(app, client, link)
    form = {"csrf": csrf(page), "nonce": field(page, "nonce"), "option": "pay_now"}
    data = {**form, "amount": "50.00", "method": "new", "token": "tok_000000000000"}
    refused = client.post("/m/submit", data=data)
    assert refused.status_code == 422 and "could not find that card" in refused.text
    assert app.runtime.case(case_id).outcome is None
