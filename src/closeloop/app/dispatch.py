"""Dispatchers carry committed intents out and record what happened.

An outbox row is leased (its next attempt pushed past the lease) in a short
transaction, carried out with no transaction open, and its result committed
together with the event it feeds back into the case. A process killed while
holding a lease loses nothing: the row becomes due again when the lease ends,
and its idempotency key makes the second attempt harmless.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from opentelemetry.trace import SpanKind

from closeloop.app import links
from closeloop.app.breaker import CircuitBreaker, RetryBudget
from closeloop.app.compose import approved_variables, compose
from closeloop.app.pacing import Pace
from closeloop.app.runtime import Runtime
from closeloop.app.telemetry import Telemetry
from closeloop.app.tracing import Tracing
from closeloop.channels import Channel, OutgoingMessage, SendResult, settle
from closeloop.channels.sms import measure
from closeloop.connectors import Connector, WritebackResult
from closeloop.contact import (
    ConsentRecord,
    ContactRules,
    Proposed,
    Recipient,
    Sent,
    Verdict,
    decide,
)
from closeloop.engine import (
    Case,
    Event,
    MessageDeferred,
    MessageFailed,
    MessageSent,
    WritebackFailed,
    WritebackSucceeded,
    rules_for,
    step,
    zones_of,
)
from closeloop.errors import InputError
from closeloop.ids import rng_for
from closeloop.spec.model import format_duration
from closeloop.store import Applied, OutboxItem, Tx

log = structlog.get_logger("closeloop.dispatch")
LEASE = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, drawn per (key, attempt)."""

    max_attempts: int = 6
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=1)

    def delay(self, key: str, attempt: int) -> timedelta:
        ceiling = min(self.cap, self.base * (2**attempt))
        fraction = rng_for(0, "retry", key, str(attempt)).random()
        return timedelta(seconds=ceiling.total_seconds() * fraction)


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        channels: Mapping[str, Channel],
        connector: Connector,
        retry: RetryPolicy,
        public_url: str,
        link_lifetime: timedelta,
        sms_segment_cost: Decimal = Decimal("0"),
        pace: Mapping[str, Pace] | None = None,
        concurrency: int = 1,
        telemetry: Telemetry | None = None,
        breaker: CircuitBreaker | None = None,
        budget: RetryBudget | None = None,
        writeback_deadline: timedelta = timedelta(hours=24),
        connector_name: str = "core",
    ) -> None:
        self.runtime = runtime
        self.channels = channels
        self.connector = connector
        self.connector_name = connector_name
        self.tracing = Tracing()  # no-op until bootstrap hands it the configured one
        self.breaker = breaker or CircuitBreaker()
        self.budget = budget or RetryBudget()
        # A writeback still held back (breaker open) this long after its outcome fails,
        # and its case goes to an agent with the reason.
        self.writeback_deadline = writeback_deadline
        self.retry = retry
        self.public_url = public_url
        self.link_lifetime = link_lifetime
        self.sms_segment_cost = sms_segment_cost
        self.pace = dict(pace or {})
        self.telemetry = telemetry or Telemetry()
        # Sends of one batch on this many connections at once (providers wait on the network).
        self._pool = ThreadPoolExecutor(concurrency, "closeloop-send") if concurrency > 1 else None

    def release_leases(self) -> None:
        """Make leased rows due now: for a single process resuming after a crash."""
        with self.runtime.store.transaction() as tx:
            tx.release_leases(self.runtime.clock.now())

    # -- messages ------------------------------------------------------------
    def send_messages(self, limit: int = 500) -> int:
        """Claim due messages, ask contact policy about each, send what may go now."""
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            claimed = self._lease(tx, "message", limit)
            cases = tx.load_cases(sorted({i.case_id for i in claimed}))
            verdicts = self._gate(tx, claimed, cases, now)
            prepared = self._prepare(tx, [i for i in claimed if verdicts[i.id].sends], cases)
        if not claimed:
            return 0
        results: list[tuple[OutboxItem, SendResult | Verdict]] = []
        paced: list[tuple[OutboxItem, float]] = []  # over the provider's rate: a moment later
        outgoing: list[tuple[OutboxItem, Channel, OutgoingMessage]] = []
        for item in claimed:
            verdict = verdicts[item.id]
            if not verdict.sends:
                results.append((item, verdict))
                continue
            message = prepared.get(item.id)
            if message is None:
                results.append((item, SendResult(status="failed", reason="could not render")))
                continue
            channel = self.channels.get(message.channel)
            if channel is None:
                results.append(
                    (item, SendResult(status="failed", reason=f"no {message.channel} channel"))
                )
                continue
            pace = self.pace.get(message.channel)
            wait = pace.take() if pace is not None else 0.0
            if wait:
                paced.append((item, wait))
                continue
            outgoing.append((item, channel, message))
        for (item, _, _), sent in zip(outgoing, self._send_all(outgoing), strict=True):
            results.append((item, sent))
        now = self.runtime.clock.now()
        tally = _Tally()  # counted once the results are committed
        with self.runtime.store.transaction() as tx:
            back = _FeedBack(self.runtime, tx, [i for i, _ in results], now)
            for item, wait in paced:
                back.deferrals.append(
                    (item.id, now + timedelta(seconds=wait), {"deferred": "rate_limit"})
                )
                tally.held.append((item.payload["channel"], "defer", "rate_limit"))
            sent_rows: list[dict[str, Any]] = []
            tracked: list[tuple[str, int]] = []
            opted_out: list[ConsentRecord] = []
            for item, result in results:
                payload = item.payload
                event: Event
                if isinstance(result, Verdict):
                    tally.held.append((payload["channel"], result.action, result.reason))
                    if result.action == "defer":
                        assert result.at is not None
                        back.deferrals.append(
                            (
                                item.id,
                                result.at,
                                {"deferred": result.reason, "detail": result.detail},
                            )
                        )
                        event = MessageDeferred(
                            message_id=item.idempotency_key,
                            channel=payload["channel"],
                            reason=result.reason,
                            detail=result.detail,
                            until=result.at,
                            key=f"outbox:{item.id}:deferred:{result.at.isoformat()}",
                        )
                    else:
                        back.finished.append(
                            (item.id, "failed", {"blocked": result.reason, "detail": result.detail})
                        )
                        event = MessageFailed(
                            message_id=item.idempotency_key,
                            channel=payload["channel"],
                            step=payload["step"],
                            reason=f"{result.reason}: {result.detail}",
                            key=f"outbox:{item.id}",
                        )
                    back.apply(item, event)
                    continue
                if result.status == "retry" and item.attempts + 1 < self.retry.max_attempts:
                    delay = self.retry.delay(item.idempotency_key, item.attempts)
                    if result.retry_after is not None:  # the provider said how long
                        delay = max(delay, timedelta(seconds=result.retry_after))
                    back.retries.append((item.id, now + delay, {"reason": result.reason}))
                    tally.messages.append((payload["channel"], "retry"))
                    continue
                status = "done" if result.status == "sent" else "failed"
                outcome: dict[str, Any] = {
                    "reason": result.reason,
                    "provider_id": result.provider_id,
                }
                message = prepared.get(item.id)
                if message is not None and message.channel == "sms":
                    parts = measure(message.body)
                    cost = self.sms_segment_cost * parts.segments
                    outcome.update(encoding=parts.encoding, segments=parts.segments, cost=str(cost))
                    if result.status == "sent":
                        tally.sms.append((parts.encoding, parts.segments, cost))
                back.finished.append((item.id, status, outcome))
                tally.messages.append((payload["channel"], "sent" if status == "done" else status))
                if result.failure == "opted_out":  # the provider knows of an opt-out we missed
                    opted_out.append(
                        ConsentRecord(
                            channel=payload["channel"],
                            address=payload["address"],
                            granted=False,
                            at=now,
                            actor="provider",
                            method=f"provider refused: {result.reason}",
                            source=payload["channel"],
                        )
                    )
                if result.status == "sent" and result.tracked:
                    tracked.append((result.provider_id, item.id))
                if result.status == "sent":
                    case = cases.get(item.case_id)
                    sent_rows.append(
                        {
                            "account_id": case.account_id if case else "",
                            "case_id": item.case_id,
                            "channel": payload["channel"],
                            "address": payload["address"],
                            "priority": payload.get("priority", "nudge"),
                            "sent_at": now,
                        }
                    )
                    event = MessageSent(
                        message_id=item.idempotency_key,
                        channel=payload["channel"],
                        key=f"outbox:{item.id}",
                    )
                else:
                    event = MessageFailed(
                        message_id=item.idempotency_key,
                        channel=payload["channel"],
                        step=payload["step"],
                        reason=result.reason,
                        key=f"outbox:{item.id}",
                    )
                back.apply(item, event)
            tx.log_sent(sent_rows)
            tx.track_deliveries(tracked, now)
            tx.record_consents(opted_out)
            back.commit()
        tally.count(self.telemetry)
        return len(claimed)

    def _execute(self, item: OutboxItem) -> WritebackResult:
        """One writeback call to the system of record (a span, when tracing)."""
        payload = item.payload
        with self.tracing.span(
            f"writeback {payload['operation']}",
            {
                "closeloop.case_id": item.case_id,
                "closeloop.operation": payload["operation"],
                "closeloop.idempotency_key": item.idempotency_key,
                "closeloop.attempt": item.attempts + 1,
                "closeloop.connector": self.connector_name,
            },
            kind=SpanKind.CLIENT,
        ) as span:
            try:
                result = self.connector.execute(
                    payload["operation"],
                    payload.get("argument"),
                    {**payload["data"], "outcome": payload.get("outcome")},
                    item.idempotency_key,
                )
            except Exception as exc:  # a connector bug must not lose the outcome
                log.exception("connector_crashed", key=item.idempotency_key)
                result = WritebackResult(ok=False, retryable=True, error=f"connector error: {exc}")
            if not result.ok and not result.pending:
                self.tracing.failed(span, result.error or "failed")
            return result

    def send_now(self, message: OutgoingMessage) -> SendResult:
        """Send one message at once, outside the outbox (a one-time code the customer asked for)."""
        channel = self.channels.get(message.channel)
        if channel is None:
            return SendResult(status="failed", reason=f"no {message.channel} channel")
        result = channel.send(message)
        settle([channel])
        return result

    def _send_all(
        self, outgoing: list[tuple[OutboxItem, Channel, OutgoingMessage]]
    ) -> list[SendResult]:
        """Hand every message to its provider, on several connections when configured."""
        parent = self.tracing.here()
        if self._pool is None or len(outgoing) < 2:
            results = [self._send_one(item, ch, message, parent) for item, ch, message in outgoing]
        else:
            results = list(
                self._pool.map(lambda job: self._send_one(job[0], job[1], job[2], parent), outgoing)
            )
        settle(channel for _, channel, _ in outgoing)
        return results

    def _send_one(
        self, item: OutboxItem, channel: Channel, message: OutgoingMessage, parent: Any
    ) -> SendResult:
        if not self.tracing.enabled:
            return channel.send(message)
        with self.tracing.span(
            f"send {message.channel}",
            {
                "closeloop.case_id": item.case_id,
                "closeloop.channel": message.channel,
                "closeloop.idempotency_key": item.idempotency_key,
            },
            kind=SpanKind.CLIENT,
            parent=parent,
        ) as span:
            result = channel.send(message)
            span.set_attribute("closeloop.result", result.status)
            if result.status == "failed":
                self.tracing.failed(span, result.reason or "failed")
            return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _gate(
        self, tx: Tx, claimed: list[OutboxItem], cases: dict[str, Case], now: datetime
    ) -> dict[int, Verdict]:
        """Contact policy's verdict on each claimed message, as of `now`.

        What one message is allowed counts against the next of the same
        customer in this batch, so a batch never overruns a cap.
        """
        accounts = {c.account_id for c in cases.values()}
        ledger = tx.consents_for((i.payload["channel"], i.payload["address"]) for i in claimed)
        ledger += self._consent_from_accounts(tx, claimed, cases, ledger)
        longest = max(
            (cap.per for c in cases.values() for cap in self._rules(c, tx).caps if cap.per),
            default=None,
        )
        sent = tx.sent_since(accounts, now - longest) if longest else {}
        inbound = tx.last_inbound(
            ("whatsapp", i.payload["address"])
            for i in claimed
            if i.payload["channel"] == "whatsapp"
        )
        waiting = tx.waiting_required(accounts) if longest else {}
        rollouts = self.runtime.rollouts
        names = {self.runtime.spec_for(c, tx).spec.workflow for c in cases.values()}
        paused = rollouts.paused(tx, names) if rollouts is not None else set()
        verdicts: dict[int, Verdict] = {}
        for item in claimed:
            case = cases.get(item.case_id)
            if case is None:
                verdicts[item.id] = Verdict(action="block", reason="no_consent", detail="no case")
                continue
            if case.status.terminal:  # resolved, expired or opted out while it waited
                verdicts[item.id] = Verdict(
                    action="block",
                    reason="case_closed",
                    detail=f"the case closed ({case.status.value}) before the message went",
                )
                continue
            if (
                paused
                and case.cohort not in ("control", "outside")
                and self.runtime.spec_for(case, tx).spec.workflow in paused
            ):
                verdicts[item.id] = Verdict(
                    action="defer",
                    reason="rollout_halted",
                    detail="the rollout is halted: its outreach is paused",
                    at=now + timedelta(hours=1),
                )
                continue
            payload = item.payload
            compiled = self.runtime.spec_for(case, tx)
            template = compiled.spec.templates.get(payload["template"])
            contact = next(
                (
                    c
                    for c in case.contacts
                    if c.channel == payload["channel"] and c.address == payload["address"]
                ),
                None,
            )
            message = Proposed(
                case_id=case.id,
                channel=payload["channel"],
                address=payload["address"],
                priority=payload.get("priority", "nudge"),
                account_consent=contact.consent if contact else False,
                approved_template=template.approved_name if template else None,
            )
            recipient = Recipient(
                zones=zones_of(case),
                consents=tuple(r for r in ledger if r.address == payload["address"]),
                sent=tuple(sent.get(case.account_id, ())),
                waiting_required=waiting.get(case.account_id, 0),
                last_inbound={
                    channel: at
                    for (channel, address), at in inbound.items()
                    if address == payload["address"]
                },
            )
            verdict = decide(message, recipient, self._rules(case, tx), now)
            verdicts[item.id] = verdict
            if verdict.sends and case.account_id in sent:
                sent[case.account_id].append(
                    Sent(
                        at=now, case_id=case.id, channel=message.channel, priority=message.priority
                    )
                )
        return verdicts

    @staticmethod
    def _consent_from_accounts(
        tx: Tx, claimed: list[OutboxItem], cases: dict[str, Case], ledger: list[ConsentRecord]
    ) -> list[ConsentRecord]:
        """Put the system of record's consent in the ledger the first time it is relied on.

        An address with no ledger record is contacted on the strength of the
        account's consent flag; recording that (who: the system of record,
        when: as the case opened) keeps the evidence beside every later
        change. A missing or refused consent is not recorded: it blocks.
        """
        known = {(r.channel, r.address) for r in ledger}
        added: dict[tuple[str, str], ConsentRecord] = {}
        for item in claimed:
            case = cases.get(item.case_id)
            pair = (item.payload["channel"], item.payload["address"])
            if case is None or pair in known or pair in added:
                continue
            given = next(
                (c for c in case.contacts if c.consent and (c.channel, c.address) == pair), None
            )
            if given is not None:
                added[pair] = ConsentRecord(
                    channel=pair[0],
                    address=pair[1],
                    granted=True,
                    at=case.opened_at,
                    actor="system_of_record",
                    method="account record",
                    source="system of record",
                    notice_version=given.notice,
                    account_id=case.account_id,
                )
        tx.record_consents(list(added.values()))
        return list(added.values())

    def _rules(self, case: Case, tx: Tx) -> ContactRules:
        return rules_for(self.runtime.spec_for(case, tx), case)

    def _lease(self, tx: Tx, kind: str, limit: int) -> list[OutboxItem]:
        """Claim due rows of `kind` and hold them for the length of a lease."""
        now = self.runtime.clock.now()
        claimed = tx.claim_outbox(kind, now, limit)
        tx.lease_outbox([i.id for i in claimed], now + LEASE)
        return claimed

    def _prepare(
        self, tx: Tx, claimed: list[OutboxItem], cases: dict[str, Case]
    ) -> dict[int, OutgoingMessage]:
        """Render each message with a fresh link (and unsubscribe link), by outbox id."""
        now = self.runtime.clock.now()
        prepared: dict[int, OutgoingMessage] = {}
        for item in claimed:
            case = cases.get(item.case_id)
            if case is None:
                continue
            spec = self.runtime.spec_for(case, tx).spec
            template = spec.templates[item.payload["template"]]
            url = links.issue(
                tx,
                case_id=case.id,
                channel=item.payload["channel"],
                now=now,
                lifetime=self.link_lifetime,
                public_url=self.public_url,
            )
            unsubscribe = None
            if item.payload["channel"] == "email":
                unsubscribe = links.issue_unsubscribe(
                    tx,
                    channel="email",
                    address=item.payload["address"],
                    account_id=case.account_id,
                    case_id=case.id,
                    now=now,
                    public_url=self.public_url,
                )
            try:
                subject, body = compose(case, template, link=url, unsubscribe_url=unsubscribe)
            except InputError as exc:
                log.warning("template_failed", case_id=case.id, error=str(exc))
                continue
            prepared[item.id] = OutgoingMessage(
                idempotency_key=item.idempotency_key,
                case_id=case.id,
                channel=item.payload["channel"],
                address=item.payload["address"],
                subject=subject,
                body=body,
                unsubscribe_url=unsubscribe,
                template_id=template.approved_name,
                template_variables=approved_variables(case, template, link=url)
                if template.approved_name
                else {},
                link=url,
            )
        return prepared

    # -- writebacks ----------------------------------------------------------
    def run_writebacks(self, limit: int = 500) -> int:
        with self.runtime.store.transaction() as tx:
            claimed = self._lease(tx, "writeback", limit)
        if not claimed:
            return 0
        # (item, result, whether the breaker was open once the result was counted)
        results: list[tuple[OutboxItem, WritebackResult, bool]] = []
        held: list[tuple[OutboxItem, datetime, str]] = []  # (item, until, why): not an attempt
        opened: list[tuple[datetime, str]] = []
        took: dict[int, float] = {}  # each call's wall-clock seconds
        for item in claimed:
            now = self.runtime.clock.now()
            if not self.breaker.allows(now):
                held.append((item, self.breaker.reopens_at(now), "circuit_open"))
                continue
            if not self.budget.allows(item.attempts > 0, now):
                held.append((item, now + timedelta(seconds=5), "retry_budget"))
                continue
            payload = item.payload
            began = time.perf_counter()  # the core's latency, on the wall clock
            result = self._execute(item)
            took[item.id] = round(time.perf_counter() - began, 4)
            self.telemetry.writeback_seconds.labels(
                payload["operation"],
                "ok" if result.ok
                else "pending" if result.pending
                else "retry" if result.retryable
                else "failed",
            ).observe(took[item.id])  # fmt: skip
            answered = self.runtime.clock.now()
            healthy = result.ok or result.pending or not result.retryable
            if self.breaker.record(healthy, answered):
                opened.append((answered, result.error))
            results.append((item, result, self.breaker.state != "closed"))
        settle([self.connector])  # a connector that writes its round at once (a file) does so
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            for at, why in opened:
                tx.log_connector(self.connector_name, "breaker_opened", at, why)
                log.warning("breaker_opened", connector=self.connector_name, reason=why)
            items = [i for i, _, _ in results] + [h[0] for h in held]
            back = _FeedBack(self.runtime, tx, items, now)

            def overdue(item: OutboxItem, why: str, *, called: bool = False) -> bool:
                """Past the deadline: the writeback fails and its case goes to an agent."""
                if now - (item.created_at or now) < self.writeback_deadline:
                    return False
                reason = (
                    f"not written back within {format_duration(self.writeback_deadline)}: "
                    f"the system of record is unavailable ({why})"
                )
                # An attempt that was never answered cleanly may have reached the core.
                outcome = {"error": reason, "retryable": True, "called": called}
                back.finished.append((item.id, "failed", outcome))
                back.apply(
                    item,
                    WritebackFailed(
                        operation_key=item.idempotency_key, reason=reason, key=feedback_key(item)
                    ),
                )
                return True

            for item, until, why in held:
                if not overdue(item, why.replace("_", " ")):
                    back.deferrals.append((item.id, until, {"held": why}))
            for item, result, core_down in results:
                if result.pending:  # taken, waiting for the core to confirm it
                    if not overdue(item, f"not confirmed: {result.error}", called=True):
                        until = now + timedelta(seconds=result.retry_after or 900)
                        back.deferrals.append((item.id, until, {"awaiting": result.error}))
                    continue
                if not result.ok and result.retryable and core_down:
                    # The core's failure, not the writeback's (the probe, or the one that
                    # opened the breaker): it waits for the core, up to its deadline,
                    # without using up its attempts.
                    if not overdue(item, f"last answer: {result.error}", called=True):
                        until = self.breaker.reopens_at(now)
                        back.deferrals.append(
                            (item.id, until, {"held": "circuit_open", "error": result.error})
                        )
                    continue
                if (
                    not result.ok
                    and result.retryable
                    and item.attempts + 1 < self.retry.max_attempts
                ):
                    backoff = self.retry.delay(item.idempotency_key, item.attempts)
                    asked = timedelta(seconds=result.retry_after or 0)  # the core's Retry-After
                    at = now + max(backoff, asked)
                    back.retries.append((item.id, at, {"error": result.error}))
                    continue
                back.finished.append(
                    (
                        item.id,
                        "done" if result.ok else "failed",
                        {
                            "reference": result.reference,
                            "error": result.error,
                            "retryable": result.retryable,
                            "seconds": took[item.id],  # the last call's, for connector health
                        },
                    )
                )
                event: Event
                if result.ok:
                    event = WritebackSucceeded(
                        operation_key=item.idempotency_key,
                        reference=result.reference,
                        key=feedback_key(item),
                    )
                else:
                    reason = (
                        result.error
                        if not result.retryable
                        else (f"gave up after {item.attempts + 1} attempts: {result.error}")
                    )
                    event = WritebackFailed(
                        operation_key=item.idempotency_key, reason=reason, key=feedback_key(item)
                    )
                back.apply(item, event)
            back.commit()
        return len(claimed)


