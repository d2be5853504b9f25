"""Who may call what: the whole route table against the role matrix, sign-in, tokens."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, build
from closeloop.app.staff import ROLES, SignInError
from closeloop.clock import SimClock
from closeloop.errors import InputError, StateError
from closeloop.web import create_api
from closeloop.web.auth import COOKIE, route_table
from tests.conftest import EXAMPLE, NOW

PASSWORD = "a long and memorable passphrase"

# Every route the app answers and who may call it. A new route fails this test until it
# is added here, with a rule the route itself declares (`require` or `public`).
MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "viewer",
    ("POST", "/v1/triggers"): "operator",
    ("GET", "/v1/cases/{case_id}"): "agent",
    ("GET", "/v1/rollouts/{name}"): "viewer",
    ("POST", "/v1/rollouts/{name}/{action}"): "operator",
    ("GET", "/console/assets/console.css"): "public",
    ("GET", "/console/sign-in"): "public",
    ("POST", "/console/sign-in"): "public",
    ("GET", "/console/oidc/start"): "public",
    ("GET", "/console/oidc/callback"): "public",
    ("POST", "/console/sign-out"): "viewer",
    ("GET", "/console"): "viewer",
    ("GET", "/console/rollouts"): "viewer",
    ("GET", "/console/rollouts/{name}"): "viewer",
    ("POST", "/console/rollouts/{name}"): "operator",
    ("GET", "/console/workflows"): "viewer",
    ("GET", "/console/health"): "viewer",
    ("GET", "/console/report"): "viewer",
    ("GET", "/console/exceptions"): "agent",
    ("POST", "/console/exceptions/{exception_id}/{action}"): "agent",
    ("GET", "/console/cases/{case_id}"): "agent",
    ("POST", "/console/cases/{case_id}/{action}"): "agent",
    # The customer's side answers to the link's token and session, the unsubscribe
    # link's token, the provider's signature: never to staff credentials.
    ("GET", "/u/{token}"): "public",
    ("POST", "/u/{token}"): "public",
    ("POST", "/webhooks/twilio/status"): "public",
    ("POST", "/webhooks/twilio/inbound"): "public",
    ("GET", "/m/assets/app.css"): "public",
    ("GET", "/m/assets/brand.css"): "public",
    ("GET", "/m"): "public",
    ("GET", "/m/card"): "public",
    ("POST", "/m/card"): "public",
    ("POST", "/m/upload"): "public",
    ("POST", "/m/identity"): "public",
    ("GET", "/m/pay/{amount}"): "public",
    ("POST", "/m/plan"): "public",
    ("POST", "/m/submit"): "public",
    ("POST", "/m/code"): "public",
    ("POST", "/m/dispute"): "public",
    ("POST", "/m/code/new"): "public",
    ("GET", "/m/{token}"): "public",
    ("POST", "/m/{token}"): "public",
}
FILL = {
    "name": "r1",
    "action": "halt",
    "case_id": "case_x",
    "exception_id": "e1",
    "token": "tok",
    "amount": "10.00",
}


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Any:
    settings = Settings(data_dir=tmp_path, database_url=database_url, workflows=[EXAMPLE])
    built = build(settings, clock=SimClock(NOW))
    yield built
    built.close()


def _routes(app: App) -> dict[tuple[str, str], str | None]:
    table = {}
    for methods, path, rule in route_table(create_api(app).routes):
        for method in methods:
            if method != "HEAD":
                table[(method, path)] = rule
    return table


def test_every_route_declares_its_rule_and_the_matrix_has_them_all(app: App) -> None:
    table = _routes(app)
    assert [route for route, rule in table.items() if rule is None] == []
    assert set(table) == set(MATRIX), "a route was added or removed: update MATRIX"
    assert {route: rule for route, rule in table.items() if rule != MATRIX[route]} == {}


def test_each_rule_is_enforced_for_every_role(app: App) -> None:
    """Anonymous callers are asked to sign in, a role too low is refused (403), and a
    role high enough gets past the check (whatever the route answers then)."""
    client = TestClient(create_api(app), base_url="https://testserver", follow_redirects=False)
    tokens = {role: app.staff.create_token(f"t-{role}", role)[1] for role in ROLES}
    for (method, path), rule in MATRIX.items():
        if rule == "open":
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: FILL[m.group(1)], path)
        anonymous = client.request(method, url)
        if rule == "public":  # it may refuse, but never asks for staff credentials
            assert "www-authenticate" not in anonymous.headers, (method, path)
            assert "this needs" not in anonymous.text, (method, path)
            continue
        if path.startswith("/console") and method == "GET":
            assert anonymous.status_code == 303, (method, path)
            assert anonymous.headers["location"].startswith("/console/sign-in?next=")
        else:
            assert anonymous.status_code == 401, (method, path, anonymous.text)
        for role, token in tokens.items():
            answer = client.request(method, url, headers={"Authorization": f"Bearer {token}"})
            allowed = ROLES.index(role) >= ROLES.index(rule)
            if allowed:
                assert answer.status_code not in (401, 403), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role)


def test_tokens_are_stored_hashed_and_refused_once_revoked_or_expired(app: App) -> None:
    client = TestClient(create_api(app), base_url="https://testserver")
    token_id, token = app.staff.create_token("core-events", "viewer")
    with app.store.read() as tx:
        stored = tx.api_token(token_id)
    assert stored is not None and token.split(".")[2] not in str(stored)
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/metrics", headers=auth).status_code == 200
    tampered = {"Authorization": f"Bearer {token[:-2]}xx"}
    assert client.get("/metrics", headers=tampered).status_code == 401
    app.staff.revoke_token(token_id)
    assert client.get("/metrics", headers=auth).status_code == 401
    _, brief = app.staff.create_token("brief", "viewer", expires_in=timedelta(hours=1))
    assert client.get("/metrics", headers={"Authorization": f"Bearer {brief}"}).status_code == 200
    app.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {brief}"}).status_code == 401
    with app.store.read() as tx:
        audit = tx.audit_between(NOW, NOW + timedelta(days=1))
    assert [a["action"] for a in audit if a["outcome"] == "failure"] == ["token_use"] * 3


def test_passwords_are_checked_hashed_with_argon2_and_lock_after_five_failures(app: App) -> None:
    with pytest.raises(InputError, match="at least 15"):
        app.staff.add_user("ana", "operator", password="short")
    with pytest.raises(InputError, match="role must be"):
        app.staff.add_user("ana", "boss", password=PASSWORD)
    app.staff.add_user("ana", "operator", password=PASSWORD)
    with pytest.raises(StateError):
        app.staff.add_user("ana", "viewer", password=PASSWORD)
    with app.store.read() as tx:
        assert tx.user("ana")["password_hash"].startswith("$argon2id$")  # type: ignore[index]
    for _ in range(5):
        with pytest.raises(SignInError):
            app.staff.sign_in("ana", "not the passphrase at all")
    with pytest.raises(SignInError):  # locked: even the right password is refused
        app.staff.sign_in("ana", PASSWORD)
    app.clock.advance(timedelta(minutes=16))  # type: ignore[attr-defined]
    session_id, me = app.staff.sign_in("ana", PASSWORD)
    assert me.role == "operator" and app.staff.session(session_id) is not None
    with pytest.raises(SignInError):
        app.staff.sign_in("nobody", PASSWORD)


def test_a_console_session_signs_in_carries_csrf_times_out_and_ends(app: App) -> None:
    app.staff.add_user("ana", "viewer", password=PASSWORD)
    client = TestClient(create_api(app), base_url="https://testserver", follow_redirects=False)
    wrong = client.post("/console/sign-in", data={"username": "ana", "password": "nope"})
    assert wrong.status_code == 401 and "not right" in wrong.text
    offsite = {"username": "ana", "password": PASSWORD, "next": "https://evil.example/x"}
    signed = client.post("/console/sign-in", data=offsite)
    assert signed.status_code == 303 and signed.headers["location"] == "/console"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "samesite=strict" in cookie.lower()
    home = client.get("/console")
    assert home.status_code == 200 and "ana" in home.text
    assert "default-src 'none'" in home.headers["content-security-policy"]
    assert client.get("/console/exceptions").status_code == 403  # a viewer
    assert client.post("/console/sign-out", data={"csrf": "forged"}).status_code >= 400
    csrf = home.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    app.clock.advance(timedelta(minutes=31))  # type: ignore[attr-defined]
    assert client.get("/console").status_code == 303  # idle too long
    client.post("/console/sign-in", data={"username": "ana", "password": PASSWORD})
    page = client.get("/console")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert client.post("/console/sign-out", data={"csrf": csrf}).status_code == 303
    assert client.get("/console").status_code == 303
    app.staff.add_user("bob", "agent", password=PASSWORD)
    client.post("/console/sign-in", data={"username": "bob", "password": PASSWORD})
    assert client.get("/console/exceptions").status_code == 200
    app.staff.disable("bob")  # a disabled user's sessions end at once
    assert client.get("/console/exceptions").status_code == 303
