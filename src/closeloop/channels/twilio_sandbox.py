"""A local Twilio-compatible Messages API, for development, the demo and tests.

It accepts the requests Twilio accepts (HTTP basic auth with the account SID
and auth token, form-encoded ``To``, ``From``, ``Body``, ``StatusCallback``),
answers like Twilio (201 with the message's JSON, or 4xx with Twilio's error
``code``), keeps every message, and then calls the status callback -
``queued`` -> ``sent`` -> ``delivered``, or ``undelivered``/``failed`` with an
``ErrorCode`` - signed with ``X-Twilio-Signature`` exactly as Twilio signs.
A simulated customer's reply is posted to closeloop's inbound webhook the
same way, and a TwiML ``<Message>`` in the answer is kept as the reply sent.

Twilio's test numbers behave as they do with Twilio's test credentials, and
two more simulate failures after acceptance:

| To | result |
|---|---|
| +15005550001 | 400, code 21211: invalid 'To' number |
| +15005550002 | 400, code 21612: cannot route to this number |
| +15005550004 | 400, code 21610: the recipient replied STOP |
| +15005550009 | 400, code 21614: not a mobile number |
| +15005550010 | accepted, then ``undelivered`` with 30003 (unreachable handset) |
| +15005550011 | accepted, then ``failed`` with 30007 (carrier filtering) |
| +12125550104, +12125550109 | as 0004 and 0009 (numbers contact policy accepts) |
| +12125550110, +12125550111 | as 0010 and 0011 (numbers contact policy accepts) |

Messages per second per sender are limited (`rate_per_second`); over the
limit the answer is 429 with ``Retry-After``, as Twilio's queue overflow.
WhatsApp free-form text (``Body``) to a number that has not written in the
last 24 hours fails with 63016, as on WhatsApp; an approved template
(``ContentSid`` with ``ContentVariables``) goes at any time.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

import httpx
import phonenumbers
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from closeloop.channels.twilio import signature

REFUSED = {
    "+15005550001": (21211, "The 'To' number is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
    # Valid-looking fictional numbers, so a message gets past contact policy first.
    "+12125550104": (21610, "Attempt to send to unsubscribed recipient"),
    "+12125550109": (21614, "'To' number is not a valid mobile number"),
}
FAILS_LATER = {
    "+15005550010": ("undelivered", "30003"),
    "+15005550011": ("failed", "30007"),
    "+12125550110": ("undelivered", "30003"),
    "+12125550111": ("failed", "30007"),
}

sandbox_metadata = sa.MetaData()
twilio_messages = sa.Table(
    "twilio_messages",
    sandbox_metadata,
    sa.Column("sid", sa.String(34), primary_key=True),
    sa.Column("direction", sa.String(16), nullable=False),  # outbound-api, inbound, reply
    sa.Column("from_", sa.String(64), nullable=False),
    sa.Column("to", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(8)),
    sa.Column("created_at", sa.String(40), nullable=False),
)


# Module level: FastAPI resolves the (string) annotations that name it from here.
_BASIC = HTTPBasic(auto_error=False)


def _sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


class TwilioSandbox:
    """The sandbox's state and behaviour; `app` is its HTTP face."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        account_sid: str,
        auth_token: str,
        inbound_url: str | None = None,
        rate_per_second: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
        batch: int = 1,
    ) -> None:
        sandbox_metadata.create_all(engine)
        self.engine = engine
        self.account_sid, self.auth_token = account_sid, auth_token
        self.inbound_url = inbound_url
        self.rate = rate_per_second
        self.clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._callbacks: deque[tuple[str, dict[str, str]]] = deque()
        self._inbound: dict[str, float] = {}  # WhatsApp: when each number last wrote
        self._pending: list[dict[str, Any]] = []
        self.batch = batch
        self._lock = threading.Lock()
        self.http = httpx.Client(timeout=10.0)
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._basic = f"Basic {credentials}"
        self.app = self._build()

    # -- outbound ------------------------------------------------------------
    def _over_rate(self, sender: str) -> bool:
        now = self.clock()
        with self._lock:
            window = self._sent.setdefault(sender, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= self.rate:
                return True
            window.append(now)
            return False

    def create(self, form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        to, sender, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        content = form.get("ContentSid")
        if content:  # an approved template: what the customer sees is the template's
            body = f"[{content}] {form.get('ContentVariables', '{}')}"
        number = to.removeprefix("whatsapp:")
        if not to or not sender or not body:
            missing = [k for k in ("To", "From", "Body") if not form.get(k)]
            return 400, _error(21604, f"A {'/'.join(missing)} is required."), {}
        if number in REFUSED:
            code, text = REFUSED[number]
            return 400, _error(code, text), {}
        if not _valid(number):
            return 400, _error(21211, f"The 'To' number {to} is not a valid phone number."), {}
        if self._over_rate(sender):
            return 429, _error(20429, "Too Many Requests"), {"Retry-After": "1"}
        sid = _sid()
        self._keep(sid, "outbound-api", sender, to, body, "queued")
        callback = form.get("StatusCallback")
        if callback:
            final, error_code = FAILS_LATER.get(number, ("delivered", ""))
            if to.startswith("whatsapp:") and not content and not self._in_session(number):
                final, error_code = "failed", "63016"  # free-form outside the 24 h window
            statuses = ["sent", final] if final == "delivered" else [final]
            for state in ["queued", *statuses]:
                params = {
                    "AccountSid": self.account_sid,
                    "ApiVersion": "2010-04-01",
                    "From": sender,
                    "MessageSid": sid,
                    "MessageStatus": state,
                    "SmsSid": sid,
                    "SmsStatus": state,
                    "To": to,
                }
                if state in ("undelivered", "failed"):
                    params["ErrorCode"] = error_code
                with self._lock:
                    self._callbacks.append((callback, params))
        message = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": sender,
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "error_code": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        return 201, message, {}

    def _in_session(self, number: str) -> bool:
        last = self._inbound.get(number)
        return last is not None and time.time() - last < 24 * 3600

    def deliver_callbacks(self) -> int:
        """Call every pending status callback, signed; return how many were made."""
        made = 0
        while True:
            with self._lock:
                if not self._callbacks:
                    return made
                url, params = self._callbacks.popleft()
            self._post_signed(url, params)
            made += 1

    def _post_signed(self, url: str, params: dict[str, str]) -> httpx.Response | None:
        self.flush()  # a status update finds its message
        headers = {"X-Twilio-Signature": signature(url, params, self.auth_token)}
        try:
            response = self.http.post(url, data=params, headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code >= 400:
            return response
        with self.engine.begin() as c:
            if "MessageStatus" in params:
                c.execute(
                    twilio_messages.update()
                    .where(twilio_messages.c.sid == params["MessageSid"])
                    .values(status=params["MessageStatus"], error_code=params.get("ErrorCode"))
                )
        return response

    # -- inbound -------------------------------------------------------------
    def reply(self, sender: str, to: str, body: str) -> dict[str, Any]:
        """A customer's message to our number, posted to closeloop's inbound webhook."""
        if not self.inbound_url:
            raise HTTPException(409, "the sandbox has no inbound webhook URL configured")
        sid = _sid()
        self._keep(sid, "inbound", sender, to, body, "received")
        if sender.startswith("whatsapp:"):
            self._inbound[sender.removeprefix("whatsapp:")] = time.time()
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": body,
            "From": sender,
            "MessageSid": sid,
            "NumMedia": "0",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "To": to,
        }
        response = self._post_signed(self.inbound_url, params)
        if response is None:
            return {"sid": sid, "status": 0, "replies": []}
        replies = _twiml_messages(response.text) if response.status_code < 400 else []
        for text in replies:
            self._keep(_sid(), "reply", to, sender, text, "delivered")
        return {"sid": sid, "status": response.status_code, "replies": replies}

    def _keep(self, sid: str, direction: str, sender: str, to: str, body: str, status: str) -> None:
        row = {
            "sid": sid,
            "direction": direction,
            "from_": sender,
            "to": to,
            "body": body,
            "status": status,
            "created_at": datetime.now(UTC).isoformat(),
        }
        with self._lock:
            self._pending.append(row)
            full = len(self._pending) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the messages kept in memory (with ``batch`` above 1)."""
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            with self.engine.begin() as c:
                c.execute(twilio_messages.insert(), rows)

    def messages(self) -> list[dict[str, Any]]:
        self.flush()
        with self.engine.connect() as c:
            rows = c.execute(sa.select(twilio_messages).order_by(twilio_messages.c.created_at))
            return [dict(r._mapping) for r in rows]

    # -- HTTP ----------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="closeloop Twilio sandbox", docs_url=None, redoc_url=None)

        def account(
            sid: str, credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]
        ) -> None:
            if (
                credentials is None
                or credentials.username != self.account_sid
                or credentials.password != self.auth_token
                or sid != self.account_sid
            ):
                raise HTTPException(401, detail=_error(20003, "Authenticate"))

        # The send path answers on the event loop and reads the form itself:
        # a thread hop and a multipart parser per message cost more than the
        # rest of the request (measured: 2.7x the messages per second).
        @app.post("/2010-04-01/Accounts/{sid}/Messages.json")
        async def create_message(sid: str, request: Request) -> JSONResponse:
            if request.headers.get("authorization") != self._basic or sid != self.account_sid:
                return JSONResponse({"detail": _error(20003, "Authenticate")}, status_code=401)
            kind = request.headers.get("content-type", "")
            if kind.startswith("application/x-www-form-urlencoded"):
                body = (await request.body()).decode()
                form = dict(parse_qsl(body, keep_blank_values=True))
            else:
                form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
            wanted = ("To", "From", "Body", "StatusCallback", "ContentSid", "ContentVariables")
            status, content, headers = self.create({k: form[k] for k in wanted if form.get(k)})
            return JSONResponse(content, status_code=status, headers=headers)

        @app.get("/2010-04-01/Accounts/{sid}/Messages.json", dependencies=[Depends(account)])
        def list_messages() -> dict[str, Any]:
            return {"messages": self.messages()}

        @app.post("/sandbox/reply")
        def customer_reply(
            From: Annotated[str, Form()],
            To: Annotated[str, Form()],
            Body: Annotated[str, Form()],
        ) -> dict[str, Any]:
            return self.reply(From, To, Body)

        return app


def _error(code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }


def _valid(number: str) -> bool:
    if number.startswith("+1500555"):
        return True  # Twilio's test numbers
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return False


def _twiml_messages(text: str) -> list[str]:
    """The texts of ``<Message>`` elements of a TwiML answer."""
    if not text.strip():
        return []
    try:
        root = ET.fromstring(text)  # noqa: S314 - TwiML from closeloop itself, on loopback
    except ET.ParseError:
        return []
    return [(m.text or "").strip() for m in root.iter("Message")]
