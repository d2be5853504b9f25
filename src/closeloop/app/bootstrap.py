"""The composition root: build everything from Settings."""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from closeloop.app.desk import Desk
from closeloop.app.dispatch import Dispatcher, RetryPolicy
from closeloop.app.documents import CommandScanner, Documents, EicarScanner
from closeloop.app.inbound import Inbound, Program
from closeloop.app.pacing import Pace
from closeloop.app.reconcile import Reconciler
from closeloop.app.rollouts import Rollouts
from closeloop.app.runtime import Runtime, Workflows
from closeloop.app.service import CustomerService
from closeloop.app.sessions import Sessions
from closeloop.app.settings import Settings
from closeloop.app.staff import Staff
from closeloop.app.telemetry import Telemetry
from closeloop.app.tracing import Tracing, from_environment
from closeloop.channels import Channel, SinkChannel
from closeloop.channels.smtp import SmtpChannel
from closeloop.channels.twilio import TwilioChannel
from closeloop.channels.webhook import WebhookChannel
from closeloop.clock import Clock, SystemClock
from closeloop.connectors import Connector, LedgerCore
from closeloop.connectors.batch import BatchFileConnector
from closeloop.connectors.mapping import BatchMapping, RestMapping, SqlMapping, load_mapping_file
from closeloop.connectors.plugins import load_plugin
from closeloop.connectors.rest import RestConnector
from closeloop.connectors.sql import SqlConnector
from closeloop.errors import InputError
from closeloop.spec import load_spec_file
from closeloop.store import Store
from closeloop.store.database import create_engine


@dataclass(kw_only=True)
class App:
    settings: Settings
    clock: Clock
    store: Store
    runtime: Runtime
    dispatcher: Dispatcher
    service: CustomerService
    sink: SinkChannel
    ledger: LedgerCore
    connector: Connector  # where outcomes are written back: the ledger or a mapped core
    channels: Mapping[str, Channel]
    inbound: Inbound
    telemetry: Telemetry
    sessions: Sessions
    documents: Documents
    rollouts: Rollouts
    reconciler: Reconciler
    staff: Staff
    desk: Desk
    tracing: Tracing

    def work(self, limit: int | None = None) -> int:
        """Run due timers, messages and writebacks until nothing is due now; reconcile
        settled writebacks with the system of record (at most every few minutes)."""
        size = limit or self.settings.batch_size
        total = self.reconciler.run(size)
        while True:
            due = self.store.due_work(self.clock.now())
            if not any(due.values()):
                return total
            if due["timers"]:
                total += self.runtime.run_due_timers(size)
            if due["message"]:
                total += self.dispatcher.send_messages(size)
            if due["writeback"]:
                total += self.dispatcher.run_writebacks(size)

    def close(self) -> None:
        self.tracing.shutdown()
        self.dispatcher.close()
        for channel in {id(c): c for c in self.channels.values()}.values():
            close = getattr(channel, "close", None)
            if close is not None:
                close()
        self.store.dispose()
        self.sink.engine.dispose()
        self.ledger.engine.dispose()
        close = getattr(self.connector, "close", None)
        if close is not None:
            close()


def identity_key(settings: Settings) -> bytes:
    """The key known facts are hashed with: from settings, else DATA_DIR/keys/identity.key.

    The file is made on first run (32 random bytes, readable by its owner only).
    """
    if settings.identity_key is not None:
        value = settings.identity_key.get_secret_value().strip()
        try:
            key = bytes.fromhex(value)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise InputError("CLOSELOOP_IDENTITY_KEY must be 64 hexadecimal digits (32 bytes)")
        return key
    return data_key(settings.data_dir, "identity")


def data_key(data_dir: Path, name: str) -> bytes:
    """A 32-byte key kept in DATA_DIR/keys/NAME.key, made on first use (32 random bytes,
    readable by its owner only)."""
    path = data_dir / "keys" / f"{name}.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(handle, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError as exc:
        raise InputError(f"{path} does not hold 64 hexadecimal digits") from exc


