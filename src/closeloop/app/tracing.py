"""OpenTelemetry traces, when an exporter is configured.

Set the SDK's own variables and closeloop sends spans over OTLP/HTTP:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
and as usual ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_TRACES_SAMPLER``. Without an endpoint nothing is set up and every span
is the API's no-op.

Spans: each HTTP request (named by its route template, never the path: a
mini-app path holds a link token), continuing a W3C ``traceparent`` the
caller sent; trigger intake; each message handed to a provider; each
writeback call to the system of record. Attributes name cases, channels,
operations and idempotency keys, never a customer's data or address.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class Tracing:
    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = (
            provider.get_tracer("closeloop") if provider is not None else trace.NoOpTracer()
        )

    @contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        parent: Any = None,
    ) -> Iterator[Span]:
        """A span, child of the current one (or of `parent`, a context taken in another
        thread), with `attributes` that have a value."""
        with self.tracer.start_as_current_span(name, context=parent, kind=kind) as span:
            if self.enabled and attributes:
                span.set_attributes({k: v for k, v in attributes.items() if v is not None})
            yield span

    @staticmethod
    def here() -> Any:
        """The current context, to parent spans made in a worker thread."""
        from opentelemetry import context

        return context.get_current()

    @staticmethod
    def failed(span: Span, why: str) -> None:
        span.set_status(Status(StatusCode.ERROR, why))

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # sends what is still batched


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing:
    """Tracing as the OTEL_* variables configure it; off without an OTLP endpoint."""
    environ = os.environ if environ is None else environ
    if not any(environ.get(name) for name in ENDPOINTS):
        return Tracing()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "closeloop")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


class TracedRequests:
    """ASGI middleware: one server span per HTTP request, named by its route template."""

    def __init__(self, app: Any, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.propagate import extract

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        status: list[int] = []

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        tracer = self.tracing.tracer
        with tracer.start_as_current_span(
            method, context=extract(headers), kind=trace.SpanKind.SERVER
        ) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                if status:
                    span.set_attribute("http.response.status_code", status[0])
                    if status[0] >= 500:
                        span.set_status(Status(StatusCode.ERROR))
