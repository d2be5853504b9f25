"""The signed webhook channel against a real HTTP gateway on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request, Response

from closeloop.channels import OutgoingMessage
from closeloop.channels.webhook import WebhookChannel, sign, verify
from tests.servers import Served, free_port

SECRET = "gateway-shared-secret"


class Gateway:
    """A bank's messaging gateway: checks every signature, answers as told."""

    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        self.answers: list[int] = []
        self.app = FastAPI()

        @self.app.post("/messages")
        async def messages(request: Request) -> Response:
            body = await request.body()
            ok = verify(
                SECRET,
                request.headers.get("X-Closeloop-Timestamp", ""),
                body,
                request.headers.get("X-Closeloop-Signature", ""),
            )
            if not ok:
                return Response(status_code=401)
            self.received.append({"key": request.headers["Idempotency-Key"], **json.loads(body)})
            code = self.answers.pop(0) if self.answers else 202
            headers = {"Retry-After": "7"} if code == 429 else {}
            return Response(
                json.dumps({"id": f"gw-{len(self.received)}"}), status_code=code, headers=headers
            )


@pytest.fixture
def gateway() -> Iterator[tuple[Gateway, str]]:
    gw = Gateway()
    served = Served(gw.app, free_port())
    yield gw, f"{served.url}/messages"
    served.stop()


def message(n: int) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=f"key-{n}",
        case_id="case_1",
        channel="webhook",
        address="customer-77",
        subject="Payment",
        body="Your payment failed: https://closeloop.example/m/tok",
        link="https://closeloop.example/m/tok",
    )


def test_signed_messages_and_what_the_gateway_answers(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    channel = WebhookChannel(url=url, secret=SECRET)
    first = channel.send(message(1))
    assert (first.status, first.provider_id) == ("sent", "gw-1")
    assert gw.received[0]["key"] == gw.received[0]["id"] == "key-1"
    assert gw.received[0]["to"] == "customer-77"
    gw.answers = [503, 429, 400]
    assert channel.send(message(2)).status == "retry"
    limited = channel.send(message(3))
    assert (limited.status, limited.retry_after) == ("retry", 7.0)
    refused = channel.send(message(4))
    assert refused.status == "failed" and refused.reason.startswith("refused: 400")
    forged = WebhookChannel(url=url, secret="not-the-secret").send(message(5))
    assert forged.status == "failed" and "401" in forged.reason
    assert WebhookChannel(url="http://127.0.0.1:9/x", secret=SECRET).send(message(6)).status == (
        "retry"
    )
    channel.close()


def test_verify_refuses_old_and_altered_requests() -> None:
    body, now = b'{"id":"k"}', int(time.time())
    good = sign(SECRET, now, body)
    assert verify(SECRET, str(now), body, good)
    assert not verify(SECRET, str(now), body + b" ", good)  # altered body
    assert not verify("other", str(now), body, good)  # wrong secret
    stale = now - 301
    assert not verify(SECRET, str(stale), body, sign(SECRET, stale, body))  # replayed later
    assert not verify(SECRET, "soon", body, good)
