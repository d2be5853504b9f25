"""What a customer can do from a message: the service behind every mini-app.

The web mini-apps and the simulator's customers call these same functions,
so a simulated week exercises the production path. Each action carries a
key; an action delivered twice is applied once.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from closeloop import policy
from closeloop.app import links
from closeloop.app.runtime import Runtime
from closeloop.channels import OutgoingMessage, SendResult
from closeloop.contact import ConsentRecord
from closeloop.engine import (
    Case,
    Decision,
    Disputed,
    IdentityChecked,
    LinkOpened,
    OptedOut,
    OutcomeSubmitted,
)
from closeloop.errors import NotFound, StateError

_SAME_RESPONSE = "this link is not valid; ask for a new one"


CODE_LIFETIME = timedelta(minutes=10)
CODE_SENDS = 3  # codes per case ...
CODE_WINDOW = timedelta(minutes=15)  # ... in this long
# A one-time code's message key: `{case_id}{CODE_MARK}{random}`. It is sent at once,
# outside the outbox, so whoever counts messages (the demo) tells codes apart by it.
CODE_MARK = ".code."
_CODE_TEXT = {
    "en": {
        "subject": "{brand}: your one-time code",
        "body": "{brand}: your code is {code}. It expires in 10 minutes. "
        "We will never ask you for it.",
    },
    "es": {
        "subject": "{brand}: su código de un solo uso",
        "body": "{brand}: su código es {code}. Caduca en 10 minutos. Nunca se lo pediremos.",
    },
}


@dataclass(frozen=True, kw_only=True)
class CodeSent:
    channel: str
    to: str  # masked: "•••• 0123", "a•••@example.com"


def _code_target(case: Case, channel: str) -> tuple[str, str] | None:
    """Where a code goes: the link's channel when it has an address, else a phone, else email."""
    contacts = {c.channel: c.address for c in case.contacts}
    phone = contacts.get("sms") or contacts.get("whatsapp")
    if channel == "email" and contacts.get("email"):
        return "email", contacts["email"]
    if phone:
        return "sms", phone
    if contacts.get("email"):
        return "email", contacts["email"]
    return None


def _masked(channel: str, address: str) -> str:
    if channel == "email":
        local, _, domain = address.partition("@")
        return f"{local[:1]}•••@{domain}"
    return f"•••• {address[-4:]}"


@dataclass(frozen=True, kw_only=True)
class Visit:
    """A redeemed link: the case the customer may act on."""

    case_id: str
    channel: str


