"""How the REST connector proves who it is: an API key, OAuth 2.0 client credentials, mTLS.

OAuth 2.0 client credentials (RFC 6749, section 4.4) is an `httpx.Auth`
flow: the first request (and any after the token's expiry, less a margin)
first asks the token endpoint for a bearer token with the client's id and
secret (HTTP Basic, `client_secret_basic`), then carries it; a request the
core answers `401` gets a fresh token and is sent once more. The token
request goes through the same client, so it uses the same TLS settings.
Written here rather than taken from authlib, whose httpx integration now
targets another HTTP client; the flow is what httpx's documentation shows
for custom authentication.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Generator
from typing import Any

import httpx

from closeloop.connectors.mapping import ApiKey, ClientCredentials, RestMapping, Tls
from closeloop.errors import InputError


class CredentialsRefused(httpx.HTTPError):
    """The token endpoint would not give closeloop a token (wrong id or secret, no such grant)."""


class ClientCredentialsAuth(httpx.Auth):
    requires_response_body = True

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, scope: str | None = None
    ) -> None:
        self.token_url = token_url
        self.basic = httpx.BasicAuth(client_id, client_secret)
        self.scope = scope
        self.token: str | None = None
        self.renew_at = 0.0  # time.monotonic() after which the token is renewed
        self.fetched = 0  # tokens fetched so far

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token is None or time.monotonic() >= self.renew_at:
            yield from self._fetch()
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, once
            yield from self._fetch()
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request

    def _fetch(self) -> Generator[httpx.Request, httpx.Response, None]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        asked = httpx.Request("POST", self.token_url, data=form)
        answer = yield next(self.basic.auth_flow(asked))
        try:
            body: Any = answer.json()
        except ValueError:
            body = {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if answer.status_code != 200 or not isinstance(token, str) or not token:
            reason = body.get("error") if isinstance(body, dict) else None
            raise CredentialsRefused(
                f"the token endpoint answered {answer.status_code}"
                + (f" ({reason})" if reason else "")
            )
        lifetime = float(body.get("expires_in") or 3600)
        self.token = token
        self.renew_at = time.monotonic() + lifetime - min(30.0, lifetime / 10)
        self.fetched += 1


def _secret(env: str, connector: str, what: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise InputError(f"connector {connector}: set {env} (its {what})")
    return value


def client_auth(
    mapping: RestMapping, secret: str | None = None
) -> tuple[dict[str, str], httpx.Auth | None]:
    """The headers and the auth flow the mapping's `auth` calls for (secrets from the env)."""
    auth = mapping.auth
    if isinstance(auth, ApiKey):
        key = secret or _secret(auth.env, mapping.connector, f"{auth.header} credential")
        return {auth.header: f"{auth.prefix}{key}"}, None
    assert isinstance(auth, ClientCredentials)
    client_id = _secret(auth.client_id_env, mapping.connector, "OAuth client id")
    client_secret = secret or _secret(
        auth.client_secret_env, mapping.connector, "OAuth client secret"
    )
    return {}, ClientCredentialsAuth(auth.token_url, client_id, client_secret, auth.scope)


def tls_context(tls: Tls | None, connector: str) -> ssl.SSLContext | bool:
    """The TLS context for a mapping's `tls` (True: the system's trust, no client certificate)."""
    if tls is None:
        return True
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.client_cert_file and tls.client_key_file:
            context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"connector {connector}: tls: {exc}") from exc
    return context
