"""Who may call what: every route declares its rule, and the server enforces it.

A route either requires a role (`require("operator")`) or says why it is open
to anyone (`public("...")`): the mini-app and unsubscribe pages answer to the
customer's link, provider webhooks to their signatures. The test
`tests/integration/test_access.py` walks the whole route table: a route with
no rule fails the build, and each rule is tried with every role.

Machines send ``Authorization: Bearer cl.<id>.<secret>``; people carry a
session cookie from `/console/sign-in`. A console page asked for without a
session redirects to the sign-in page; an API call answers 401. A role too
low answers 403. A console form posted from a session carries the session's
CSRF token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request

from closeloop.app.staff import ROLES, Principal, Staff

COOKIE = "__Host-closeloop-staff"
# Routes FastAPI adds itself: the API's description. Nothing else may be without a rule.
OPEN_PATHS = frozenset(
    {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/console/static"}
)


class NotSignedIn(HTTPException):
    def __init__(self, console: bool, path: str) -> None:
        self.console = console
        self.path = path
        super().__init__(
            status_code=401,
            detail="sign in, or send an API token: Authorization: Bearer cl.<id>.<secret>",
            headers={"WWW-Authenticate": 'Bearer realm="closeloop"'},
        )


class Forbidden(HTTPException):
    def __init__(self, principal: Principal, needed: str) -> None:
        self.principal = principal
        self.needed = needed
        super().__init__(
            status_code=403,
            detail=f"{principal.name} has the {principal.role} role; this needs {needed}",
        )


def remote_of(request: Request) -> str:
    return request.client.host if request.client else ""


def principal_of(request: Request, staff: Staff) -> Principal | None:
    """The caller: a bearer token, or else a staff session cookie."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return staff.token(presented.strip(), remote=remote_of(request))
    return staff.session(request.cookies.get(COOKIE, ""))


def require(role: str, staff: Staff) -> Callable[[Request], Principal]:
    """A dependency: the caller, who must have `role` (or a higher one)."""
    assert role in ROLES, role

    def dependency(request: Request) -> Principal:
        principal = principal_of(request, staff)
        if principal is None:
            path = request.url.path
            raise NotSignedIn(path.startswith("/console") and request.method == "GET", path)
        if not principal.may(role):
            raise Forbidden(principal, role)
        request.state.principal = principal
        return principal

    dependency.closeloop_role = role  # type: ignore[attr-defined]
    return dependency


def public(why: str) -> Callable[[], Awaitable[None]]:
    """A dependency that does nothing but say why a route is open to anyone (a coroutine:
    the mini-app's routes are coroutines and stay off the thread pool)."""

    async def dependency() -> None:
        return None

    dependency.closeloop_public = why  # type: ignore[attr-defined]
    return dependency


def route_table(routes: Any, prefix: str = "", inherited: tuple[Any, ...] = ()) -> list[Any]:
    """Every route the app answers, as (methods, path, rule): the rule a role, "public",
    "open" (one of `OPEN_PATHS`) or None (no rule: a bug). Routers FastAPI includes lazily
    are walked into."""
    table: list[Any] = []
    for route in routes:
        router = getattr(route, "original_router", None)
        if router is not None:
            context = route.include_context
            marked = (
                (public(router.closeloop_public),) if hasattr(router, "closeloop_public") else ()
            )
            deps = (*inherited, *context.dependencies, *(Depends(m) for m in marked))
            table += route_table(router.routes, prefix + context.prefix, deps)
            continue
        path = prefix + route.path
        methods = tuple(sorted(getattr(route, "methods", None) or ()))
        if not hasattr(route, "dependant"):
            table.append((methods, path, "open" if path in OPEN_PATHS else None))
            continue
        table.append((methods, path, rule_of(route, inherited)))
    return table


def public_router(why: str) -> APIRouter:
    """A router whose every route is open to anyone, for the reason given. It costs its
    requests nothing (a `public` dependency is resolved on every request): the mini-app's."""
    router = APIRouter()
    router.closeloop_public = why  # type: ignore[attr-defined]
    return router


def rule_of(route: Any, inherited: tuple[Any, ...] = ()) -> str | None:
    """The access rule a route declares: a role, "public", or None (none: a bug)."""
    found: list[str] = []
    for dep in inherited:
        dependency = dep.dependency
        if hasattr(dependency, "closeloop_role"):
            found.append(dependency.closeloop_role)
        elif hasattr(dependency, "closeloop_public"):
            found.append("public")
    dependant = getattr(route, "dependant", None)
    stack = list(dependant.dependencies) if dependant is not None else []
    while stack:
        dep = stack.pop()
        if hasattr(dep.call, "closeloop_role"):
            found.append(dep.call.closeloop_role)
        elif hasattr(dep.call, "closeloop_public"):
            found.append("public")
        stack.extend(dep.dependencies)
    return found[0] if len(set(found)) == 1 else None


def sign_in_url(path: str) -> str:
    return f"/console/sign-in?next={quote(path, safe='/')}"