class CustomerService:
    def __init__(
        self,
        runtime: Runtime,
        *,
        public_url: str,
        link_lifetime: timedelta,
        notice_version: str | None = None,
        identity_key: bytes | None = None,
        send: Callable[[OutgoingMessage], SendResult] | None = None,
        sender_name: str = "closeloop",
    ) -> None:
        self.runtime = runtime
        self.identity_key = identity_key or secrets.token_bytes(32)
        self.send = send  # one-time codes go out at once, through the channel layer
        self.sender_name = sender_name
        self.public_url = public_url
        self.link_lifetime = link_lifetime
        self.notice_version = notice_version  # recorded with every consent change

    def issue_link(self, case_id: str, channel: str = "sms") -> str:
        """A fresh link for the case (what an agent's "send a new link" calls)."""
        self.runtime.case(case_id)
        with self.runtime.store.transaction() as tx:
            return links.issue(
                tx,
                case_id=case_id,
                channel=channel,
                now=self.runtime.clock.now(),
                lifetime=self.link_lifetime,
                public_url=self.public_url,
            )

    def redeem(self, token: str, *, key: str) -> Visit:
        """Use a link once. Unknown, expired and used links fail alike."""
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            link = tx.link(links.token_hash(token))
            if link is None:
                raise NotFound(_SAME_RESPONSE)
            visit = Visit(case_id=link["case_id"], channel=link["channel"])
            if tx.seen(visit.case_id, key):
                return visit
            if link["expires_at"] <= now or not tx.use_link(links.token_hash(token), now):
                raise NotFound(_SAME_RESPONSE)
            decision = self.runtime.apply(
                visit.case_id, LinkOpened(channel=visit.channel, actor="customer", key=key), tx=tx
            )
            if decision.rejected and decision.rejected != "already applied":
                raise StateError(f"this case can no longer be handled here: {decision.rejected}")
            return visit

    def verify_identity(self, case_id: str, answers: Mapping[str, str], *, key: str) -> bool:
        """Check known facts against the system of record; True when all of them match.

        Each answer and each fact on record is normalised and compared as a
        keyed hash (HMAC-SHA256), in constant time; the result never says
        which fact was wrong.
        """
        case = self.runtime.case(case_id)
        compiled = self.runtime.spec_for(case)
        account = self.runtime.connector.read_account(case.account_id)
        expected = account.secrets if account else {}
        wanted = compiled.spec.identity.known_facts
        matches = [
            hmac.compare_digest(
                self._keyed(answers.get(fact, "")),
                self._keyed(expected.get(fact) or None, missing=True),
            )
            for fact in wanted
        ]
        passed = bool(wanted) and all(matches)
        self._checked(
            self.runtime.apply(
                case_id,
                IdentityChecked(
                    passed=passed,
                    method="known_facts",
                    level="known_facts",
                    actor="customer",
                    key=key,
                ),
            )
        )
        return passed

    # -- one-time codes -------------------------------------------------------
    def send_code(self, case_id: str, channel: str, *, locale: str = "en") -> CodeSent:
        """Send a fresh 6-digit code to a contact point on file (the link's channel first).

        At most `CODE_SENDS` codes per case in `CODE_WINDOW`; a code is valid for
        `CODE_LIFETIME`, once, and only its keyed hash is stored. Raises
        StateError when the cap is reached or no contact point can take it.
        """
        if self.send is None:
            raise StateError("one-time codes cannot be sent: no channel is configured")
        case = self.runtime.case(case_id)
        target = _code_target(case, channel)
        if target is None:
            raise StateError("there is no phone or email on file to send a code to")
        via, address = target
        now = self.runtime.clock.now()
        code = f"{secrets.randbelow(10**6):06d}"
        with self.runtime.store.transaction() as tx:
            if tx.codes_sent_since(case_id, now - CODE_WINDOW) >= CODE_SENDS:
                raise StateError("too many codes were sent; wait a few minutes")
            tx.save_code(
                {
                    "case_id": case_id,
                    "channel": via,
                    "address": address,
                    "code_hash": self._keyed(code).hex(),
                    "created_at": now,
                    "expires_at": now + CODE_LIFETIME,
                    "used_at": None,
                }
            )
        words = _CODE_TEXT.get(locale, _CODE_TEXT["en"])
        result = self.send(
            OutgoingMessage(
                idempotency_key=f"{case_id}{CODE_MARK}{secrets.token_hex(8)}",
                case_id=case_id,
                channel=via,
                address=address,
                subject=words["subject"].format(brand=self.sender_name),
                body=words["body"].format(brand=self.sender_name, code=code),
                link="",
            )
        )
        if result.status != "sent":
            raise StateError(f"the code could not be sent: {result.reason or result.status}")
        return CodeSent(channel=via, to=_masked(via, address))

    def code_destination(self, case_id: str, channel: str) -> str:
        """Where codes for this case go, masked ("•••• 0123"); empty if nowhere."""
        target = _code_target(self.runtime.case(case_id), channel)
        return _masked(*target) if target else ""

    def check_code(self, case_id: str, code: str, *, key: str) -> bool:
        """Check a one-time code; every check, right or wrong, is in the case's history."""
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            live = tx.live_code(case_id, now)
            given = self._keyed("".join(ch for ch in code if ch.isdigit()))
            passed = (
                live is not None
                and hmac.compare_digest(given.hex(), live["code_hash"])
                and tx.use_code(live["id"], now)
            )
            event = IdentityChecked(
                passed=bool(passed),
                method="one_time_code",
                level="one_time_code",
                actor="customer",
                key=key,
            )
            self._checked(self.runtime.apply(case_id, event, tx=tx))
        return bool(passed)

    def options(self, case: Case | str) -> list[policy.OfferedOption]:
        """What this case may be offered now (give the case itself when it is at hand)."""
        if isinstance(case, str):
            case = self.runtime.case(case)
        return policy.options(self.runtime.spec_for(case), case.data, case.account)

    def submit(
        self,
        case_id: str,
        option: str,
        values: Mapping[str, Any],
        *,
        key: str,
        one_time_code_verified: bool = False,
    ) -> Decision:
        """Submit the customer's choice; StateError says why it was not accepted."""
        event = OutcomeSubmitted(
            option=option,
            values=dict(values),
            actor="customer",
            key=key,
            one_time_code_verified=one_time_code_verified,
        )
        return self._checked(self.runtime.apply(case_id, event))

    def dispute(self, case_id: str, reason: str, *, key: str) -> Decision:
        return self._checked(
            self.runtime.apply(case_id, Disputed(reason=reason, actor="customer", key=key))
        )

    def opt_out(
        self,
        case_id: str,
        channel: str,
        *,
        key: str,
        method: str = "mini-app opt-out",
        address: str | None = None,
    ) -> Decision:
        """Withdraw consent for the customer's address on `channel`, for every workflow.

        The withdrawal is recorded in the consent ledger even when the case has
        already ended; a live case stops as opted out.
        """
        case = self.runtime.case(case_id)
        if address is None:
            contact = next((c for c in case.contacts if c.channel == channel), None)
            address = contact.address if contact else None
        now = self.runtime.clock.now()
        with self.runtime.store.transaction() as tx:
            if address is not None and not tx.seen(case_id, key):
                tx.record_consent(
                    ConsentRecord(
                        channel=channel,
                        address=address,
                        granted=False,
                        at=now,
                        actor="customer",
                        method=method,
                        source=case.workflow,
                        notice_version=self.notice_version,
                        account_id=case.account_id,
                    )
                )
            event = OptedOut(channel=channel, actor="customer", key=key)
            decision = self.runtime.apply(case_id, event, tx=tx)
        if decision.rejected and decision.case.status.terminal:
            return decision  # the case had ended; the withdrawal still stands
        return self._checked(decision)

    def unsubscribe(self, token: str) -> dict[str, str]:
        """One-click unsubscribe (RFC 8058): no login, no cookie; repeating it is harmless.

        Raises NotFound for an unknown token.
        """
        hashed = links.token_hash(token)
        with self.runtime.store.read() as tx:
            target = tx.unsubscribe_target(hashed)
        if target is None:
            raise NotFound(_SAME_RESPONSE)
        if target["used_at"] is None:
            self.opt_out(
                target["case_id"],
                target["channel"],
                key=f"unsubscribe:{hashed}",
                method="one-click unsubscribe (RFC 8058)",
                address=target["address"],
            )
            with self.runtime.store.transaction() as tx:
                tx.use_unsubscribe(hashed, self.runtime.clock.now())
        return {"channel": target["channel"], "address": target["address"]}

    def unsubscribe_target(self, token: str) -> dict[str, str]:
        """What a token would unsubscribe (for the confirmation page); changes nothing."""
        with self.runtime.store.read() as tx:
            target = tx.unsubscribe_target(links.token_hash(token))
        if target is None:
            raise NotFound(_SAME_RESPONSE)
        return {"channel": target["channel"], "address": target["address"]}

    def _keyed(self, value: str | None, *, missing: bool = False) -> bytes:
        if value is None and missing:  # a fact the record lacks matches no answer
            return b"\0" * 32
        return hmac.new(self.identity_key, _norm(value or "").encode(), "sha256").digest()

    @staticmethod
    def _checked(decision: Decision) -> Decision:
        if decision.rejected and decision.rejected != "already applied":
            raise StateError(decision.rejected)
        return decision


def _norm(value: str) -> str:
    return "".join(ch for ch in value.lower() if ch.isalnum())
