"""`closeloop sandbox ...`: the local providers and the reference core, for development."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from closeloop.cli.common import _settings, err
from closeloop.errors import InputError

sandbox_cli = typer.Typer(no_args_is_help=True, help="Local providers for development.")


@sandbox_cli.command("smtp")
def sandbox_smtp(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 2525,
    host: str = "127.0.0.1",
    tls: Annotated[bool, typer.Option("--tls", help="offer STARTTLS (dev certificate)")] = False,
) -> None:
    """Run the local SMTP sink: it accepts mail and keeps it in the world database."""
    import ssl

    from closeloop.channels.devtls import dev_certificate
    from closeloop.channels.smtp import SmtpSink
    from closeloop.store.database import create_engine

    settings = _settings()
    context = None
    if tls:
        cert, key = dev_certificate(settings.data_dir / "keys")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        err.print(f"STARTTLS certificate: {cert} (trust it with CLOSELOOP_SMTP_CA_FILE)")
    engine = create_engine(settings.resolved_world_url())
    sink = SmtpSink(engine, host=host, port=port, tls_context=context).start()
    err.print(f"SMTP sink on {host}:{port}, keeping mail in {settings.resolved_world_url()}")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        sink.stop()
        engine.dispose()


def _json_file(flag: str, path: Path) -> Any:
    """The JSON a flag's file holds; InputError naming the flag and the file if not."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{flag} {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{flag} {path}: not JSON ({exc})") from exc


@sandbox_cli.command("core")
def sandbox_core(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8092,
    host: str = "127.0.0.1",
    faults: Annotated[
        Path | None, typer.Option(help="a JSON file of faults to start with (see docs/core.md)")
    ] = None,
    accounts: Annotated[
        Path | None, typer.Option(help="a JSON file: a list of account records to load")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="and this private key")] = None,
    client_ca: Annotated[
        Path | None, typer.Option(help="require client certificates signed by this CA (mTLS)")
    ] = None,
) -> None:
    """Run the reference billing core: accounts, payments and a ledger, with injected faults.

    Its API key and admin key come from CLOSELOOP_CORE_API_KEY and
    CLOSELOOP_CORE_ADMIN_KEY, or are made up and printed. With
    CLOSELOOP_CORE_CLIENT_ID and CLOSELOOP_CORE_CLIENT_SECRET it also issues
    OAuth 2.0 client-credentials tokens at /oauth/token. Faults can be
    changed while it runs: PUT /_admin/faults with the admin key.
    """
    import ssl

    import uvicorn
    from pydantic import ValidationError

    from closeloop.connectors.reference_core import Faults, ReferenceCore
    from closeloop.store.database import create_engine

    settings = _settings()
    api_key = os.environ.get("CLOSELOOP_CORE_API_KEY") or secrets.token_urlsafe(18)
    admin_key = os.environ.get("CLOSELOOP_CORE_ADMIN_KEY") or secrets.token_urlsafe(18)
    start = Faults()
    if faults is not None:
        try:
            start = Faults.model_validate(_json_file("--faults", faults))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise InputError(f"--faults {faults}: {problems}") from exc
    records: Any = []
    if accounts is not None:
        records = _json_file("--accounts", accounts)
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and isinstance(r.get("account_id"), str) for r in records
        ):
            raise InputError(
                f"--accounts {accounts}: expected a list of objects, each with an account_id"
            )
    if (tls_cert is None) != (tls_key is None) or (client_ca and not tls_cert):
        raise InputError("--tls-cert and --tls-key go together; --client-ca needs them")
    for flag, path in (
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
        ("--client-ca", client_ca),
    ):
        if path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
    client_id = os.environ.get("CLOSELOOP_CORE_CLIENT_ID")
    client_secret = os.environ.get("CLOSELOOP_CORE_CLIENT_SECRET")
    clients = {client_id: client_secret} if client_id and client_secret else {}
    engine = create_engine(f"sqlite:///{settings.data_dir / 'core.db'}")
    core = ReferenceCore(
        engine, api_key=api_key, admin_key=admin_key, faults=start, oauth_clients=clients
    )
    added = core.add_accounts(records)
    scheme = "https" if tls_cert else "http"
    err.print(
        f"reference core on {scheme}://{host}:{port} ({added} accounts added; "
        f"API key {api_key}, admin key {admin_key}"
        + (f"; OAuth client {client_id}" if clients else "")
        + ("; client certificates required" if client_ca else "")
        + ")"
    )
    tls: dict[str, Any] = {}
    if tls_cert and tls_key:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
    if client_ca:
        tls |= {"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    try:
        uvicorn.run(core.app, host=host, port=port, log_level="warning", **tls)
    finally:
        engine.dispose()


@sandbox_cli.command("cards")
def sandbox_cards(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8091,
    host: str = "127.0.0.1",
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="an origin that may frame the card form (default: PUBLIC_URL)"),
    ] = None,
) -> None:
    """Run the local card sandbox: hosted card fields and a token API, on their own origin.

    Point closeloop at it with CLOSELOOP_CARD_FIELDS_URL=http://HOST:PORT and
    CLOSELOOP_CARD_API_KEY (the same key; a made-up one is printed when unset).
    """
    import uvicorn

    from closeloop.connectors.card_sandbox import CardSandbox
    from closeloop.store.database import create_engine

    settings = _settings()
    key = settings.card_api_key.get_secret_value() if settings.card_api_key else "sandbox-card-key"
    origins = allow_origin or [settings.public_url]
    for given in origins:
        if not given.startswith(("http://", "https://")):
            raise InputError(
                f"--allow-origin {given!r}: give an origin such as https://pay.example"
            )
    engine = create_engine(f"sqlite:///{settings.data_dir / 'cards.db'}")
    sandbox = CardSandbox(engine, allowed_origins=origins, api_key=key)
    err.print(f"card sandbox on http://{host}:{port} (framable by {', '.join(origins)}; key {key})")
    try:
        uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
    finally:
        engine.dispose()


