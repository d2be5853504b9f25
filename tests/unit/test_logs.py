"""Structured logs: JSON lines, never personal data or tokens."""

from __future__ import annotations

import io
import json

import structlog

from closeloop.app.telemetry import configure_logs


def test_logs_are_json_lines_without_personal_data_or_tokens() -> None:
    stream = io.StringIO()
    configure_logs(stream)
    try:
        log = structlog.get_logger("closeloop.test")
        log.warning(
            "send_failed",
            case_id="case_1",
            email="ana@example.com",
            address="+12125550123",
            error="POST https://core.example/v1/x failed for ana@example.com, +1 212 555 0123, "
            "link https://pay.example/m/AbCdEf123456789xyz, Authorization: Bearer s3cr3t.t0k3n",
        )
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "send_failed" and record["level"] == "warning"
    assert record["case_id"] == "case_1" and record["timestamp"].endswith("Z")
    assert record["email"] == record["address"] == "[redacted]"
    for secret in ("ana@example.com", "555 0123", "AbCdEf123456789xyz", "s3cr3t"):
        assert secret not in line, secret
    assert "/m/[token]" in record["error"] and "Bearer [token]" in record["error"]
