"""SMS and WhatsApp through Twilio's REST API, and Twilio's webhook signatures.

`TwilioChannel` posts to ``/2010-04-01/Accounts/{AccountSid}/Messages.json``
(httpx, one pooled client, a configurable base URL so the local sandbox or
Twilio itself can answer) with HTTP basic auth, and asks for status
callbacks. Refusals are classified for the cadence by Twilio's error codes:
the recipient opted out (21610), the number cannot get messages (21211,
21612, 21614), a carrier blocked it (30007), or something temporary (429
with Retry-After, 5xx, timeouts).

`signature` computes ``X-Twilio-Signature`` the way Twilio does: HMAC-SHA1,
keyed with the auth token, of the full URL followed by every POST parameter
name and value sorted by name, base64-encoded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping

import httpx

from closeloop.channels.port import OutgoingMessage, SendResult

OPTED_OUT = frozenset({21610})
UNREACHABLE = frozenset({21211, 21612, 21614, 21408, 30003, 30005, 30006})
CARRIER_BLOCK = frozenset({30004, 30007})


def classify(code: int | None) -> str:
    """What a Twilio error code means for the cadence."""
    if code in OPTED_OUT:
        return "opted_out"
    if code in UNREACHABLE:
        return "unreachable"
    if code in CARRIER_BLOCK:
        return "carrier_block"
    return "other"


def signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """The X-Twilio-Signature of a form POST to `url` with `params`."""
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_ok(url: str, params: Mapping[str, str], auth_token: str, given: str) -> bool:
    return hmac.compare_digest(signature(url, params, auth_token), given or "")


class TwilioChannel:
    """Sends SMS (or WhatsApp, with `whatsapp:` addresses) through Twilio's Messages API."""

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        whatsapp: bool = False,
        status_callback: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.sender = sender
        self.whatsapp = whatsapp
        self.status_callback = status_callback
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            auth=(account_sid, auth_token),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    def _address(self, number: str) -> str:
        return f"whatsapp:{number}" if self.whatsapp else number

    def send(self, message: OutgoingMessage) -> SendResult:
        form = {"To": self._address(message.address), "From": self._address(self.sender)}
        if self.whatsapp and message.template_id:
            # An approved template (Twilio's Content API): sendable outside the 24 h window.
            form["ContentSid"] = message.template_id
            form["ContentVariables"] = json.dumps(dict(message.template_variables))
        else:
            form["Body"] = message.body
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        try:
            response = self.client.post(
                f"/2010-04-01/Accounts/{self.account_sid}/Messages.json", data=form
            )
        except httpx.HTTPError as exc:
            return SendResult(status="retry", reason=f"temporary: {type(exc).__name__}: {exc}")
        if response.status_code in (200, 201):
            try:
                sid = str(response.json()["sid"])
            except (ValueError, KeyError, TypeError):
                return SendResult(status="retry", reason="temporary: the response had no sid")
            return SendResult(status="sent", provider_id=sid, tracked=bool(self.status_callback))
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = body.get("code") if isinstance(body, dict) else None
        text = f"{response.status_code} {code or ''} {body.get('message', '') if body else ''}"
        text = " ".join(text.split())
        if response.status_code == 429:
            after = response.headers.get("Retry-After")
            return SendResult(
                status="retry",
                reason=f"rate limited: {text}",
                retry_after=float(after) if after and after.isdigit() else None,
            )
        if response.status_code >= 500:
            return SendResult(status="retry", reason=f"temporary: {text}")
        kind = classify(code if isinstance(code, int) else None)
        if kind == "other" and response.status_code in (401, 403):
            return SendResult(status="retry", reason=f"Twilio setup: {text}")
        return SendResult(status="failed", reason=f"{kind}: {text}", failure=kind)

    def close(self) -> None:
        self.client.close()