@sandbox_cli.command("twilio")
def sandbox_twilio(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8089,
    host: str = "127.0.0.1",
    inbound_url: Annotated[
        str | None,
        typer.Option(
            help="closeloop's inbound webhook (default: PUBLIC_URL/webhooks/twilio/inbound)"
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="messages per second per sender")] = 100.0,
) -> None:
    """Run the local Twilio-compatible Messages API (SMS and WhatsApp).

    It uses CLOSELOOP_TWILIO_ACCOUNT_SID and CLOSELOOP_TWILIO_AUTH_TOKEN (or
    made-up ones it prints), keeps messages in the world database, and calls
    status callbacks every 200 ms. A customer's reply: curl --data-urlencode
    From=+12125550123 --data-urlencode To=+15005550006 -d Body=STOP
    http://HOST:PORT/sandbox/reply
    """
    import threading

    import uvicorn

    from closeloop.channels.twilio_sandbox import TwilioSandbox
    from closeloop.store.database import create_engine

    settings = _settings()
    sid = settings.twilio_account_sid or "AC" + "0" * 32
    token = (
        settings.twilio_auth_token.get_secret_value()
        if settings.twilio_auth_token
        else "sandbox-auth-token"
    )
    engine = create_engine(settings.resolved_world_url())
    sandbox = TwilioSandbox(
        engine,
        account_sid=sid,
        auth_token=token,
        inbound_url=inbound_url or f"{settings.public_url.rstrip('/')}/webhooks/twilio/inbound",
        rate_per_second=rate,
    )
    stop = threading.Event()

    def callbacks() -> None:
        while not stop.wait(0.2):
            sandbox.deliver_callbacks()

    threading.Thread(target=callbacks, daemon=True).start()
    err.print(f"Twilio sandbox on http://{host}:{port} (account {sid}, token {token})")
    try:
        uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        engine.dispose()
