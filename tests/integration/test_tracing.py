"""OpenTelemetry traces over OTLP/HTTP to a real collector endpoint on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from closeloop.app import App, Settings, build
from closeloop.app.links import token_from_url
from closeloop.clock import SimClock
from closeloop.web import create_api
from tests.conftest import EXAMPLE, NOW, bearer
from tests.integration.test_runtime import ACCOUNT, trigger
from tests.servers import Served, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector:
    """What an OpenTelemetry collector's OTLP/HTTP receiver takes: protobuf export requests."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        decoded = ExportTraceServiceRequest.FromString(await request.body())
        with self.lock:
            for resource in decoded.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return Response(b"", media_type="application/x-protobuf")


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    collector = Collector()
    served = Served(collector.app, free_port())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", served.url)
    yield collector
    served.stop()


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_requests_intake_sends_and_writebacks_are_traced(
    collector: Collector, tmp_path: Path
) -> None:
    app: App = build(Settings(data_dir=tmp_path, workflows=[EXAMPLE]), clock=SimClock(NOW))
    app.ledger.add_accounts([ACCOUNT])
    assert app.tracing.enabled
    client = TestClient(create_api(app), base_url="https://testserver")
    body = {"id": "t1", "type": "payment.failed", "data": dict(trigger("t1").data)}
    parent = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    answer = client.post("/v1/triggers", json=body, headers={**bearer(app, "operator"), **parent})
    case_id = answer.json()["case_id"]
    app.work()  # the first message goes
    link = app.service.issue_link(case_id, "sms")
    client.get(f"/m/{token_from_url(link)}")  # a path with a token in it
    visit = app.service.redeem(token_from_url(link), key="o")
    facts = {"date_of_birth": "1980-02-03", "postal_code": "10001"}
    app.service.verify_identity(visit.case_id, facts, key="v")
    app.service.submit(case_id, "pay_now", {"amount": "120.50", "method": "pm_1"}, key="p")
    app.work()  # the writebacks
    app.close()  # flushes the batch of spans to the collector

    names = [s.name for s in collector.spans]
    assert "POST /v1/triggers" in names and "intake" in names
    assert "GET /m/{token}" in names  # the route, never the token
    assert any(n.startswith("send ") for n in names)
    assert any(n.startswith("writeback ") for n in names)
    (server,) = [s for s in collector.spans if s.name == "POST /v1/triggers"]
    assert server.trace_id.hex() == TRACE_ID  # the caller's trace goes on
    (intake,) = [s for s in collector.spans if s.name == "intake"]
    assert intake.trace_id == server.trace_id and intake.parent_span_id == server.span_id
    assert attributes(server)["http.response.status_code"] == 200
    writeback = next(s for s in collector.spans if s.name.startswith("writeback "))
    assert attributes(writeback)["closeloop.case_id"] == case_id
    everything = " ".join(f"{s.name} {attributes(s)}" for s in collector.spans)
    assert token_from_url(link) not in everything and "1980-02-03" not in everything
    assert "ana@example.com" not in everything and "+12125550123" not in everything


def test_without_an_endpoint_nothing_is_traced(tmp_path: Path) -> None:
    app = build(Settings(data_dir=tmp_path, workflows=[EXAMPLE]), clock=SimClock(NOW))
    try:
        assert not app.tracing.enabled
    finally:
        app.close()
