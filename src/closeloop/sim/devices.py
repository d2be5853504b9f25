"""The simulated customers' phones and inboxes, behind real providers.

With ``closeloop demo --providers sandbox`` messages travel over real SMTP
and real HTTP to closeloop's SMTP and Twilio sandboxes on loopback; what a
provider accepted also lands in the sink table, which stands for the
customer's device: that is where simulated customers read their messages,
keyed by idempotency key, so the same seed still gives the same run.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn

from closeloop.channels import Channel, OutgoingMessage, SendResult, SinkChannel
from closeloop.channels.smtp import SmtpSink, free_port, smtp_received
from closeloop.channels.twilio_sandbox import TwilioSandbox, twilio_messages
from closeloop.connectors.card_sandbox import CardSandbox
from closeloop.connectors.reference_core import ReferenceCore
from closeloop.errors import OperationalError
from closeloop.store.database import create_engine

SANDBOX_SID, SANDBOX_TOKEN, SANDBOX_NUMBER = "AC" + "0" * 32, "sandbox-auth-token", "+15005550006"
# Where the demo's mini-app says it lives: its simulated customers reach it in-process.
DEMO_URL = "https://pay.acme.test"


class Device:
    """A provider channel whose accepted messages reach the customer's device (the sink).

    What the provider accepted during a batch reaches the device when the
    dispatcher settles the batch, in one write.
    """

    def __init__(self, provider: Channel, device: SinkChannel) -> None:
        self.provider = provider
        self.device = device
        self._accepted: list[OutgoingMessage] = []
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> SendResult:
        result = self.provider.send(message)
        if result.status == "sent":
            with self._lock:
                self._accepted.append(message)
        return result

    def settle(self) -> None:
        with self._lock:
            accepted, self._accepted = self._accepted, []
        self.device.deliver(accepted)

    def close(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True, kw_only=True)
class CoreAccess:
    """Where the reference core listens, and this run's keys to it."""

    url: str
    api_key: str
    admin_key: str


@dataclass
class Sandboxes:
    """Where the running sandboxes listen, as settings for the app."""

    settings: dict[str, Any]
    folder: Path
    received: dict[str, int] = field(default_factory=dict)  # filled in when they stop
    core: CoreAccess | None = None  # the reference core, when one runs

    def count(self) -> dict[str, int]:
        """Messages each sandbox accepted (read from their databases once they stopped)."""
        smtp = sa.create_engine(f"sqlite:///{self.folder / 'smtp.db'}")
        twilio = sa.create_engine(f"sqlite:///{self.folder / 'twilio.db'}")
        try:
            with smtp.connect() as c:
                emails = c.execute(
                    sa.select(sa.func.count()).select_from(smtp_received)
                ).scalar_one()
            with twilio.connect() as c:
                texts = c.execute(
                    sa.select(sa.func.count())
                    .select_from(twilio_messages)
                    .where(twilio_messages.c.direction == "outbound-api")
                ).scalar_one()
        finally:
            smtp.dispose()
            twilio.dispose()
        return {"smtp": emails, "twilio": texts}


@contextmanager
def sandboxes(
    folder: Path,
    *,
    fresh: bool = True,
    kinds: tuple[str, ...] = ("smtp", "twilio", "cards"),
    public_url: str = DEMO_URL,
) -> Iterator[Sandboxes]:
    """Run the SMTP, Twilio and card sandboxes (and the reference core) on free loopback ports.

    Each runs in a process of its own, so the providers' work happens on the
    other core while the simulation and the dispatcher run here, and nothing
    waits on this process's GIL to answer a send. A resumed demo (`fresh`
    false) keeps what they received before. The card sandbox sends customers
    back to `public_url`, the mini-app's address.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in (f"{k}.db" for k in kinds) if fresh else ():
        for suffix in ("", "-wal", "-shm"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")  # threads run here: never fork
    stop = context.Event()
    ports = {kind: free_port() for kind in kinds}
    card_key = secrets.token_urlsafe(24)  # this run's only: nothing to keep
    core = CoreAccess(
        url=f"http://127.0.0.1:{ports.get('core', 0)}",
        api_key=secrets.token_urlsafe(24),
        admin_key=secrets.token_urlsafe(24),
    )
    processes = []
    for kind, port in ports.items():
        ready = context.Event()
        options: dict[str, str] = {}
        if kind == "cards":
            options = {"api_key": card_key, "allowed": public_url}
        elif kind == "core":
            options = {"api_key": core.api_key, "admin_key": core.admin_key}
        process = context.Process(
            target=_serve, args=(kind, str(folder), port, ready, stop, options), daemon=True
        )
        process.start()
        processes.append((kind, process, ready))
    settings: dict[str, Any] = {}
    if "smtp" in ports:
        settings |= {
            "smtp_host": "127.0.0.1",
            "smtp_port": ports["smtp"],
            "smtp_starttls": False,
            "email_sender": "Acme Card <billing@acme.test>",
        }
    if "twilio" in ports:
        settings |= {
            "twilio_base_url": f"http://127.0.0.1:{ports['twilio']}",
            "twilio_account_sid": SANDBOX_SID,
            "twilio_auth_token": SANDBOX_TOKEN,
            "twilio_sms_from": SANDBOX_NUMBER,
            "twilio_whatsapp_from": SANDBOX_NUMBER,
        }
    if "cards" in ports:
        settings |= {
            "card_fields_url": f"http://127.0.0.1:{ports['cards']}",
            "card_api_key": card_key,
        }
    running = Sandboxes(settings=settings, folder=folder, core=core if "core" in ports else None)
    try:
        for kind, process, ready in processes:
            while not ready.wait(0.1):
                if not process.is_alive():
                    raise OperationalError(
                        f"the {kind} sandbox did not start (exit code {process.exitcode})"
                    )
        yield running
    finally:
        stop.set()
        for _, process, _ in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    if "smtp" in ports and "twilio" in ports:
        running.received = running.count()


def _serve(kind: str, folder: str, port: int, ready: Any, stop: Any, options: Any) -> None:
    """A sandbox's process: serve until `stop` is set or the demo is gone, then write."""
    # WAL, as `closeloop sandbox ...` runs them: a card token is one small commit, not a sync.
    engine = create_engine(f"sqlite:///{Path(folder) / f'{kind}.db'}")
    parent = os.getppid()

    def wait() -> None:  # a demo killed with SIGKILL cannot set `stop`: watch for it
        while not stop.wait(0.5) and os.getppid() == parent:
            pass

    try:
        if kind == "smtp":
            sink = SmtpSink(engine, port=port, batch=500).start()
            ready.set()
            wait()
            sink.stop()
            return
        twilio = None
        if kind == "cards":
            web = CardSandbox(
                engine, allowed_origins=[options["allowed"]], api_key=options["api_key"]
            ).app
        elif kind == "core":
            web = ReferenceCore(
                engine, api_key=options["api_key"], admin_key=options["admin_key"]
            ).app
        else:
            twilio = TwilioSandbox(
                engine,
                account_sid=SANDBOX_SID,
                auth_token=SANDBOX_TOKEN,
                rate_per_second=1_000_000,
                batch=500,
            )
            web = twilio.app
        server = uvicorn.Server(
            uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        ready.set()
        wait()
        server.should_exit = True
        thread.join(timeout=10)
        if twilio is not None:
            twilio.flush()
    finally:
        engine.dispose()
