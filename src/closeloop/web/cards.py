"""Card numbers never enter closeloop.

Card data belongs to the payment provider's hosted fields, on another origin.
`CardNumberGuard` refuses (400) any request whose path, query or body holds a
Luhn-valid number of 13 to 19 digits (spaces and hyphens allowed between
digits), before any route sees it, and flags it: a warning in the log and a
count in the metrics, saying where the number was, never the number.
`RedactCardNumbers` masks such numbers in log records (the access log prints
request lines before anything can refuse them).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import structlog

from closeloop.connectors.card_sandbox import luhn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A run of 13 to 19 digits, spaces or dashes between them allowed, wherever it is
# (a number glued to a word is still a card number). What closeloop and its card
# sandbox put in requests themselves (link tokens, states, nonces, card tokens) is
# drawn from 62 or 64 symbols, where 13 digits in a row do not happen by chance.
_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
LARGEST_SCANNED = 2 * 1024 * 1024  # bodies above this are not scanned (nor multipart uploads)
log = structlog.get_logger("closeloop.cards")


# A providers' identifier (a Twilio SID is two letters and 32 hex digits) holds runs of
# decimal digits by chance, Luhn-valid about one time in ten: a run inside a long token
# of hex characters with letters in it is part of an identifier, not a card number.
_HEX = re.compile(r"[0-9A-Fa-f]+")
_IDENTIFIER = 24


def _in_identifier(text: str, start: int, end: int) -> bool:
    left = start
    while left > 0 and text[left - 1] in "0123456789abcdefABCDEF":
        left -= 1
    token = _HEX.match(text, left)
    return (
        token is not None
        and token.end() >= end
        and len(token.group()) >= _IDENTIFIER
        and not token.group().isdigit()
    )


def _numbers(text: str) -> list[tuple[int, int]]:
    """Where card numbers are in `text` (start, end)."""
    found = []
    for match in _RUN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn(digits) and not _in_identifier(text, *match.span()):
            found.append(match.span())
    return found


def has_card_number(text: str) -> bool:
    return bool(_numbers(text))


def redact(text: str) -> str:
    """`text` with every card number replaced by [card number removed]."""
    for start, end in reversed(_numbers(text)):
        text = f"{text[:start]}[card number removed]{text[end:]}"
    return text


class RedactCardNumbers(logging.Filter):
    """A logging filter that masks card numbers in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class CardNumberGuard:
    """ASGI middleware: refuse and flag any request that carries a card number."""

    def __init__(self, app: ASGIApp, flag: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.flag = flag or (lambda where: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = unquote_plus(scope.get("path", ""))
        query = unquote_plus(scope.get("query_string", b"").decode("latin-1"))
        where = "path" if has_card_number(path) else "query" if has_card_number(query) else ""
        kind = dict(scope.get("headers") or []).get(b"content-type", b"")
        if not where and kind.startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)  # uploaded files: the scanning hook reads them
            return
        chunks: list[bytes] = []
        more, size = True, 0
        while not where and more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
            if size > LARGEST_SCANNED:
                break
        body = b"".join(chunks)
        if not where and size <= LARGEST_SCANNED and body:
            decoded = body.decode("utf-8", errors="replace")
            if has_card_number(decoded) or has_card_number(unquote_plus(decoded)):
                where = "body"
        if where:
            self.flag(where)
            log.warning(
                "card_number_refused", where=where, method=scope.get("method"), route=_route(path)
            )
            await _refuse(send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)


def _route(path: str) -> str:
    return "[withheld]" if has_card_number(path) else path


async def _refuse(send: Send) -> None:
    body = json.dumps(
        {
            "detail": "card numbers are not accepted here: card details go only into the "
            "payment provider's card form"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
