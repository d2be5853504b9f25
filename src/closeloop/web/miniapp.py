"""The mini-apps: where a customer finishes the task their message is about.

Server-rendered pages (Jinja2), no script, one column for a phone.

- ``GET /m/{token}`` shows a page with a Continue button and nothing else: it
  never looks the link up, uses it or changes anything (mail scanners follow
  links), and says nothing about whether the link is any good.
- ``POST /m/{token}`` uses the link (once), starts a session on the server
  and sets its id in a ``__Host-`` cookie (Secure, HttpOnly, SameSite=Lax),
  then redirects to ``/m``, a URL without the token. Unknown, expired and
  used links get the same page, with the same status, after the same time.
- ``/m`` shows what the session may see: the identity check until the known
  facts match (a masked greeting and nothing else), then the options policy
  allows for this case, then the confirmation with a reference.
- Every form carries the session's CSRF token; every page is ``no-store``,
  ``no-referrer``, with a strict Content-Security-Policy.

Every route is a coroutine that calls the store directly: a request's few
short queries cost less than handing it to a worker thread and back (without
that hand-off `GET /m` serves 2.2 times the requests per second on a 2-core
machine; see docs/benchmarks.md, mini-app requests).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import partial
from importlib import resources
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from closeloop.app import App
from closeloop.app.sessions import Session
from closeloop.connectors.cards import CardOnFile, CardTokens
from closeloop.engine import Case, Status
from closeloop.errors import NotFound, OperationalError, StateError
from closeloop.ids import short_digest
from closeloop.policy import OfferedOption, Plan, chosen_plan, last_first_date
from closeloop.web.auth import public_router
from closeloop.web.i18n import LOCALES, pick, reason, text

COOKIE = "__Host-closeloop-session"
_CENT = Decimal("0.01")
_ACCEPT = {"pdf": "application/pdf", "jpeg": "image/jpeg", "png": "image/png"}

_INPUTS = {  # how each known fact is typed on a phone
    "date_of_birth": ("text", "bday"),
    "postal_code": ("numeric", "postal-code"),
    "last4_ssn": ("numeric", "off"),
    "account_last4": ("numeric", "off"),
}


@dataclass(frozen=True)
class Brand:
    name: str
    color: str
    ink: str  # text on the brand colour: black or white, whichever contrasts more
    logo_url: str | None


def _ink(color: str) -> str:
    """#000000 or #ffffff, whichever has the higher WCAG contrast on `color`."""

    def channel(hex_pair: str) -> float:
        value = int(hex_pair, 16) / 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(color[i : i + 2]) for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "#ffffff"


def mask(name: str) -> str:
    """A greeting's name before identity is confirmed: its first letter only."""
    name = name.strip()
    return f"{name[0]}{'*' * 3}" if name else ""


