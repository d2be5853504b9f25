"""What providers tell closeloop: delivery receipts and customers' replies.

A delivery receipt moves a sent message's delivery status forward (never
back: callbacks can arrive out of order); a message that ends undelivered
or failed feeds a permanent failure to its case, so the cadence falls back
to another channel, and a carrier's "opted out" answer is recorded in the
consent ledger. A customer's reply is kept (it opens WhatsApp's 24-hour
window) and its keywords are honoured: STOP and its synonyms withdraw
consent for that number (one confirmation, at once, never a second), HELP
and INFO answer with the program's details, START and UNSTOP give consent
back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from closeloop.app.runtime import Runtime
from closeloop.channels.twilio import classify
from closeloop.contact import ConsentRecord, in_force
from closeloop.engine import MessageFailed

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPT OUT", "OPTOUT"}
)
HELP_WORDS = frozenset({"HELP", "INFO"})
START_WORDS = frozenset({"START", "UNSTOP"})
_RANK = {
    "accepted": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "read": 5,
}


def keyword(body: str) -> str | None:
    """``stop``, ``help`` or ``start`` when the whole message is such a keyword."""
    words = " ".join(re.sub(r"[^\w\s]", " ", body).split()).upper()
    if words in STOP_WORDS:
        return "stop"
    if words in HELP_WORDS:
        return "help"
    if words in START_WORDS:
        return "start"
    return None


@dataclass(frozen=True, kw_only=True)
class Program:
    """What a HELP reply says (CTIA: name, how to get help, frequency, costs, STOP)."""

    name: str
    help: str
    frequency: str
    notice_version: str | None = None  # of the terms STOP and START answer to

    def help_text(self) -> str:
        return (
            f"{self.name}: {self.help}. {self.frequency}. Msg & data rates may apply. "
            "Reply STOP to opt out."
        )

    def stop_text(self) -> str:
        return (
            f"{self.name}: you are unsubscribed and will get no more messages. "
            "Reply START to subscribe again."
        )

    def start_text(self) -> str:
        return f"{self.name}: you are subscribed again. Reply HELP for help, STOP to opt out."


def twiml(*messages: str) -> str:
    body = "".join(f"<Message>{escape(m)}</Message>" for m in messages)
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'


class Inbound:
    def __init__(self, runtime: Runtime, program: Program) -> None:
        self.runtime = runtime
        self.program = program

    def delivery_receipt(self, provider_id: str, status: str, error_code: str | None) -> None:
        """Record a delivery status; a final failure goes to the case as a failed message."""
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            receipt = tx.delivery_receipt(provider_id)
            if receipt is None:
                return  # not a message of ours, or its send was never recorded
            if _RANK.get(status, 0) <= _RANK.get(receipt["status"], 0):
                return  # an older status arriving late
            tx.update_delivery_receipt(provider_id, status, error_code, now)
            if status not in ("undelivered", "failed"):
                return
            item = tx.outbox_item(receipt["outbox_id"])
            if item is None:
                return
            code = int(error_code) if error_code and error_code.isdigit() else None
            kind = classify(code)
            payload = item.payload
            if kind == "opted_out":
                method = f"provider reported opt-out ({error_code})"
                self._consent(
                    tx, payload["channel"], payload["address"], False, method, actor="carrier"
                )
            event = MessageFailed(
                message_id=item.idempotency_key,
                channel=payload["channel"],
                step=payload["step"],
                reason=f"{kind}: {status} (error {error_code or 'none'})",
                key=f"delivery:{provider_id}",
                actor="channel",
            )
            self.runtime.apply(item.case_id, event, tx=tx)

    def message(self, provider_id: str, sender: str, to: str, body: str) -> str:
        """Keep a customer's message and answer its keyword; returns TwiML."""
        channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
        address = sender.removeprefix("whatsapp:")
        word = keyword(body)
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            if not tx.record_inbound(
                provider_id=provider_id,
                channel=channel,
                address=address,
                to_address=to.removeprefix("whatsapp:"),
                body=body,
                keyword=word,
                at=now,
            ):
                return twiml()  # a retried webhook: answered the first time
            standing = in_force(tx.consents_for([(channel, address)]), channel, address, now)
            if word == "stop":
                if standing is not None and not standing.granted:
                    return twiml()  # at most one confirmation
                self._consent(tx, channel, address, False, f"{channel} keyword {body.strip()}")
                return twiml(self.program.stop_text())
            if word == "start":
                self._consent(tx, channel, address, True, f"{channel} keyword {body.strip()}")
                return twiml(self.program.start_text())
            if word == "help":
                return twiml(self.program.help_text())
        return twiml()

    def _consent(
        self,
        tx: Any,
        channel: str,
        address: str,
        granted: bool,
        method: str,
        actor: str = "customer",
    ) -> None:
        tx.record_consent(
            ConsentRecord(
                channel=channel,
                address=address,
                granted=granted,
                at=self.runtime.clock.now(),
                actor=actor,
                method=method,
                source="twilio",
                notice_version=self.program.notice_version,
            )
        )
