"""Staff sign in through an OpenID Connect provider served on loopback (code flow, PKCE)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from closeloop.app import App, Settings, build
from closeloop.clock import SystemClock
from closeloop.web import create_api
from tests.conftest import EXAMPLE
from tests.oidc_provider import Provider
from tests.servers import Served, free_port


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[App, Provider]]:
    provider = Provider("closeloop", "s3cret-client", "ana@bank.example")
    served = Served(provider.app, free_port())
    provider.url = served.url
    settings = Settings(
        data_dir=tmp_path,
        workflows=[EXAMPLE],
        public_url="https://testserver",
        oidc_issuer=served.url,
        oidc_client_id="closeloop",
        oidc_client_secret="s3cret-client",
    )
    app = build(settings, clock=SystemClock())  # ID tokens carry the wall clock's time
    yield app, provider
    app.close()
    served.stop()


def through_the_provider(client: TestClient, start: str) -> Any:
    """Follow the sign-in from closeloop to the provider and back; closeloop's answer."""
    begun = client.get(start)
    assert begun.status_code == 303, begun.text
    assert "code_challenge_method=S256" in begun.headers["location"]
    back = httpx.get(begun.headers["location"], follow_redirects=False)
    assert back.status_code == 302
    return client.get(back.headers["location"].replace("https://testserver", ""))


def test_a_known_user_signs_in_with_the_provider_and_gets_their_role(
    world: tuple[App, Provider],
) -> None:
    app, _ = world
    app.staff.add_user("ana@bank.example", "agent", name="Ana")  # no password: SSO only
    client = TestClient(create_api(app), base_url="https://testserver", follow_redirects=False)
    page = client.get("/console/sign-in")
    assert "Sign in with single sign-on" in page.text
    done = through_the_provider(client, "/console/oidc/start?next=/console/exceptions")
    assert done.status_code == 303 and done.headers["location"] == "/console/exceptions"
    queue = client.get("/console/exceptions")
    assert queue.status_code == 200 and "ana@bank.example" in queue.text
    with app.store.read() as tx:
        (session,) = [r for r in tx.audit_between(*_always()) if r["action"] == "sign_in"]
    assert session["detail"] == "oidc" and session["outcome"] == "success"


def test_the_provider_vouching_is_not_enough_without_a_closeloop_user(
    world: tuple[App, Provider],
) -> None:
    app, _ = world
    client = TestClient(create_api(app), base_url="https://testserver", follow_redirects=False)
    refused = through_the_provider(client, "/console/oidc/start")
    assert refused.status_code == 401 and "not a closeloop user" in refused.text
    assert client.get("/console").status_code == 303  # still not signed in
    app.staff.add_user("ana@bank.example", "viewer")
    app.staff.disable("ana@bank.example")
    again = through_the_provider(client, "/console/oidc/start")
    assert again.status_code == 401


def test_a_forged_or_replayed_callback_is_refused(world: tuple[App, Provider]) -> None:
    app, _ = world
    app.staff.add_user("ana@bank.example", "viewer")
    client = TestClient(create_api(app), base_url="https://testserver", follow_redirects=False)
    begun = client.get("/console/oidc/start")
    back = httpx.get(begun.headers["location"], follow_redirects=False)
    callback = back.headers["location"].replace("https://testserver", "")
    forged = callback.replace("state=", "state=x")
    assert client.get(forged).status_code == 401
    stranger = TestClient(create_api(app), base_url="https://testserver")  # no flow cookie
    assert stranger.get(callback, follow_redirects=False).status_code == 401
    assert client.get(callback).status_code == 303  # the real one, once
    assert client.get(callback).status_code == 401  # the flow is over: no replay


def _always() -> tuple[Any, Any]:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(hours=1)
