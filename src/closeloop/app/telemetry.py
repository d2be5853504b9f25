"""What closeloop counts, as Prometheus metrics.

Each App has a registry of its own, so two apps in one process (tests, the
demo beside a server) never mix their counts. Counts are taken after the
transaction that records them commits: a rolled-back batch counts nothing.
`closeloop serve` exposes them at ``GET /metrics``; `closeloop work
--metrics-port N` serves them on a port of its own.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server

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

    def count_sms(self, encoding: str, segments: int, cost: Decimal) -> None:
        self.sms_segments.labels(encoding).inc(segments)
        self.sms_cost.inc(float(cost))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on a port of its own, from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
