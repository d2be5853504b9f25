"""The consoles: operators watch rollouts and the system's health, agents work exceptions.

Server-rendered pages (Jinja2) under ``/console``, no script; charts are SVG
drawn on the server (`closeloop.web.charts`). Every page declares the role
it needs (`closeloop.web.auth`): viewers read rollouts, workflows, health and
the report; agents also work the exception queue and read case files (which
hold personal data); operators also take rollout decisions. Every form
carries the session's CSRF token; every page is ``no-store`` with a strict
Content-Security-Policy.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from closeloop.app import App
from closeloop.app.bootstrap import data_key
from closeloop.app.oidc import SignOnError, SingleSignOn
from closeloop.app.overview import overview
from closeloop.app.staff import Principal, SignInError
from closeloop.errors import InputError, NotFound, StateError
from closeloop.web.auth import (
    COOKIE,
    Forbidden,
    NotSignedIn,
    principal_of,
    public,
    remote_of,
    require,
    sign_in_url,
)
from closeloop.web.pages import pages, stylesheet
from closeloop.web.report import render_report, rollout_charts

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
ROLLOUT_ACTIONS = ("promote", "hold", "halt", "resume")
CASE_ACTIONS = ("retry", "resolve", "new_link", "close")


def render(
    template: str, principal: Principal | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    html = pages.get_template(f"console/{template}").render(me=principal, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def handle_refusals(api: FastAPI) -> None:
    """No session on a console page: to the sign-in page; a role too low: a page saying so.
    The API answers both in JSON."""

    @api.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if exc.console:
            return RedirectResponse(sign_in_url(exc.path), status_code=303, headers=HEADERS)
        return JSONResponse({"detail": exc.detail}, status_code=401, headers=exc.headers)

    @api.exception_handler(FormExpired)
    async def _expired(request: Request, exc: FormExpired) -> Response:
        return render(
            "missing.html",
            getattr(request.state, "principal", None),
            status=400,
            title="Form expired",
            what=str(exc),
        )

    @api.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if request.url.path.startswith("/console"):
            return render(
                "refused.html", exc.principal, status=403, title="Not allowed", needed=exc.needed
            )
        return JSONResponse({"detail": exc.detail}, status_code=403)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path of this site, nothing else."""
    if not target:
        return "/console"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console"):
        return "/console"
    return target


class FormExpired(InputError):
    """The form has expired: reload the page and try again."""


async def _form(request: Request, principal: Principal) -> FormData:
    """The posted form; a browser session's form must carry the session's CSRF token."""
    form = await request.form()
    if principal.via != "token":
        token = str(form.get("csrf", ""))
        if not hmac.compare_digest(token, principal.csrf):
            raise FormExpired()
    return form


