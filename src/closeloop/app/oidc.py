"""Staff single sign-on: OpenID Connect's authorization code flow, with PKCE.

Configured by ``CLOSELOOP_OIDC_ISSUER``, ``..._CLIENT_ID`` and ``..._CLIENT_SECRET``.
closeloop reads the provider's discovery document, sends the browser to its
authorization endpoint with a random state, nonce and PKCE challenge (S256)
kept in a signed, short-lived cookie, and on the way back exchanges the code
at the token endpoint. The ID token's signature is checked against the
provider's published keys (JWKS), with its issuer, audience, expiry and
nonce. The provider says who the person is; closeloop decides what they may
do: the username claim (``email`` by default) must be a closeloop user that
is not disabled (`closeloop users add NAME --role agent --sso`), and the
session then carries that user's role.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from closeloop.app.settings import Settings
from closeloop.errors import InputError, OperationalError

FLOW_SECONDS = 600  # the time from leaving for the provider to coming back


class SignOnError(InputError):
    """Single sign-on did not succeed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, kw_only=True)
class Started:
    url: str  # where the browser goes: the provider's authorization endpoint
    cookie: str  # the flow's state, signed, for the callback


class SingleSignOn:
    def __init__(self, settings: Settings, key: bytes) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        secret = settings.oidc_client_secret
        self.client_secret = secret.get_secret_value() if secret else ""
        self.claim = settings.oidc_username_claim
        self.name = settings.oidc_name
        self.redirect_uri = f"{settings.public_url.rstrip('/')}/console/oidc/callback"
        self.key = key
        self._discovery: dict[str, Any] | None = None
        self._keys: jwt.PyJWKClient | None = None

    def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                answer = httpx.get(url, timeout=10)
                answer.raise_for_status()
                found = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise OperationalError(f"the OIDC provider's discovery {url}: {exc}") from exc
            if found.get("issuer", "").rstrip("/") != self.issuer:
                raise OperationalError(f"{url} names another issuer: {found.get('issuer')}")
            self._discovery = found
            self._keys = jwt.PyJWKClient(found["jwks_uri"], cache_keys=True)
        return self._discovery

    # -- the flow's state, in a cookie signed with the data directory's key ---------------
    def _sign(self, state: dict[str, Any]) -> str:
        body = _b64(json.dumps(state, separators=(",", ":")).encode())
        mac = _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
        return f"{body}.{mac}"

    def _unsign(self, cookie: str) -> dict[str, Any]:
        body, _, mac = cookie.partition(".")
        good = _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())
        if not body or not hmac.compare_digest(mac, good):
            raise SignOnError("the sign-in was not started here, or it was changed")
        state: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if state["at"] + FLOW_SECONDS < time.time():
            raise SignOnError("the sign-in took too long: start again")
        return state

    def start(self, next_path: str) -> Started:
        found = self.discovery()
        verifier = secrets.token_urlsafe(48)
        state = {
            "state": secrets.token_urlsafe(24),
            "nonce": secrets.token_urlsafe(24),
            "verifier": verifier,
            "next": next_path,
            "at": int(time.time()),
        }
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": f"openid {self.claim}" if self.claim in ("email", "profile") else "openid",
                "state": state["state"],
                "nonce": state["nonce"],
                "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
                "code_challenge_method": "S256",
            }
        )
        return Started(url=f"{found['authorization_endpoint']}?{query}", cookie=self._sign(state))

    def finish(self, cookie: str, *, code: str, state: str) -> tuple[str, str]:
        """The username the provider vouches for, and where to go next."""
        flow = self._unsign(cookie)
        if not hmac.compare_digest(flow["state"], state):
            raise SignOnError("the sign-in's state does not match: start again")
        found = self.discovery()
        try:
            answer = httpx.post(
                found["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": self.redirect_uri,
                    "code_verifier": flow["verifier"],
                },
                auth=(self.client_id, self.client_secret),
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise OperationalError(f"the OIDC token endpoint: {exc}") from exc
        if answer.status_code != 200:
            raise SignOnError(f"the provider refused the code ({answer.status_code})")
        id_token = answer.json().get("id_token", "")
        assert self._keys is not None
        try:
            key = self._keys.get_signing_key_from_jwt(id_token)
            claims = jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "ES256", "PS256"],
                audience=self.client_id,
                issuer=found["issuer"],
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise SignOnError(f"the ID token does not check out: {exc}") from exc
        if not hmac.compare_digest(str(claims.get("nonce", "")), flow["nonce"]):
            raise SignOnError("the ID token's nonce does not match")
        username = str(claims.get(self.claim) or "")
        if not username:
            raise SignOnError(f"the ID token has no {self.claim} claim")
        return username, flow["next"]
