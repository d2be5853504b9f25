"""A generic signed webhook channel, for banks with their own messaging gateway.

Each message is one ``POST`` of JSON to the configured URL::

    {"id": KEY, "case_id": ..., "to": ADDRESS, "subject": ..., "body": ..., "link": ...}

with ``Idempotency-Key: KEY`` (the same for every attempt of one message),
``X-Closeloop-Timestamp: UNIX_SECONDS`` and
``X-Closeloop-Signature: v1=HEX``, where HEX is HMAC-SHA256 keyed with the
shared secret over ``f"{timestamp}.{raw body}"``. The gateway checks the
signature with `verify` (or the same four lines in its own language) and
refuses timestamps older than a few minutes, so a captured request cannot be
replayed later.

2xx is sent; 429 (with Retry-After), 408, 409, 5xx and network errors are
temporary; any other 4xx is a permanent refusal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx

from closeloop.channels.port import OutgoingMessage, SendResult

TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> bool:
    """What the receiving gateway checks: a fresh timestamp and a matching signature."""
    if not timestamp.isdigit():
        return False
    moment = time.time() if now is None else now
    if abs(moment - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


class WebhookChannel:
    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.client = httpx.Client(timeout=timeout, transport=transport)

    def send(self, message: OutgoingMessage) -> SendResult:
        body = json.dumps(
            {
                "id": message.idempotency_key,
                "case_id": message.case_id,
                "to": message.address,
                "subject": message.subject,
                "body": message.body,
                "link": message.link,
            },
            separators=(",", ":"),
        ).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.idempotency_key,
            "X-Closeloop-Timestamp": str(timestamp),
            "X-Closeloop-Signature": sign(self.secret, timestamp, body),
        }
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return SendResult(status="retry", reason=f"temporary: {type(exc).__name__}: {exc}")
        code = response.status_code
        if 200 <= code < 300:
            try:
                reference = str(response.json().get("id") or message.idempotency_key)
            except (ValueError, AttributeError):
                reference = message.idempotency_key
            return SendResult(status="sent", provider_id=reference)
        text = f"{code} {response.text[:200]}".strip()
        if code == 429:
            after = response.headers.get("Retry-After", "")
            return SendResult(
                status="retry",
                reason=f"rate limited: {text}",
                retry_after=float(after) if after.isdigit() else None,
            )
        if code in (408, 409) or code >= 500:
            return SendResult(status="retry", reason=f"temporary: {text}")
        return SendResult(status="failed", reason=f"refused: {text}", failure="other")

    def close(self) -> None:
        self.client.close()