def feedback_key(item: OutboxItem) -> str:
    """The input key of a writeback's result: one per outbox row and agent's retry of it."""
    retry = item.payload.get("retry")
    return f"outbox:{item.id}:retry{retry}" if retry else f"outbox:{item.id}"


def writeback_state(row: Mapping[str, Any]) -> str:
    """What an agent needs to know of a writeback: succeeded, failed, unknown or pending.

    Failed means the core refused it (an answer no retry fixes), or it never
    reached the core: nothing was made. Unknown means closeloop gave up on
    an attempt that was never answered cleanly (a timeout, a dropped
    connection, a broken answer): the core may hold the effect, under the
    writeback's idempotency key, and someone has to look.
    """
    if row["status"] == "done":
        return "succeeded"
    if row["status"] != "failed":
        return "pending"
    result = row.get("result") or {}
    reached = row.get("attempts", 0) > 0 or result.get("called", False)
    return "unknown" if result.get("retryable") and reached else "failed"


def writeback_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A writeback as `case show` and the agent's case page show it."""
    result = row.get("result") or {}
    return {
        "operation": row["operation"],
        "argument": row["argument"],
        "state": writeback_state(row),
        "attempts": row["attempts"],
        "idempotency_key": row["idempotency_key"],
        "reference": result.get("reference") or None,
        "last_error": result.get("error") or None,
    }


