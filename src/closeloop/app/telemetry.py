"""What closeloop counts, as Prometheus metrics.

Each App has a registry of its own, so two apps in one process (tests, the
demo beside a server) never mix their counts. Counts are taken after the
transaction that records them commits: a rolled-back batch counts nothing.
`closeloop serve` exposes them at ``GET /metrics``; `closeloop work
--metrics-port N` serves them on a port of its own.

What is true of the whole system at a moment (cases by state, work due and
how late the oldest of it is, the breaker, each live rollout's stage) is
read from the database when Prometheus scrapes, by `StateCollector`: every
process answers the same, so take one (`max`), not the sum.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, MutableMapping
from decimal import Decimal
from typing import Any, TextIO

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "closeloop_messages",
            "Messages handed to providers, by channel and result (sent, failed, retry).",
            ["channel", "result"],
            registry=self.registry,
        )
        self.held = Counter(
            "closeloop_messages_held",
            "Messages contact policy deferred or blocked, by channel, action and reason.",
            ["channel", "action", "reason"],
            registry=self.registry,
        )
        self.sms_segments = Counter(
            "closeloop_sms_segments",
            "SMS segments sent, by encoding (GSM-7 or UCS-2).",
            ["encoding"],
            registry=self.registry,
        )
        self.card_numbers = Counter(
            "closeloop_card_numbers_refused",
            "Requests refused because they carried a card number, by where (path, query, body).",
            ["where"],
            registry=self.registry,
        )
        self.sms_cost = Counter(
            "closeloop_sms_cost",
            "What the SMS segments sent cost, at CLOSELOOP_SMS_SEGMENT_COST each.",
            registry=self.registry,
        )
        self.writeback_seconds = Histogram(
            "closeloop_writeback_seconds",
            "How long the system of record took to answer a writeback, by operation and "
            "result (ok, retry, failed, pending).",
            ["operation", "result"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def watch(self, read_state: Callable[[], dict[str, Any]]) -> None:
        """Read the system's state (`StateCollector.read`'s shape) at every scrape."""
        self.registry.register(StateCollector(read_state))

    def count_sms(self, encoding: str, segments: int, cost: Decimal) -> None:
        self.sms_segments.labels(encoding).inc(segments)
        self.sms_cost.inc(float(cost))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on a port of its own, from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)


class StateCollector(Collector):
    """Gauges of the system's state, read when Prometheus scrapes.

    `read` returns {"cases": {status: n}, "queues": {kind: (n, age of the oldest in
    seconds)}, "breaker": (connector, state), "rollouts": [(name, workflow, stage index,
    state)]}.
    """

    BREAKER_STATES = ("closed", "half_open", "open")
    ROLLOUT_STATES = ("running", "held", "halted")

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.read()
        cases = GaugeMetricFamily("closeloop_cases", "Cases by state.", labels=["status"])
        for status, n in sorted(state["cases"].items()):
            cases.add_metric([status], n)
        depth = GaugeMetricFamily(
            "closeloop_queue_depth",
            "Work due now and not taken, by kind (timer, message, writeback).",
            labels=["kind"],
        )
        age = GaugeMetricFamily(
            "closeloop_queue_oldest_due_seconds",
            "How long the oldest work item due has waited, by kind (0 when none is due).",
            labels=["kind"],
        )
        for kind, (n, waited) in state["queues"].items():
            depth.add_metric([kind], n)
            age.add_metric([kind], waited)
        connector, current = state["breaker"]
        breaker = GaugeMetricFamily(
            "closeloop_breaker_state",
            "The connector's circuit breaker: 1 for its current state.",
            labels=["connector", "state"],
        )
        for name in self.BREAKER_STATES:
            breaker.add_metric([connector, name], 1.0 if name == current else 0.0)
        stage = GaugeMetricFamily(
            "closeloop_rollout_stage",
            "Each live rollout's current stage, counted from 0.",
            labels=["rollout", "workflow"],
        )
        rollout_state = GaugeMetricFamily(
            "closeloop_rollout_state",
            "Each live rollout: 1 for its current state (running, held, halted).",
            labels=["rollout", "state"],
        )
        for name, workflow, index, now_in in state["rollouts"]:
            stage.add_metric([name, workflow], index)
            for label in self.ROLLOUT_STATES:
                rollout_state.add_metric([name, label], 1.0 if label == now_in else 0.0)
        yield from (cases, depth, age, breaker, stage, rollout_state)


# -- logs -------------------------------------------------------------------------------
# Keys whose values are personal data or secrets: never written to a log.
_PERSONAL = frozenset({
    "address", "email", "phone", "first_name", "name", "secrets", "token", "link", "url",
    "password", "authorization", "api_key", "body", "subject", "account", "contacts",
})  # fmt: skip
# What may hide in free text (an error, a reason, a traceback): a mini-app or
# unsubscribe token, a bearer token, an email address, a phone number. Identifiers
# (case_id, key, ...) are not free text and are left as they are.
_FREE_TEXT = frozenset({"error", "reason", "detail", "message", "exception"})
_SCRUB = (
    (re.compile(r"/(m|u)/[A-Za-z0-9_.~-]{8,}"), r"/\1/[token]"),
    (re.compile(r"(?i)bearer\s+\S+"), "Bearer [token]"),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "[email]"),
    (re.compile(r"\+?\d[\d ()-]{7,}\d"), "[number]"),
)


def scrub(text: str) -> str:
    """Free text without email addresses, phone numbers, link or bearer tokens."""
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: drop personal data and secrets from a log event."""
    for key, value in list(event.items()):
        if key.lower() in _PERSONAL:
            event[key] = "[redacted]"
        elif isinstance(value, str) and key in _FREE_TEXT:
            event[key] = scrub(value)
    return event


def configure_logs(stream: TextIO) -> None:
    """Structured logs: one JSON object per line on `stream`, with no personal data."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
