"""Mini-app and unsubscribe links: a random token each, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from closeloop.store import Tx


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    tx: Tx, *, case_id: str, channel: str, now: datetime, lifetime: timedelta, public_url: str
) -> str:
    """Create a link for the case and return its URL (the token is never stored)."""
    token = secrets.token_urlsafe(24)  # 192 bits
    tx.save_link(token_hash(token), case_id, channel, now, now + lifetime)
    return f"{public_url.rstrip('/')}/m/{token}"


def token_from_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def issue_unsubscribe(
    tx: Tx,
    *,
    channel: str,
    address: str,
    account_id: str,
    case_id: str,
    now: datetime,
    public_url: str,
) -> str:
    """A one-click unsubscribe URL for this address (RFC 8058); the token is never stored."""
    token = secrets.token_urlsafe(24)
    tx.save_unsubscribe(
        token_hash(token),
        channel=channel,
        address=address,
        account_id=account_id,
        case_id=case_id,
        now=now,
    )
    return f"{public_url.rstrip('/')}/u/{token}"
