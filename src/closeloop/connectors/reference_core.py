"""The reference billing core: a small system of record over HTTP.

closeloop ships it for the demo, development and failure drills, as the
stand-in for a bank's core: accounts with balances, payments, arrangements,
payment methods, contact details, flags, notes and documents, and a ledger
of every effect from which duplicates can be counted.

It honours ``Idempotency-Key`` as Stripe and the IETF draft
(draft-ietf-httpapi-idempotency-key-header) describe: every write needs one;
the same key with the same request replays the stored response (with
``Idempotent-Replayed: true``) and has no second effect; the same key with a
different request answers ``422``; a request whose key is still being
processed answers ``409``. Keys are kept 24 hours.

Faults are set per run through ``PUT /_admin/faults`` (or the constructor):
added latency, error rates by status code (before any effect), timeouts
*after* committing (the effect is made, the answer withheld), outages (a
switch and time windows; or writes only, as when a core's posting window is
closed), malformed or truncated response bodies, and schema drift (fields
renamed, amounts in cents). Which request meets which fault is
drawn from a seed, the request and its attempt number, so a run repeats.

- ``GET /v1/accounts/{id}``; ``GET /v1/accounts/{id}/effects?reference=R`` or
  ``?case_id=C`` (what it holds for a closeloop case: reconciliation)
  (what a caller reads before it retries, to find an effect by its reference)
- ``POST /v1/accounts/{id}/payments|arrangements|payment_methods|charges|notes|documents``,
  ``PATCH /v1/accounts/{id}/contact``, ``PUT|DELETE /v1/accounts/{id}/flags/{flag}``
- ``PUT|GET /_admin/faults``, ``POST /_admin/accounts``, ``GET /_admin/ledger``
- ``POST /oauth/token``: OAuth 2.0 client credentials, for the clients it is given;
  its bearer tokens are taken wherever the API key is
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from pydantic import BaseModel, ConfigDict, Field

KEY_LIFETIME = timedelta(hours=24)
ABANDONED = timedelta(seconds=60)  # a key still processing after this was left by a crash

core_metadata = sa.MetaData()
core_accounts = sa.Table(
    "core_accounts",
    core_metadata,
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("record", sa.JSON, nullable=False),
)
core_effects = sa.Table(  # the ledger: one row per effect, never updated
    "core_effects",
    core_metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("idempotency_key", sa.String(200), nullable=False),
    sa.Column("operation", sa.String(64), nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(64), nullable=False),
    sa.Column("reference", sa.String(200), nullable=False, index=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
core_keys = sa.Table(
    "core_keys",
    core_metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # processing | done
    sa.Column("status", sa.Integer),
    sa.Column("body", sa.JSON),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

_BEARER = HTTPBearer(auto_error=False)
_BASIC = HTTPBasic(auto_error=False)
# An effect changes an account's record (in place) from a request's body and says
# what it did; a ValueError is the caller's mistake (422).
Effect = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: datetime
    end: datetime


class Faults(BaseModel):
    """What goes wrong, for one run."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    errors: dict[int, float] = Field(default_factory=dict)  # status -> share of requests
    timeout_after_commit: float = Field(default=0.0, ge=0, le=1)
    hang_seconds: float = Field(default=30.0, ge=0, le=600)
    down: bool = False
    # Reads answer, writes get 503: the core's posting API is closed (a batch window).
    writes_down: bool = False
    outages: list[Window] = Field(default_factory=list)
    malformed: float = Field(default=0.0, ge=0, le=1)
    truncated: float = Field(default=0.0, ge=0, le=1)
    drift: bool = False

    def model_post_init(self, _context: Any) -> None:
        for status, share in self.errors.items():
            if not 400 <= status <= 599:
                raise ValueError(f"errors: {status} is not an HTTP error status")
            if not 0 <= share <= 1:
                raise ValueError(f"errors: the share for {status} must be between 0 and 1")

    def is_down(self, now: datetime) -> bool:
        return self.down or any(w.start <= now < w.end for w in self.outages)