def router(app: App) -> APIRouter:
    routes = APIRouter(prefix="/console", include_in_schema=False)
    viewer, agent = require("viewer", app.staff), require("agent", app.staff)
    operator = require("operator", app.staff)

    @routes.get("/assets/console.css", dependencies=[Depends(public("a stylesheet"))])
    async def console_css() -> Response:
        return Response(
            stylesheet(), media_type="text/css", headers={"Cache-Control": "max-age=3600"}
        )

    # -- signing in and out --------------------------------------------------------------
    @routes.get("/sign-in", dependencies=[Depends(public("where staff sign in"))])
    def sign_in_page(request: Request, next: str = "/console") -> Response:
        me = principal_of(request, app.staff)
        if me is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
        return render(
            "sign_in.html", None, title="Sign in", next=_safe_next(next), error="", sso=sso
        )

    @routes.post("/sign-in", dependencies=[Depends(public("where staff sign in"))])
    async def sign_in(request: Request) -> Response:
        form = await request.form()
        target = _safe_next(str(form.get("next", "")))
        try:
            session_id, _ = app.staff.sign_in(
                str(form.get("username", "")).strip(),
                str(form.get("password", "")),
                remote=remote_of(request),
            )
        except SignInError:
            return render(
                "sign_in.html",
                None,
                status=401,
                title="Sign in",
                next=target,
                error="The username or password is not right, or the account cannot sign in now.",
                sso=sso,
            )
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE, session_id, secure=True, httponly=True, samesite="strict", path="/"
        )
        return response

    sso = None
    if app.settings.oidc_issuer and app.settings.oidc_client_id:
        sso = SingleSignOn(app.settings, data_key(app.settings.data_dir, "oidc"))
    flow_cookie = "__Host-closeloop-oidc"

    def unconfigured() -> Response:
        return render("missing.html", None, status=404, title="Not configured",
                      what="Single sign-on is not configured here.")  # fmt: skip

    @routes.get("/oidc/start", dependencies=[Depends(public("where single sign-on begins"))])
    def oidc_start(next: str = "/console") -> Response:
        if sso is None:
            return unconfigured()
        started = sso.start(_safe_next(next))
        response = RedirectResponse(started.url, status_code=303, headers=HEADERS)
        response.set_cookie(
            flow_cookie,
            started.cookie,
            max_age=600,
            secure=True,
            httponly=True,
            samesite="lax",
            path="/",
        )
        return response

    @routes.get(
        "/oidc/callback", dependencies=[Depends(public("where the OIDC provider sends staff back"))]
    )
    def oidc_callback(request: Request, code: str = "", state: str = "") -> Response:
        if sso is None:
            return unconfigured()
        try:
            username, target = sso.finish(
                request.cookies.get(flow_cookie, ""), code=code, state=state
            )
            session_id, _ = app.staff.start_session(username, "oidc", remote=remote_of(request))
        except (SignOnError, SignInError) as exc:
            why = (
                str(exc)
                if isinstance(exc, SignOnError)
                else (
                    "You signed in with the provider, but you are not a closeloop user, or your "
                    "account is disabled: ask an admin."
                )
            )
            return render(
                "sign_in.html",
                None,
                status=401,
                title="Sign in",
                next="/console",
                error=why,
                sso=sso,
            )
        response = RedirectResponse(_safe_next(target), status_code=303, headers=HEADERS)
        response.delete_cookie(flow_cookie, path="/", secure=True, httponly=True, samesite="lax")
        response.set_cookie(
            COOKIE, session_id, secure=True, httponly=True, samesite="strict", path="/"
        )
        return response

    @routes.post("/sign-out")
    async def sign_out(request: Request, me: Principal = Depends(viewer)) -> Response:
        await _form(request, me)
        if me.session:
            app.staff.sign_out(me, remote=remote_of(request))
        response = RedirectResponse("/console/sign-in", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- the operator's pages -----------------------------------------------------------
    @routes.get("")
    def home(me: Principal = Depends(viewer)) -> Response:
        with app.store.read() as tx:
            rollouts = tx.all_rollouts()
        return render("home.html", me, title="Overview", state=overview(app), rollouts=rollouts)

    @routes.get("/rollouts")
    def rollouts(me: Principal = Depends(viewer)) -> Response:
        with app.store.read() as tx:
            rows = tx.all_rollouts()
        return render("rollouts.html", me, title="Rollouts", rollouts=rows)

    def rollout_page(me: Principal, name: str, *, error: str = "", status: int = 200) -> Response:
        try:
            report = app.rollouts.report(name)
        except NotFound as exc:
            return render("missing.html", me, status=404, title="Not found", what=str(exc))
        return render(
            "rollout.html",
            me,
            status=status,
            title=f"Rollout {name}",
            r=report,
            drawn=rollout_charts(app.rollouts.over_time(name)),
            stages=app.rollouts.by_stage(name),
            actions=ROLLOUT_ACTIONS,
            error=error,
        )

    @routes.get("/rollouts/{name}")
    def rollout(name: str, me: Principal = Depends(viewer)) -> Response:
        return rollout_page(me, name)

    @routes.post("/rollouts/{name}")
    async def decide(name: str, request: Request, me: Principal = Depends(operator)) -> Response:
        try:
            form = await _form(request, me)
            action, reason = str(form.get("action", "")), str(form.get("reason", "")).strip()
            if action not in ROLLOUT_ACTIONS:
                raise InputError(f"action must be one of {', '.join(ROLLOUT_ACTIONS)}")
            if not reason:
                raise InputError("say why: a reason is required")
            getattr(app.rollouts, action)(name, actor=me.actor, reason=reason)
        except NotFound as exc:
            return render("missing.html", me, status=404, title="Not found", what=str(exc))
        except (InputError, StateError) as exc:
            return rollout_page(me, name, error=str(exc), status=409)
        return RedirectResponse(f"/console/rollouts/{name}", status_code=303, headers=HEADERS)

    @routes.get("/workflows")
    def workflows(me: Principal = Depends(viewer)) -> Response:
        with app.store.read() as tx:
            rows = tx.workflow_versions()
        return render("workflows.html", me, title="Workflows", workflows=rows)

    @routes.get("/health")
    def health(me: Principal = Depends(viewer)) -> Response:
        return render("health.html", me, title="Channels and connectors", state=overview(app))

    @routes.get("/report")
    def report(me: Principal = Depends(viewer)) -> Response:
        nonce = secrets.token_urlsafe(16)  # the report carries its stylesheet inline
        html = render_report(app, nonce=nonce)
        policy = HEADERS["Content-Security-Policy"].replace(
            "style-src 'self'", f"style-src 'nonce-{nonce}'"
        )
        return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": policy})

    # -- the agent's pages --------------------------------------------------------------
    @routes.get("/exceptions")
    def exceptions(queue: str = "", me: Principal = Depends(agent)) -> Response:
        rows = app.desk.queue(queue or None)
        return render("exceptions.html", me, title="Exceptions", rows=rows,
                      queues=app.desk.queues(), queue=queue)  # fmt: skip

    @routes.post("/exceptions/{exception_id}/{action}")
    async def claim(
        exception_id: str, action: str, request: Request, me: Principal = Depends(agent)
    ) -> Response:
        form = await _form(request, me)
        back = _safe_next(str(form.get("back", "/console/exceptions")))
        try:
            if action == "claim":
                app.desk.claim(exception_id, me)
            elif action == "release":
                app.desk.release(exception_id, me)
            else:
                raise InputError("action must be claim or release")
        except (InputError, StateError) as exc:
            return render(
                "missing.html", me, status=409, title="Not done", what=str(exc), back=back
            )
        return RedirectResponse(back, status_code=303, headers=HEADERS)

    def case_page(me: Principal, case_id: str, *, error: str = "", status: int = 200) -> Response:
        try:
            file = app.desk.case_file(case_id)
        except NotFound as exc:
            return render("missing.html", me, status=404, title="Not found", what=str(exc))
        options = app.service.options(file["case"]) if file["in_exception"] else []
        return render(
            "case.html",
            me,
            status=status,
            title=f"Case {case_id}",
            f=file,
            options=options,
            error=error,
        )

    @routes.get("/cases/{case_id}")
    def case(case_id: str, me: Principal = Depends(agent)) -> Response:
        return case_page(me, case_id)

    @routes.post("/cases/{case_id}/{action}")
    async def act(
        case_id: str, action: str, request: Request, me: Principal = Depends(agent)
    ) -> Response:
        try:
            form = await _form(request, me)
            note = str(form.get("note", "")).strip()
            if action == "retry":
                app.desk.retry(case_id, me, note)
            elif action == "resolve":
                values = {
                    k[len("value_") :]: str(v).strip()
                    for k, v in form.items()
                    if k.startswith("value_") and str(v).strip()
                }
                app.desk.resolve(case_id, me, str(form.get("option", "")), values, note)
            elif action == "new_link":
                app.desk.new_link(case_id, me, str(form.get("channel", "")), note)
            elif action == "close":
                app.desk.close(case_id, me, note)
            else:
                raise InputError(f"action must be one of {', '.join(CASE_ACTIONS)}")
        except NotFound as exc:
            return render("missing.html", me, status=404, title="Not found", what=str(exc))
        except (InputError, StateError) as exc:
            return case_page(me, case_id, error=str(exc), status=409)
        return RedirectResponse(f"/console/cases/{case_id}", status_code=303, headers=HEADERS)

    return routes