@dataclass
class _Tally:
    """What one batch of sends adds to the metrics, applied after its commit."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    held: list[tuple[str, str, str]] = field(default_factory=list)
    sms: list[tuple[str, int, Decimal]] = field(default_factory=list)

    def count(self, telemetry: Telemetry) -> None:
        for channel, result in self.messages:
            telemetry.messages.labels(channel, result).inc()
        for channel, action, reason in self.held:
            telemetry.held.labels(channel, action, reason).inc()
        for encoding, segments, cost in self.sms:
            telemetry.count_sms(encoding, segments, cost)


class _FeedBack:
    """Dispatch results of one batch, written in one transaction.

    Each result closes (or reschedules) its outbox row and is applied to its
    case once, keyed by the outbox row, so a result recorded before a crash
    is not applied again after it.
    """

    def __init__(self, runtime: Runtime, tx: Tx, items: list[OutboxItem], now: datetime) -> None:
        self.runtime, self.tx, self.now = runtime, tx, now
        self.cases: dict[str, Case] = tx.load_cases(sorted({i.case_id for i in items}))
        # Results are keyed by outbox row; a deferral adds its time to the key.
        self.seen = tx.seen_keys([(i.case_id, feedback_key(i)) for i in items])
        self.finished: list[tuple[int, str, dict[str, Any]]] = []
        self.retries: list[tuple[int, datetime, dict[str, Any]]] = []
        self.deferrals: list[tuple[int, datetime, dict[str, Any]]] = []
        self.batch: list[Applied] = []

    def apply(self, item: OutboxItem, event: Event) -> None:
        case = self.cases.get(item.case_id)
        if case is None or (case.id, event.key) in self.seen:
            return
        decision = step(case, event, self.runtime.spec_for(case, self.tx), self.now)
        self.cases[case.id] = decision.case
        self.batch.append(Applied(decision=decision, dedupe_key=event.key))

    def commit(self) -> None:
        self.tx.finish_outbox(self.finished, self.now)
        self.tx.retry_outbox(self.retries, self.now)
        self.tx.defer_outbox(self.deferrals, self.now)
        self.tx.commit_decisions(self.batch, self.now)
