"""The state of the whole system as the operator console and the report show it: cases by
status, the funnel, channel health, connector health, and what messaging cost."""

from __future__ import annotations

from typing import Any

from closeloop.app.bootstrap import App


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def overview(app: App) -> dict[str, Any]:
    with app.store.read() as tx:
        statuses = tx.status_counts()
        funnel = tx.funnel()
        messages = tx.messages_by_result()
        held = tx.contact_decisions()
        consents = tx.consent_counts()
        delivery = tx.delivery_counts()
        segments, sms_cost = tx.sms_usage()
        boxes = tx.outbox_counts()
        retries = tx.writeback_retries()
        events = tx.connector_events()
        latency = tx.writeback_latency()
    channels = {}
    for channel, by_status in sorted(messages.items()):
        done, failed = by_status.get("done", 0), by_status.get("failed", 0)
        channels[channel] = {
            "sent": done,
            "failed": failed,
            "pending": by_status.get("pending", 0),
            "failure_rate": _rate(failed, done + failed),
        }
    done, failed = boxes.get(("writeback", "done"), 0), boxes.get(("writeback", "failed"), 0)
    resolved = statuses.get("resolved", 0)
    return {
        "cases": statuses,
        "funnel": funnel,
        "channels": channels,
        "delivery": delivery,
        # Of the messages whose provider said how they ended (accepted or sent is not yet an end)
        "delivery_rate": _rate(
            delivery.get("delivered", 0),
            sum(delivery.get(s, 0) for s in ("delivered", "undelivered", "failed")),
        ),
        "deferred": held["deferred"],
        "blocked": held["blocked"],
        "opt_outs": consents.get("withdrawn", 0),
        "connector": {
            "name": app.dispatcher.connector_name,
            "breaker": app.dispatcher.breaker.state,
            "succeeded": done,
            "failed": failed,
            "pending": boxes.get(("writeback", "pending"), 0),
            "success_rate": _rate(done, done + failed),
            "retries": retries,
            "breaker_openings": events.get("breaker_opened", 0),
            **latency,
        },
        "sms": {"segments": segments, "cost": float(sms_cost)},
        "cost_per_resolution": round(float(sms_cost) / resolved, 4) if resolved else None,
    }