def settle_heap() -> None:
    """Take everything loaded so far out of the garbage collector's scans.

    Long-running commands call this once their App is built. Modules,
    compiled specs and connection pools live as long as the process; without
    this every full collection during case work walks them all again (about
    100,000 objects, a quarter of the time of a batch of timers). See
    `gc.freeze`.
    """
    gc.collect()
    gc.freeze()


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    upgrade: bool = True,
    seed: int = 0,
    error_rate: float = 0.0,
    timeout_rate: float = 0.0,
    connector: tuple[str, Connector] | None = None,
) -> App:
    """Wire the store, runtime, dispatchers and local providers from settings.

    `connector` (a name and the connector) takes the place of the one
    settings name: a drill hands in its reference core's.
    """
    clock = clock or SystemClock()
    store = Store.connect(settings.resolved_database_url())
    if upgrade:
        store.upgrade()
    world = create_engine(settings.resolved_world_url())
    sink = SinkChannel(world, clock.now)
    ledger = LedgerCore(
        world,
        clock=clock.now,
        seed=seed,
        error_rate=error_rate,
        timeout_after_commit_rate=timeout_rate,
    )
    core: Connector = ledger
    connector_name = "ledger"
    if connector is not None:
        connector_name, core = connector
    elif settings.connector is not None:  # the system of record, through its mapping
        mapping = load_mapping_file(settings.connector)
        connector_name = mapping.connector
        if isinstance(mapping, RestMapping):
            core = RestConnector(mapping)
        elif isinstance(mapping, SqlMapping):
            core = SqlConnector(mapping)
        elif isinstance(mapping, BatchMapping):
            core = BatchFileConnector(mapping)
        else:
            core = load_plugin(mapping)
    workflows = Workflows(load_spec_file(path) for path in settings.workflows)
    rollouts = Rollouts(store, clock)
    runtime = Runtime(
        store=store,
        workflows=workflows,
        connector=core,
        clock=clock,
        cohort_percent=settings.cohort_percent,
        rollouts=rollouts,
    )
    runtime.register_workflows()
    lifetime = timedelta(hours=settings.link_lifetime_hours)
    retry = RetryPolicy(
        max_attempts=settings.writeback_max_attempts,
        base=timedelta(seconds=settings.writeback_base_delay_seconds),
        cap=timedelta(seconds=settings.writeback_max_delay_seconds),
    )
    channels: dict[str, Channel] = {"email": sink, "sms": sink, "whatsapp": sink, "webhook": sink}
    if settings.smtp_host:
        channels["email"] = SmtpChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.email_sender,
            starttls=settings.smtp_starttls,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            tls_context=ssl.create_default_context(
                cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
            ),
            clock=clock.now,
        )
    if settings.twilio_account_sid and settings.twilio_auth_token:
        callback = f"{settings.public_url.rstrip('/')}/webhooks/twilio/status"
        for channel, number in (
            ("sms", settings.twilio_sms_from),
            ("whatsapp", settings.twilio_whatsapp_from),
        ):
            if number:
                channels[channel] = TwilioChannel(
                    base_url=settings.twilio_base_url,
                    account_sid=settings.twilio_account_sid,
                    auth_token=settings.twilio_auth_token.get_secret_value(),
                    sender=number,
                    whatsapp=channel == "whatsapp",
                    status_callback=callback,
                )
    if settings.webhook_url:
        if settings.webhook_secret is None:
            raise InputError("CLOSELOOP_WEBHOOK_URL needs CLOSELOOP_WEBHOOK_SECRET to sign with")
        channels["webhook"] = WebhookChannel(
            url=settings.webhook_url, secret=settings.webhook_secret.get_secret_value()
        )
    telemetry = Telemetry()
    dispatcher = Dispatcher(
        runtime,
        channels=channels,
        connector=core,
        connector_name=connector_name,
        retry=retry,
        writeback_deadline=timedelta(hours=settings.writeback_deadline_hours),
        public_url=settings.public_url,
        link_lifetime=lifetime,
        sms_segment_cost=settings.sms_segment_cost,
        pace={
            channel: Pace(rate)
            for channel, rate in (
                ("sms", settings.sms_per_second),
                ("whatsapp", settings.whatsapp_per_second),
                ("email", settings.email_per_second),
            )
            if rate
        },
        concurrency=settings.send_concurrency,
        telemetry=telemetry,
    )
    service = CustomerService(
        runtime,
        public_url=settings.public_url,
        link_lifetime=lifetime,
        notice_version=settings.consent_notice_version,
        identity_key=identity_key(settings),
        send=dispatcher.send_now,
        sender_name=settings.brand_name or settings.program_name,
    )
    inbound = Inbound(
        runtime,
        Program(
            name=settings.program_name,
            help=settings.program_help,
            frequency=settings.program_frequency,
            notice_version=settings.consent_notice_version,
        ),
    )

    def read_state() -> dict[str, Any]:  # what /metrics shows of the whole system
        now = clock.now()
        with store.read() as tx:
            cases = tx.status_counts()
            queues = {
                kind: (n, (now - oldest).total_seconds() if oldest else 0.0)
                for kind, (n, oldest) in tx.queues(now).items()
            }
            live = [(r["name"], r["workflow"], r["stage"], r["state"]) for r in tx.live_rollouts()]
        return {"cases": cases, "queues": queues, "rollouts": live,
                "breaker": (connector_name, dispatcher.breaker.state)}  # fmt: skip

    telemetry.watch(read_state)
    tracing = from_environment()
    runtime.tracing = dispatcher.tracing = tracing
    return App(
        settings=settings,
        clock=clock,
        store=store,
        runtime=runtime,
        dispatcher=dispatcher,
        service=service,
        sink=sink,
        ledger=ledger,
        connector=core,
        channels=channels,
        inbound=inbound,
        telemetry=telemetry,
        sessions=Sessions(store, clock),
        rollouts=rollouts,
        reconciler=Reconciler(store, runtime, core, clock),
        staff=Staff(store, clock),
        desk=Desk(store, runtime, clock),
        tracing=tracing,
        documents=Documents(
            store,
            clock,
            settings.data_dir / "documents",
            CommandScanner(settings.scan_command) if settings.scan_command else EicarScanner(),
        ),
    )
