"""The simulated customers' phones and inboxes, behind real providers.

With ``closeloop demo --providers sandbox`` messages travel over real SMTP
and real HTTP to closeloop's SMTP and Twilio sandboxes on loopback; what a
provider accepted also lands in the sink table, which stands for the
customer's device: that is where simulated customers read their messages,
keyed by idempotency key, so the same seed still gives the same run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn

from closeloop.channels import Channel, OutgoingMessage, SendResult, SinkChannel
from closeloop.channels.smtp import SmtpSink, free_port
from closeloop.channels.twilio_sandbox import TwilioSandbox

SANDBOX_SID, SANDBOX_TOKEN, SANDBOX_NUMBER = "AC" + "0" * 32, "sandbox-auth-token", "+15005550006"


@dataclass
class Device:
    """A provider channel whose accepted messages reach the customer's device (the sink)."""

    provider: Channel
    device: SinkChannel

    def send(self, message: OutgoingMessage) -> SendResult:
        result = self.provider.send(message)
        if result.status == "sent":
            self.device.send(message)
        return result

    def close(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Sandboxes:
    """Where the running sandboxes listen, as settings for the app."""

    settings: dict[str, Any]
    smtp: SmtpSink
    twilio: TwilioSandbox


@contextmanager
def sandboxes(folder: Path) -> Iterator[Sandboxes]:
    """Run the SMTP and Twilio sandboxes on free loopback ports for one demo."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{folder / 'sandboxes.db'}")
    smtp = SmtpSink(engine, batch=500).start()
    twilio = TwilioSandbox(
        engine,
        account_sid=SANDBOX_SID,
        auth_token=SANDBOX_TOKEN,
        rate_per_second=1_000_000,
        batch=500,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(twilio.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield Sandboxes(
            settings={
                "smtp_host": smtp.host,
                "smtp_port": smtp.port,
                "smtp_starttls": False,
                "email_sender": "Acme Card <billing@acme.test>",
                "twilio_base_url": f"http://127.0.0.1:{port}",
                "twilio_account_sid": SANDBOX_SID,
                "twilio_auth_token": SANDBOX_TOKEN,
                "twilio_sms_from": SANDBOX_NUMBER,
                "twilio_whatsapp_from": SANDBOX_NUMBER,
            },
            smtp=smtp,
            twilio=twilio,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        smtp.stop()
        twilio.flush()
        engine.dispose()