def router(app: App) -> APIRouter:
    routes = public_router("the customer's signed link and session")
    settings = app.settings
    # Failed link redemptions answer no sooner than this after the request came in,
    # so unknown, expired and used links cannot be told apart by their timing.
    floor = settings.link_failure_floor_seconds
    brand = Brand(
        name=settings.brand_name or settings.program_name,
        color=settings.brand_color,
        ink=_ink(settings.brand_color),
        logo_url=settings.brand_logo_url,
    )
    logo_origin = ""
    if brand.logo_url:
        parts = urlsplit(brand.logo_url)
        logo_origin = f" {parts.scheme}://{parts.netloc}"
    fields = (settings.card_fields_url or "").rstrip("/")
    frames = f"; frame-src {fields}" if fields else ""
    cards = None
    if fields:
        key = settings.card_api_key.get_secret_value() if settings.card_api_key else ""
        cards = CardTokens(fields, key)
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'self'; img-src 'self'{logo_origin}; "
            f"form-action 'self'; frame-ancestors 'none'; base-uri 'none'{frames}"
        ),
        "X-Content-Type-Options": "nosniff",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }
    pages = Environment(
        loader=PackageLoader("closeloop.web", "templates"),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,
    )
    stylesheet = (resources.files("closeloop.web") / "static" / "app.css").read_text()
    brand_css = f":root {{ --brand: {brand.color}; --brand-ink: {brand.ink}; }}\n"

    def page(
        template: str, locale: str, title: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        t = partial(text, locale)
        html = pages.get_template(f"miniapp/{template}.html").render(
            locale=locale, t=t, brand=brand, title=t(title, brand=brand.name), **context
        )
        return HTMLResponse(html, status_code=status, headers=headers)

    def message(locale: str, title: str, *paragraphs: str, status: int = 200) -> HTMLResponse:
        t = partial(text, locale)
        return page("message", locale, title, status, paragraphs=[t(p) for p in paragraphs])

    def with_session(response: Response, session: Session) -> Response:
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            secure=True,  # a __Host- cookie must be; browsers count localhost as secure
            samesite="lax",
            path="/",
        )
        return response

    def locale_of(case: Case) -> str:
        locale = str(case.account.get("locale") or "en")
        return locale if locale in LOCALES else "en"

    def current(request: Request) -> Session | None:
        return app.sessions.find(request.cookies.get(COOKIE))

    def csrf_ok(session: Session, form: dict[str, str]) -> bool:
        return hmac.compare_digest(form.get("csrf", ""), session.csrf)

    def expired(request: Request) -> HTMLResponse:
        locale = pick(request.headers.get("accept-language"))
        return message(locale, "expired.title", "expired.text", status=401)

    async def posted(
        request: Request, *, verified: bool = True
    ) -> tuple[Session, Case, dict[str, str]] | Response:
        """The session, its case and the form of a POST: checked for CSRF (and identity)."""
        form = await _form(request)
        session = current(request)
        if session is None:
            return expired(request)
        case = app.runtime.case(session.case_id)
        if not csrf_ok(session, form):
            return show(session, case, error=text(locale_of(case), "stale.text"), status=403)
        if verified and not session.verified:
            return show(session, case, status=403)
        return session, case, form

    def submitted(
        session: Session,
        case: Case,
        form: dict[str, str],
        option: str,
        values: dict[str, Any],
        *,
        coded: bool = False,
        field: str = "",
    ) -> Response:
        """Submit an outcome; on to the confirmation, or back with why (or to a code)."""
        nonce = form.get("nonce", "")
        try:
            app.service.submit(
                case.id, option, values, key=f"web:{case.id}:{nonce}", one_time_code_verified=coded
            )
        except StateError as exc:
            if "one-time code" in str(exc) and not coded:
                return ask_code(session, case, form)
            error = text(locale_of(case), "refused.text", reason=reason(locale_of(case), str(exc)))
            return show(
                session, app.runtime.case(case.id), error=error, error_field=field, status=422
            )
        return RedirectResponse("/m", status_code=303)

    # -- assets (no personal data: cacheable) ---------------------------------
    @routes.get("/m/assets/app.css", include_in_schema=False)
    async def app_css() -> Response:
        return Response(
            stylesheet, media_type="text/css", headers={"Cache-Control": "max-age=3600"}
        )

    @routes.get("/m/assets/brand.css", include_in_schema=False)
    async def brand_stylesheet() -> Response:
        return Response(brand_css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    # -- the session's page ---------------------------------------------------------
    @routes.get("/m", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> Response:
        session = current(request)
        if session is None:
            return expired(request)
        return show(session, app.runtime.case(session.case_id))

    def show(
        session: Session, case: Case, *, error: str = "", error_field: str = "", status: int = 200
    ) -> HTMLResponse:
        locale = locale_of(case)
        if case.status in (Status.WRITING_BACK, Status.RESOLVED) and case.outcome:
            return page("done", locale, "done.title", reference=reference(case))
        if case.status is Status.EXCEPTION and (case.identity_failures or case.code_failures):
            return message(locale, "locked.title", "locked.text", status=403)
        if case.status.terminal or case.status is Status.WRITING_BACK:
            return message(locale, "closed.title", "closed.text", status=410)
        name = str(case.account.get("first_name") or "")
        if not session.verified:
            facts = app.runtime.spec_for(case).spec.identity.known_facts
            return page(
                "identity",
                locale,
                "identity.title",
                status,
                greeting=mask(name),
                csrf=session.csrf,
                error=error,
                facts=[
                    {"name": f, "inputmode": _INPUTS[f][0], "autocomplete": _INPUTS[f][1]}
                    for f in facts
                ],
            )
        offered = app.service.options(case)
        statements: dict[str, dict[str, str]] = {
            str(kind): option.statement or {}
            for kind, option in app.runtime.spec_for(case).spec.miniapp.options.items()
        }
        due = case.data.get("amount_due")
        card_fields = fields_url(session, "/m/card", "card")
        t = partial(text, locale)
        methods = [
            (
                str(m.get("id")),
                t("pay.bank", last4=m.get("last4", ""))
                if m.get("kind") == "bank"
                else t(
                    "pay.card",
                    brand=m.get("brand", ""),
                    last4=m.get("last4", ""),
                    expiry=m.get("expiry", ""),
                ),
            )
            for m in case.account.get("payment_methods") or ()
        ]
        if fields:
            methods.append(("new", t("pay.new")))
        return page(
            "options",
            locale,
            "options.title",
            status,
            name=name,
            due=_money(due) if due is not None else "",
            csrf=session.csrf,
            nonce=secrets.token_urlsafe(16),
            error=error,
            error_field=error_field,
            options=[
                _shown(o, locale, statements.get(o.kind, {}), app.clock.now().date())
                for o in offered
            ],
            details={
                "email": next((c.address for c in case.contacts if c.channel == "email"), ""),
                "phone": next((c.address for c in case.contacts if c.channel == "sms"), ""),
            },
            card_fields=card_fields,
            methods=methods,
        )

    def card_state(session: Session, purpose: str) -> str:
        """What the provider hands back with the token: ties it to this session and purpose."""
        digest = hmac.new(session.csrf.encode(), purpose.encode(), "sha256").digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()  # hex could look like a card

    def fields_url(session: Session, back: str, purpose: str) -> str:
        """The provider's card form, sending the customer back to `back` with a token."""
        if not fields:
            return ""
        return_to = f"{settings.public_url.rstrip('/')}{back}"
        query = urlencode({"return_to": return_to, "state": card_state(session, purpose)})
        return f"{fields}/fields?{query}"

    # -- a new card, by token -------------------------------------------------------
    @routes.get("/m/card", response_class=HTMLResponse, include_in_schema=False)
    async def card_returned(request: Request, token: str = "", state: str = "") -> Response:
        """Where the provider sends the customer back with a token: shows it, changes nothing."""
        session = current(request)
        if session is None:
            return expired(request)
        case = app.runtime.case(session.case_id)
        if not session.verified or not hmac.compare_digest(state, card_state(session, "card")):
            return show(session, case, error=text(locale_of(case), "stale.text"), status=403)
        card = cards.describe(token) if cards is not None else None
        return page(
            "card",
            locale_of(case),
            "card.title",
            200 if card else 422,
            card=card,
            csrf=session.csrf,
            nonce=secrets.token_urlsafe(16),
        )

    @routes.post("/m/card", response_class=HTMLResponse, include_in_schema=False)
    async def card_confirmed(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        offered = {o.kind for o in app.service.options(case)}
        card = cards.describe(form.get("token", "")) if cards is not None else None
        nonce = form.get("nonce", "")
        if "update_card" not in offered or card is None or not nonce:
            return show(session, case, error=text(locale_of(case), "stale.text"), status=422)
        return submitted(session, case, form, "update_card", {"token_ref": card.token})

    # -- documents ------------------------------------------------------------------
    @routes.post("/m/upload", response_class=HTMLResponse, include_in_schema=False)
    async def upload(request: Request) -> Response:
        """A document, streamed to a server-named file and cut off at the size limit."""
        session = current(request)
        if session is None:
            return expired(request)
        case = app.runtime.case(session.case_id)
        locale = locale_of(case)
        option = {o.kind: o for o in app.service.options(case)}.get("upload_document")
        if not session.verified or option is None:
            return show(session, case, status=403)
        kind, params = parse_options_header(request.headers.get("content-type", ""))
        if kind != b"multipart/form-data" or b"boundary" not in params:
            return show(session, case, error=text(locale, "stale.text"), status=400)
        too_large = text(locale, "upload.too_large", mb=option.max_bytes // (1024 * 1024))
        if int(request.headers.get("content-length") or 0) > option.max_bytes + 65536:
            return show(session, case, error=too_large, error_field="file", status=413)
        document_id, sink = app.documents.receive()
        part = _Part(limit=option.max_bytes, sink=sink)
        try:
            parser = MultipartParser(params[b"boundary"], part.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                parser.write(chunk)
                if part.over:
                    break
            else:
                parser.finalize()
        except MultipartParseError:
            sink.close()
            app.documents.discard(document_id)
            return show(session, case, error=text(locale, "stale.text"), status=400)
        except BaseException:  # a dropped connection leaves nothing behind either
            sink.close()
            app.documents.discard(document_id)
            raise
        sink.close()
        if part.over or not csrf_ok(session, part.fields) or not part.size:
            app.documents.discard(document_id)
            if part.over:
                return show(session, case, error=too_large, error_field="file", status=413)
            if not part.size:
                error = text(locale, "upload.empty")
                return show(session, case, error=error, error_field="file", status=422)
            return show(session, case, error=text(locale, "stale.text"), status=403)
        stored = app.documents.accept(case.id, document_id, option.types)
        if stored is None:
            error = text(locale, "upload.type", types=", ".join(t.upper() for t in option.types))
            return show(session, case, error=error, error_field="file", status=415)
        if not stored.clean:
            error = text(locale, "upload.refused")
            return show(session, case, error=error, error_field="file", status=422)
        values = {
            "document_ref": stored.id,
            "type": stored.type,
            "size": stored.size,
            "sha256": stored.sha256,
        }
        return submitted(session, case, part.fields, "upload_document", values)

    # -- identity -------------------------------------------------------------------
    @routes.post("/m/identity", response_class=HTMLResponse, include_in_schema=False)
    async def identity(request: Request) -> Response:
        checked = await posted(request, verified=False)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        if session.verified:
            return RedirectResponse("/m", status_code=303)
        facts = app.runtime.spec_for(case).spec.identity.known_facts
        answers: dict[str, str] = {str(f): form.get(f, "") for f in facts}
        attempt = f"web:{session.id[:12]}:identity:{secrets.token_hex(8)}"
        try:
            passed = app.service.verify_identity(case.id, answers, key=attempt)
        except StateError:
            return show(session, app.runtime.case(case.id))
        except OperationalError:  # the system of record cannot be read: not a failed attempt
            error = text(locale_of(case), "unreachable.text")
            return show(session, case, error=error, status=503)
        if passed:
            fresh = app.sessions.rotate(session, level="known_facts")
            return with_session(RedirectResponse("/m", status_code=303), fresh)
        case = app.runtime.case(case.id)
        limit = app.runtime.spec_for(case).spec.identity.max_attempts
        left = max(0, limit - case.identity_failures)
        if case.status.terminal:
            app.sessions.end(session)
            return show(session, case)
        error = text(locale_of(case), "identity.mismatch", left=left)
        return show(session, case, error=error, status=422)

    # -- outcomes -------------------------------------------------------------------
    def choose(session: Session, case: Case, form: dict[str, str]) -> Response:
        """Submit the option chosen in `form` (a payment or a change may need a code first)."""
        locale = locale_of(case)
        offered = {o.kind: o for o in app.service.options(case)}
        option = offered.get(form.get("option", ""))
        if option is None or not form.get("nonce"):
            return show(session, case, error=text(locale, "stale.text"), status=422)
        coded = session.level == "one_time_code"
        if option.kind == "attestation":
            if form.get("accepted") != "yes":
                error = text(locale, "attest.required")
                return show(session, case, error=error, error_field="accepted", status=422)
            values = {"statement_version": form.get("statement_version", ""), "accepted": True}
            return submitted(session, case, form, "attestation", values)
        if option.kind == "arrangement":
            plan = plan_of(case, form)
            if isinstance(plan, str):
                return show(session, case, error=plan, error_field="plan", status=422)
            chosen = plan[1]
            values = {
                "instalments": chosen.count,
                "frequency": chosen.frequency,
                "first_date": chosen.first.isoformat(),
            }
            return submitted(session, case, form, "arrangement", values)
        if option.kind == "confirm_details":
            fields = ("email", "phone", "line1", "city", "state", "postal_code")
            values = {name: form.get(name, "") for name in fields}
            return submitted(
                session, case, form, "confirm_details", values, coded=coded, field="details"
            )
        if option.kind != "pay_now":
            return show(session, case, error=text(locale, "stale.text"), status=422)
        amount = _amount(form.get("amount", ""))
        low, high = option.minimum, option.maximum
        if (
            amount is None
            or (low is not None and amount < low)
            or (high is not None and amount > high)
        ):
            error = text(locale, "amount.invalid", minimum=_money(low), maximum=_money(high))
            return show(session, case, error=error, error_field="amount", status=422)
        values = {"amount": str(amount)}
        if form.get("method") != "new":
            values["method"] = form.get("method", "")
            return submitted(session, case, form, "pay_now", values, coded=coded, field="method")
        if not form.get("token"):  # a new card: to the provider's form first
            return pay_page(session, case, amount)
        card = cards.describe(form["token"]) if cards is not None else None
        if card is None:
            return pay_page(session, case, amount, unknown=True)
        values["token_ref"] = card.token
        return submitted(session, case, form, "pay_now", values, coded=coded, field="method")

    def pay_page(
        session: Session,
        case: Case,
        amount: Decimal,
        *,
        card: CardOnFile | None = None,
        unknown: bool = False,
    ) -> HTMLResponse:
        """Paying with a new card: the provider's form, or the card it returned to confirm."""
        return page(
            "pay",
            locale_of(case),
            "pay.title",
            422 if unknown else 200,
            amount=_money(amount),
            amount_plain=str(amount),
            card=card,
            card_fields="" if unknown else fields_url(session, f"/m/pay/{amount}", f"pay:{amount}"),
            csrf=session.csrf,
            nonce=secrets.token_urlsafe(16),
        )

    @routes.get("/m/pay/{amount}", response_class=HTMLResponse, include_in_schema=False)
    async def pay_returned(
        request: Request, amount: str, token: str = "", state: str = ""
    ) -> Response:
        """Where the provider sends the customer back with a new card to pay with."""
        session = current(request)
        if session is None:
            return expired(request)
        case = app.runtime.case(session.case_id)
        value = _amount(amount)
        purpose = f"pay:{value}"
        if (
            not session.verified
            or value is None
            or not hmac.compare_digest(state, card_state(session, purpose))
        ):
            return show(session, case, error=text(locale_of(case), "stale.text"), status=403)
        card = cards.describe(token) if cards is not None else None
        return pay_page(session, case, value, card=card, unknown=card is None)

    def plan_of(case: Case, form: dict[str, str]) -> tuple[OfferedOption, Plan] | str:
        """The plan a form asks for, if policy offers it; else the error to show."""
        now = app.clock.now()
        option = {o.kind: o for o in app.service.options(case)}.get("arrangement")
        plan = chosen_plan(option, form, now) if option is not None else ""
        if option is None or isinstance(plan, str):
            last = last_first_date(option, now) if option is not None else now.date()
            return text(
                locale_of(case), "plan.invalid", first=str(now.date()), last=last.isoformat()
            )
        return option, plan

    @routes.post("/m/plan", response_class=HTMLResponse, include_in_schema=False)
    async def review_plan(request: Request) -> Response:
        """The schedule of the plan chosen, to agree to (changes nothing)."""
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        plan = plan_of(case, form)
        if isinstance(plan, str):
            return show(session, case, error=plan, error_field="plan", status=422)
        option, chosen = plan
        return page(
            "plan",
            locale_of(case),
            "plan.title",
            total=_money(option.maximum),
            rows=[
                {"due": r.due.isoformat(), "amount": _money(r.amount)} for r in chosen.instalments
            ],
            csrf=session.csrf,
            nonce=form.get("nonce", ""),
            instalments=chosen.count,
            frequency=chosen.frequency,
            first_date=chosen.first.isoformat(),
        )

    def ask_code(
        session: Session,
        case: Case,
        form: dict[str, str],
        *,
        error: str = "",
        notice: str = "",
        to: str = "",
        status: int = 200,
    ) -> Response:
        """The page asking for a one-time code; what the customer chose rides along."""
        locale = locale_of(case)
        if not to:
            try:
                sent = app.service.send_code(case.id, session.channel, locale=locale)
            except StateError as exc:
                error = text(locale, "refused.text", reason=reason(locale, str(exc)))
                return show(session, case, error=error, status=429)
            to = sent.to
        amount = _amount(form.get("amount", "")) if form.get("option") == "pay_now" else None
        label = (
            text(locale, "code.submit", amount=_money(amount))
            if amount is not None
            else text(locale, "code.confirm")
        )
        return page(
            "code",
            locale,
            "code.title",
            status,
            to=to,
            csrf=session.csrf,
            carried=[(k, v) for k, v in form.items() if k not in ("csrf", "code")],
            label=label,
            reason=text(locale, "code.why.pay" if amount is not None else "code.why.details"),
            error=error,
            notice=notice,
        )

    @routes.post("/m/submit", response_class=HTMLResponse, include_in_schema=False)
    async def submit(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        return choose(*checked)

    @routes.post("/m/code", response_class=HTMLResponse, include_in_schema=False)
    async def enter_code(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        attempt = f"web:{session.id[:12]}:code:{secrets.token_hex(8)}"
        try:
            passed = app.service.check_code(case.id, form.get("code", ""), key=attempt)
        except StateError:
            return show(session, app.runtime.case(case.id))
        case = app.runtime.case(case.id)
        if not passed:
            if case.status.terminal:
                app.sessions.end(session)
                return show(session, case)
            limit = app.runtime.spec_for(case).spec.identity.code_attempts
            left = max(0, limit - case.code_failures)
            error = text(locale_of(case), "code.wrong", left=left)
            to = app.service.code_destination(case.id, session.channel)
            return ask_code(session, case, form, error=error, to=to, status=422)
        fresh = app.sessions.rotate(session, level="one_time_code")
        return with_session(choose(fresh, case, form), fresh)

    @routes.post("/m/dispute", response_class=HTMLResponse, include_in_schema=False)
    async def dispute(request: Request) -> Response:
        """The customer says something is wrong: the case goes to a person, with their words."""
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        locale = locale_of(case)
        words = " ".join(form.get("reason", "").split())[:500] or text(locale, "dispute.default")
        try:
            app.service.dispute(case.id, words, key=f"web:{case.id}:{form.get('nonce', '')}")
        except StateError:
            return show(session, app.runtime.case(case.id))
        app.sessions.end(session)
        return message(locale, "disputed.title", "disputed.text")

    @routes.post("/m/code/new", response_class=HTMLResponse, include_in_schema=False)
    async def new_code(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        session, case, form = checked
        try:
            sent = app.service.send_code(case.id, session.channel, locale=locale_of(case))
        except StateError as exc:
            error = text(locale_of(case), "refused.text", reason=reason(locale_of(case), str(exc)))
            to = app.service.code_destination(case.id, session.channel)
            return ask_code(session, case, form, error=error, to=to, status=429)
        notice = text(locale_of(case), "code.again", to=sent.to)
        return ask_code(session, case, form, notice=notice, to=sent.to)

    # -- the link -------------------------------------------------------------------
    @routes.get("/m/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def landing(token: str, request: Request) -> HTMLResponse:
        locale = pick(request.headers.get("accept-language"))
        return page("landing", locale, "landing.title", action=f"/m/{token}")

    @routes.post("/m/{token}", response_class=HTMLResponse, include_in_schema=False)
    async def open_link(token: str, request: Request) -> Response:
        started = time.monotonic()
        locale = pick(request.headers.get("accept-language"))
        try:  # each POST is its own use: a link opens one session, once
            visit = app.service.redeem(token, key=f"web:open:{secrets.token_hex(12)}")
        except NotFound:
            if current(request) is not None:  # a double tap: the first one got through
                return RedirectResponse("/m", status_code=303)
            await asyncio.sleep(max(0.0, started + floor - time.monotonic()))
            return message(locale, "invalid.title", "invalid.text", status=404)
        except StateError:
            await asyncio.sleep(max(0.0, started + floor - time.monotonic()))
            return message(locale, "closed.title", "closed.text", status=410)
        session = app.sessions.start(visit.case_id, visit.channel)
        return with_session(RedirectResponse("/m", status_code=303), session)

    return routes


class _Part:
    """What a streamed multipart upload carries: a few small fields and one file."""

    def __init__(self, *, limit: int, sink: BinaryIO) -> None:
        self.limit, self.sink = limit, sink
        self.fields: dict[str, str] = {}
        self.size = 0
        self.over = False
        self._header = self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file = False
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        def begin() -> None:
            self._headers, self._name, self._file, self._data = {}, "", False, bytearray()

        def header_field(data: bytes, start: int, end: int) -> None:
            self._header += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            self._headers[self._header.lower()] = self._value
            self._header = self._value = b""

        def headers_finished() -> None:
            _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            self._file = b"filename" in options

        def data(chunk: bytes, start: int, end: int) -> None:
            piece = chunk[start:end]
            if self._file:
                self.size += len(piece)
                if self.size > self.limit:
                    self.over = True
                    return
                self.sink.write(piece)
            elif len(self._data) + len(piece) <= 1024:  # a form field, never large
                self._data += piece

        def end() -> None:
            if not self._file and self._name:
                self.fields[self._name] = self._data.decode("utf-8", "replace")

        return {
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": data,
            "on_part_end": end,
        }


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _amount(value: str) -> Decimal | None:
    cleaned = value.strip().replace(",", "").removeprefix("$").strip()
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount <= 0 or amount != amount.quantize(_CENT):
        return None
    return amount


def _money(value: Any) -> str:
    if value is None:
        return ""
    return f"${Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP):,}"


def _shown(
    option: OfferedOption, locale: str, statement: dict[str, str], today: date
) -> dict[str, Any]:
    label = (
        option.label
        if locale == "en"
        else text(locale, f"option.{option.kind}", default=option.label)
    )
    return {
        "kind": option.kind,
        "label": label,
        "statement": (statement.get(locale) or statement.get("en") or "").strip(),
        "plans": [(n, _money(option.maximum / n)) for n in option.instalments if option.maximum],
        "frequencies": option.frequencies,
        "types_shown": ", ".join(t.upper() for t in option.types),
        "accept": ",".join(_ACCEPT[t] for t in option.types),
        "max_mb": option.max_bytes // (1024 * 1024),
        "first_min": today.isoformat(),
        "first_max": (today + (option.first_within or timedelta(0))).isoformat(),
        "statement_version": option.statement_version or "",
        "minimum": _money(option.minimum),
        "maximum": _money(option.maximum),
        "maximum_plain": str(option.maximum) if option.maximum is not None else "",
    }


def reference(case: Case) -> str:
    """What the customer quotes to us: short, unambiguous, tied to the case."""
    digest = short_digest(case.id, 8).upper()
    return f"CL-{digest[:4]}-{digest[4:]}"