class _Truncated(Response):
    """A response whose Content-Length promises more than it sends, then closes."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self.body) * 2).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class ReferenceCore:
    """The core's state (in its own database) and its HTTP API (`app`)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        api_key: str,
        admin_key: str,
        faults: Faults | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        oauth_clients: dict[str, str] | None = None,
        token_lifetime: timedelta = timedelta(hours=1),
    ) -> None:
        self.engine = engine
        self.api_key = api_key
        self.admin_key = admin_key
        self.faults = faults or Faults()
        self.clock = clock
        # OAuth 2.0 client credentials: client id -> secret; the bearer tokens issued, with
        # when each expires. A live token is taken wherever the API key is.
        self.oauth_clients = dict(oauth_clients or {})
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, datetime] = {}
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        core_metadata.create_all(engine)
        self.app = self._build()

    # -- the state ------------------------------------------------------------------
    def add_accounts(self, records: list[dict[str, Any]]) -> int:
        """Load accounts (the demo's portfolio shape); existing ones are kept."""
        with self.engine.begin() as c:
            known = {r[0] for r in c.execute(sa.select(core_accounts.c.account_id))}
            rows = [
                {"account_id": r["account_id"], "record": r}
                for r in records
                if r["account_id"] not in known
            ]
            if rows:
                c.execute(core_accounts.insert(), rows)
        return len(rows)

    def ledger(self) -> dict[str, int]:
        """Effects, and effects applied more than once for one key or one case outcome."""
        return ledger_counts(self.engine)

    # -- keys -----------------------------------------------------------------------
    def _claim(self, key: str, fingerprint: str) -> JSONResponse | tuple[int, Any] | None:
        """Start processing `key` (None); or a repeat's answer: the stored one to replay
        (status, body), or a refusal (409, 422)."""
        now = self.clock()
        with self.engine.begin() as c:
            c.execute(core_keys.delete().where(core_keys.c.created_at < now - KEY_LIFETIME))
            row = c.execute(sa.select(core_keys).where(core_keys.c.key == key)).first()
            if row is None:
                try:
                    with c.begin_nested():
                        c.execute(
                            core_keys.insert().values(
                                key=key, fingerprint=fingerprint, state="processing", created_at=now
                            )
                        )
                except sa.exc.IntegrityError:
                    return _error(409, "a request with this Idempotency-Key is in progress")
                return None
        if row.fingerprint != fingerprint:
            return _error(422, "this Idempotency-Key was used for a different request")
        if row.state != "done":
            taken = row.created_at
            if (taken if taken.tzinfo else taken.replace(tzinfo=UTC)) > now - ABANDONED:
                return _error(409, "a request with this Idempotency-Key is in progress")
            # The request that took the key died before its transaction (nothing of it
            # was committed): this one takes over.
            with self.engine.begin() as c:
                c.execute(core_keys.update().where(core_keys.c.key == key).values(created_at=now))
            return None
        return int(row.status), row.body

    def _write(
        self,
        key: str,
        operation: str,
        account_id: str,
        body: dict[str, Any],
        effect: Effect,
    ) -> tuple[int, dict[str, Any]]:
        """Make the effect and record it, the key's answer with it, in one transaction."""
        now = self.clock()
        with self.engine.begin() as c:
            row = c.execute(
                sa.select(core_accounts.c.record).where(core_accounts.c.account_id == account_id)
            ).first()
            if row is None:
                status, answer = 404, {"error": f"no account {account_id}"}
            elif "closed" in row[0].get("facts", {}).get("flags", []):
                status, answer = 422, {"error": "the account is closed"}
            else:
                record = dict(row[0])
                try:
                    answer = effect(record, body)
                except ValueError as exc:
                    status, answer = 422, {"error": str(exc)}
                else:
                    status = 201
                    effect_id = f"{operation[:3]}_{secrets.token_urlsafe(12)}"
                    answer = {"id": effect_id, "operation": operation, **answer}
                    c.execute(
                        core_accounts.update()
                        .where(core_accounts.c.account_id == account_id)
                        .values(record=record)
                    )
                    c.execute(
                        core_effects.insert().values(
                            id=effect_id,
                            idempotency_key=key,
                            operation=operation,
                            account_id=account_id,
                            case_id=str(body.get("case_id", "")),
                            reference=str(body.get("reference", "")),
                            payload=body,
                            at=now,
                        )
                    )
            c.execute(
                core_keys.update()
                .where(core_keys.c.key == key)
                .values(state="done", status=status, body=answer)
            )
        return status, answer

    # -- faults ---------------------------------------------------------------------
    def _rng(self, request: Request, key: str) -> random.Random:
        ident = f"{request.method} {request.url.path} {key}"
        with self._lock:
            attempt = self._attempts.get(ident, 0) + 1
            self._attempts[ident] = attempt
        return random.Random(f"{self.faults.seed}:{ident}:{attempt}")

    def _before(self, rng: random.Random) -> JSONResponse | None:
        """A fault that answers before anything happens: an outage or an error status."""
        if self.faults.is_down(self.clock()):
            return _error(503, "the core is down")
        draw = rng.random()
        for status, share in sorted(self.faults.errors.items()):
            if draw < share:
                headers = {"Retry-After": "1"} if status in (429, 503) else {}
                return _error(status, f"injected {status}", headers)
            draw -= share
        return None

    async def _after(
        self, rng: random.Random, status: int, body: dict[str, Any], *, replayed: bool = False
    ) -> Response:
        """The answer, as the faults let it through: withheld, broken, cut short or drifted."""
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if rng.random() < self.faults.timeout_after_commit:
            await asyncio.sleep(self.faults.hang_seconds)  # the effect stands; the caller gives up
        if rng.random() < self.faults.malformed:
            return Response(b'{"id": "pay_', status_code=status, media_type="application/json")
        text = json.dumps(_drifted(body) if self.faults.drift else body).encode()
        if rng.random() < self.faults.truncated:
            return _Truncated(text, status_code=status)
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return Response(text, status_code=status, media_type="application/json", headers=headers)

    # -- the API --------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="closeloop reference billing core", docs_url=None, redoc_url=None)

        def authorised(
            secret: str, *, tokens: bool = False
        ) -> Callable[[HTTPAuthorizationCredentials | None], None]:
            def check(
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
            ) -> None:
                given = credentials.credentials if credentials else ""
                if secrets.compare_digest(given, secret):
                    return
                if tokens and self.tokens.get(given, self.clock()) > self.clock():
                    return
                raise HTTPException(
                    401,
                    "a valid bearer token is needed",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )

            return check

        api = [Depends(authorised(self.api_key, tokens=True))]
        admin = [Depends(authorised(self.admin_key))]

        @app.post("/oauth/token")
        async def token(
            request: Request,
            client: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)],
        ) -> JSONResponse:
            """OAuth 2.0 client credentials (RFC 6749, 4.4), client_secret_basic or _post."""
            form = await request.form()
            client_id = client.username if client else str(form.get("client_id", ""))
            secret = client.password if client else str(form.get("client_secret", ""))
            known = self.oauth_clients.get(client_id)
            if known is None or not secrets.compare_digest(secret, known):
                return JSONResponse(
                    {"error": "invalid_client"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="token"'},
                )
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            now = self.clock()
            self.tokens = {t: until for t, until in self.tokens.items() if until > now}
            issued = secrets.token_urlsafe(24)
            self.tokens[issued] = now + self.token_lifetime
            lifetime = int(self.token_lifetime.total_seconds())
            return JSONResponse(
                {"access_token": issued, "token_type": "Bearer", "expires_in": lifetime},
                headers={"Cache-Control": "no-store"},
            )

        async def write(
            request: Request,
            key: str | None,
            operation: str,
            account_id: str,
            effect: Effect,
        ) -> Response:
            if not key:
                return _error(400, "an Idempotency-Key header is required on every write")
            rng = self._rng(request, key)
            refused = self._before(rng)
            if refused is not None:
                return refused
            if self.faults.writes_down:
                return _error(503, "the core takes no writes now", {"Retry-After": "60"})
            raw = await request.body()
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return _error(400, "the body is not JSON")
            if not isinstance(body, dict):
                return _error(400, "the body must be a JSON object")
            fingerprint = hashlib.sha256(
                f"{request.method} {request.url.path} ".encode()
                + json.dumps(body, sort_keys=True).encode()
            ).hexdigest()
            answered = self._claim(key, fingerprint)
            if isinstance(answered, Response):
                return answered
            if answered is not None:  # a replay meets the same faults as a first answer
                return await self._after(rng, *answered, replayed=True)
            status, answer = self._write(key, operation, account_id, body, effect)
            return await self._after(rng, status, answer)

        def handler(operation: str, effect: Effect) -> Callable[..., Awaitable[Response]]:
            async def route(
                account_id: str,
                request: Request,
                idempotency_key: Annotated[str | None, Header()] = None,
            ) -> Response:
                return await write(request, idempotency_key, operation, account_id, effect)

            return route

        app.post("/v1/accounts/{account_id}/payments", dependencies=api)(
            handler("post_payment", _pay)
        )
        app.post("/v1/accounts/{account_id}/arrangements", dependencies=api)(
            handler("set_arrangement", _arrange)
        )
        app.post("/v1/accounts/{account_id}/payment_methods", dependencies=api)(
            handler("store_payment_method", _store_method)
        )
        app.post("/v1/accounts/{account_id}/charges", dependencies=api)(
            handler("retry_charge", _retry_charge)
        )
        app.patch("/v1/accounts/{account_id}/contact", dependencies=api)(
            handler("update_contact", _contact)
        )
        app.post("/v1/accounts/{account_id}/notes", dependencies=api)(handler("add_note", _note))
        app.post("/v1/accounts/{account_id}/documents", dependencies=api)(
            handler("attach_document", _document)
        )

        @app.put("/v1/accounts/{account_id}/flags/{flag}", dependencies=api)
        async def set_flag(
            account_id: str,
            flag: str,
            request: Request,
            idempotency_key: Annotated[str | None, Header()] = None,
        ) -> Response:
            return await write(
                request, idempotency_key, "set_flag", account_id, lambda r, _: _flag(r, flag, True)
            )

        @app.delete("/v1/accounts/{account_id}/flags/{flag}", dependencies=api)
        async def clear_flag(
            account_id: str,
            flag: str,
            request: Request,
            idempotency_key: Annotated[str | None, Header()] = None,
        ) -> Response:
            return await write(
                request,
                idempotency_key,
                "clear_flag",
                account_id,
                lambda r, _: _flag(r, flag, False),
            )

        @app.get("/v1/accounts/{account_id}", dependencies=api)
        async def account(account_id: str, request: Request) -> Response:
            rng = self._rng(request, "")
            refused = self._before(rng)
            if refused is not None:
                return refused
            with self.engine.connect() as c:
                row = c.execute(
                    sa.select(core_accounts.c.record).where(
                        core_accounts.c.account_id == account_id
                    )
                ).first()
            if row is None:
                return _error(404, f"no account {account_id}")
            return await self._after(rng, 200, dict(row[0]))

        @app.get("/v1/accounts/{account_id}/effects", dependencies=api)
        async def effects(
            account_id: str, request: Request, reference: str = "", case_id: str = ""
        ) -> Response:
            if not (reference or case_id):
                return _error(422, "give reference or case_id")
            rng = self._rng(request, reference or case_id)
            refused = self._before(rng)
            if refused is not None:
                return refused
            stmt = sa.select(core_effects).where(core_effects.c.account_id == account_id)
            if reference:
                stmt = stmt.where(core_effects.c.reference == reference)
            if case_id:
                stmt = stmt.where(core_effects.c.case_id == case_id)
            with self.engine.connect() as c:
                found = [
                    {"id": r.id, "operation": r.operation, "reference": r.reference,
                     "case_id": r.case_id}
                    for r in c.execute(stmt.order_by(core_effects.c.at, core_effects.c.id))
                ]  # fmt: skip
            return await self._after(rng, 200, {"data": found})

        @app.put("/_admin/faults", dependencies=admin)
        async def set_faults(faults: Faults) -> dict[str, Any]:
            self.faults = faults
            return faults.model_dump(mode="json")

        @app.get("/_admin/faults", dependencies=admin)
        async def get_faults() -> dict[str, Any]:
            return self.faults.model_dump(mode="json")

        @app.post("/_admin/accounts", dependencies=admin)
        async def load_accounts(records: list[dict[str, Any]]) -> dict[str, int]:
            if any(not isinstance(r.get("account_id"), str) for r in records):
                raise HTTPException(422, "every account needs an account_id (a string)")
            return {"added": self.add_accounts(records)}

        @app.get("/_admin/ledger", dependencies=admin)
        async def ledger() -> dict[str, int]:
            return self.ledger()

        return app


# -- the ledger, read from the core's database ------------------------------------------
def ledger_counts(engine: sa.Engine) -> dict[str, int]:
    """Effects, and effects applied more than once for one key or one case outcome."""
    by_key = (
        sa.select(core_effects.c.idempotency_key)
        .group_by(core_effects.c.idempotency_key)
        .having(sa.func.count() > 1)
        .subquery()
    )
    by_case = (
        sa.select(core_effects.c.case_id, core_effects.c.operation, core_effects.c.reference)
        .where(core_effects.c.case_id != "")
        .group_by(core_effects.c.case_id, core_effects.c.operation, core_effects.c.reference)
        .having(sa.func.count() > 1)
        .subquery()
    )
    count = sa.select(sa.func.count())
    with engine.connect() as c:
        return {
            "effects": int(c.execute(count.select_from(core_effects)).scalar_one()),
            "duplicate_keys": int(c.execute(count.select_from(by_key)).scalar_one()),
            "duplicate_outcomes": int(c.execute(count.select_from(by_case)).scalar_one()),
        }


def effect_keys(engine: sa.Engine) -> dict[str, int]:
    """How many effects the core holds under each idempotency key."""
    stmt = sa.select(core_effects.c.idempotency_key, sa.func.count()).group_by(
        core_effects.c.idempotency_key
    )
    with engine.connect() as c:
        return {key: int(n) for key, n in c.execute(stmt)}


# -- effects on an account record ------------------------------------------------------
def _money(body: dict[str, Any], name: str = "amount") -> Decimal:
    try:
        amount = Decimal(str(body.get(name, "")))
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal amount") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError(f"{name} must be more than zero")
    return amount


def _pay(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    amount = _money(body)
    if not body.get("method") and not body.get("token_ref"):
        raise ValueError("a payment needs a method on file or a token")
    facts = record.setdefault("facts", {})
    balance = Decimal(str(facts.get("balance", 0))) - amount
    facts["balance"] = float(balance)
    return {"amount": str(amount), "balance": str(balance), "status": "posted"}


def _arrange(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    amount = _money(body)
    count = body.get("instalments")
    if not isinstance(count, int) or count < 1:
        raise ValueError("instalments must be a whole number of at least 1")
    record["arrangement"] = {k: body.get(k) for k in ("amount", "instalments", "frequency")}
    return {"amount": str(amount), "instalments": count, "status": "active"}


def _store_method(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    token = str(body.get("token_ref", ""))
    if not token:
        raise ValueError("token_ref is required")
    method = {"id": f"pm_{hashlib.sha256(token.encode()).hexdigest()[:12]}", "kind": "card"}
    record.setdefault("payment_methods", []).append(method)
    return {"payment_method": method["id"]}


def _retry_charge(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    return {"status": "retry_scheduled"}


def _contact(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    changed = {k: body[k] for k in ("email", "phone", "address") if body.get(k)}
    if not changed:
        raise ValueError("nothing to change: give email, phone or address")
    record.setdefault("contact_changes", []).append(changed)
    return {"changed": sorted(changed)}


def _note(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    if not str(body.get("text", "")).strip():
        raise ValueError("text is required")
    return {"status": "noted"}


def _document(record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    if not body.get("document_ref") or not body.get("sha256"):
        raise ValueError("document_ref and sha256 are required")
    return {"status": "attached"}


def _flag(record: dict[str, Any], flag: str, on: bool) -> dict[str, Any]:
    facts = record.setdefault("facts", {})
    flags = [f for f in facts.get("flags", []) if f != flag]
    facts["flags"] = [*flags, flag] if on else flags
    return {"flag": flag, "set": on}


def _drifted(body: dict[str, Any]) -> dict[str, Any]:
    """The same answer after an unannounced schema change."""
    out = {("payment_id" if k == "id" else k): v for k, v in body.items()}
    if "amount" in out:
        out["amount_cents"] = int(Decimal(str(out.pop("amount"))) * 100)
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
