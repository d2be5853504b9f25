"""`closeloop users` and `closeloop tokens`: who may sign in to the consoles and call the API,
and `closeloop report`: the self-contained HTML report (docs/consoles.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from closeloop.app.staff import ROLES, Staff
from closeloop.cli.common import _settings, err, out
from closeloop.clock import SystemClock
from closeloop.errors import InputError
from closeloop.store import Store

users_cli = typer.Typer(help="Staff who sign in to the consoles.", no_args_is_help=True)
tokens_cli = typer.Typer(help="API tokens for machines.", no_args_is_help=True)
ROLE_HELP = f"one of {', '.join(ROLES)}"
TOKEN_COLUMNS = ("id", "name", "role", "created_at", "expires_at", "last_used_at", "revoked_at")


@contextmanager
def _staff() -> Iterator[Staff]:
    store = Store.connect(_settings().resolved_database_url())
    try:
        store.upgrade()
        yield Staff(store, SystemClock())
    finally:
        store.dispose()


def _role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"--role must be {ROLE_HELP}, not {role!r}")
    return role


@users_cli.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option(help=ROLE_HELP)],
    name: Annotated[str, typer.Option(help="the person's name, as the consoles show it")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    sso: Annotated[
        bool, typer.Option("--sso", help="no password: the user signs in through OIDC only")
    ] = False,
) -> None:
    """Add a user. The password is asked for (twice), or read from stdin; never an argument."""
    _role(role)
    if sso and password_stdin:
        raise InputError("--sso and --password-stdin exclude each other")
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sso:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with _staff() as staff:
        staff.add_user(username, role, name=name, password=password)
    err.print(f"added {username} as {role}")


@users_cli.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every user, their role, and whether they may sign in."""
    with _staff() as staff:
        rows = staff.users()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table("username", "name", "role", "sign-in", "added", "disabled")
    for r in rows:
        table.add_row(r["username"], r["name"], r["role"],
                      "password" if r.get("has_password") else "single sign-on",
                      str(r["created_at"])[:19], str(r["disabled_at"] or "")[:19])  # fmt: skip
    out.print(table)


@users_cli.command("disable")
def users_disable(username: str) -> None:
    """Disable a user: they cannot sign in, and their sessions end now."""
    with _staff() as staff:
        ended = staff.disable(username)
    err.print(f"disabled {username}; {ended} session(s) ended")


@tokens_cli.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="what the token is for, e.g. core-events")],
    role: Annotated[str, typer.Option(help=ROLE_HELP)],
    days: Annotated[int | None, typer.Option(min=1, help="expires after this many days")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an API token. It is printed once, to stdout: only its hash is kept."""
    _role(role)
    with _staff() as staff:
        token_id, token = staff.create_token(
            name, role, expires_in=timedelta(days=days) if days else None
        )
    if as_json:
        print(json.dumps({"id": token_id, "token": token, "role": role}))
        return
    err.print(f"token {token_id} ({name}, {role}); store it now, it is not shown again:")
    print(token)


@tokens_cli.command("list")
def tokens_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every token: id, name, role, when made, last used, revoked (never the token)."""
    with _staff() as staff:
        rows = staff.tokens()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table("id", "name", "role", "created", "expires", "last used", "revoked")
    for r in rows:
        table.add_row(*(str(r[k] or "")[:19] for k in TOKEN_COLUMNS))
    out.print(table)


@tokens_cli.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token: it is refused from the next request on."""
    with _staff() as staff:
        staff.revoke_token(token_id)
    err.print(f"revoked {token_id}")


def report(
    out_file: Annotated[Path, typer.Option("--out", help="the HTML file to write")] = Path(
        "closeloop-report.html"
    ),
) -> None:
    """Write the outcome report: one self-contained HTML file to open or mail."""
    from closeloop.app import build
    from closeloop.web.report import write_report

    app = build(_settings())
    try:
        path = write_report(app, out_file)
    finally:
        app.close()
    err.print(f"report written to {path}")


def register(cli: typer.Typer) -> None:
    cli.add_typer(users_cli, name="users")
    cli.add_typer(tokens_cli, name="tokens")
    cli.command("report")(report)
