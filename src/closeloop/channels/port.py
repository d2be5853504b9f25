"""The channel port."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, kw_only=True)
class OutgoingMessage:
    idempotency_key: str
    case_id: str
    channel: str
    address: str
    subject: str | None
    body: str
    link: str
    unsubscribe_url: str | None = None  # email: sent as List-Unsubscribe (RFC 8058)
    # WhatsApp: a provider-approved template and what fills its {{1}}, {{2}}, ...
    template_id: str | None = None
    template_variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SendResult:
    status: Literal["sent", "failed", "retry"]
    reason: str = ""
    provider_id: str = ""
    # Why a message failed, for the cadence: opted_out, unreachable, carrier_block, other.
    failure: str = ""
    retry_after: float | None = None  # seconds the provider asked us to wait (429)
    tracked: bool = False  # the provider will report delivery by webhook


class Channel(Protocol):
    def send(self, message: OutgoingMessage) -> SendResult:
        """Hand the message to the provider; never raises for provider refusals."""
        ...


def settle(channels: Iterable[object]) -> None:
    """Let channels that hold accepted messages to write them together do so now.

    A channel may keep what it accepted during a batch and write it at once
    (one transaction, one bulk call) in a ``settle()`` method. The dispatcher
    calls this after a batch's sends and before it records any result, so a
    message is never recorded as sent while it is still only in memory.
    """
    seen: set[int] = set()
    for channel in channels:
        hook = getattr(channel, "settle", None)
        if hook is not None and id(channel) not in seen:
            seen.add(id(channel))
            hook()
