"""The local providers as a developer runs them: `closeloop sandbox smtp|twilio`."""

from __future__ import annotations

import json
import smtplib
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import listening, run


def running(data: Path, kind: str) -> AbstractContextManager[int]:
    return listening(data, "sandbox", kind, "--port")


def test_sandbox_smtp_keeps_what_it_receives(tmp_path: Path) -> None:
    with running(tmp_path, "smtp") as port:
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("billing@acme.test", ["ana@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
            refused = smtp.sendmail("billing@acme.test", ["x@y.invalid", "ana@example.com"], b"x")
        assert list(refused) == ["x@y.invalid"]
    with sqlite3.connect(tmp_path / "world.db") as db:
        rows = db.execute("SELECT rcpt_to FROM smtp_received ORDER BY seq").fetchall()
    assert rows == [("ana@example.com",), ("ana@example.com",)]


def test_sandbox_twilio_answers_like_twilio(tmp_path: Path) -> None:
    sid = "AC" + "0" * 32
    with running(tmp_path, "twilio") as port:
        url = f"http://127.0.0.1:{port}/2010-04-01/Accounts/{sid}/Messages.json"
        form = {"To": "+12125550123", "From": "+15005550006", "Body": "hello STOP"}
        made = httpx.post(url, data=form, auth=(sid, "sandbox-auth-token"))
        assert made.status_code == 201 and made.json()["sid"].startswith("SM")
        assert made.json()["status"] == "queued"
        denied = httpx.post(url, data=form, auth=(sid, "wrong"))
        assert denied.status_code == 401 and denied.json()["detail"]["code"] == 20003
        invalid = httpx.post(
            url, data={**form, "To": "+15005550001"}, auth=(sid, "sandbox-auth-token")
        )
        assert invalid.status_code == 400 and invalid.json()["code"] == 21211


def test_sandbox_core_takes_a_payment_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", "api-key")
    monkeypatch.setenv("CLOSELOOP_CORE_ADMIN_KEY", "admin-key")
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps([{"account_id": "A1", "facts": {"balance": 100.0}}]))
    args = ("sandbox", "core", "--accounts", str(accounts), "--port")
    with listening(tmp_path, *args) as port:
        url = f"http://127.0.0.1:{port}"
        paid = [
            httpx.post(
                f"{url}/v1/accounts/A1/payments",
                json={"amount": "40.00", "method": "pm_1", "reference": "r1"},
                headers={"Authorization": "Bearer api-key", "Idempotency-Key": "k1"},
            )
            for _ in range(2)
        ]
        assert [p.status_code for p in paid] == [201, 201] and paid[0].json() == paid[1].json()
        ledger = httpx.get(f"{url}/_admin/ledger", headers={"Authorization": "Bearer admin-key"})
        assert ledger.json()["effects"] == 1
    bad = tmp_path / "faults.json"
    bad.write_text('{"errors": {"503": 3}}')
    done = run("sandbox", "core", "--faults", str(bad), cwd=tmp_path)
    assert done.returncode == 2 and "errors: the share for 503" in done.stderr


def test_connector_validate_points_at_each_problem(tmp_path: Path) -> None:
    example = (
        Path(__file__).resolve().parents[2] / "examples" / "connectors" / "reference_core.yaml"
    )
    good = run("connector", "validate", str(example), cwd=tmp_path)
    assert good.returncode == 0 and "valid (reference_core" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("kind: rest", "kind: soap"))
    refused = run("connector", "validate", str(bad), cwd=tmp_path)
    assert refused.returncode == 2
    line = example.read_text().splitlines().index("kind: rest") + 1
    expected = "kind: expected one of 'rest', 'sql', 'batch' or 'plugin'"
    assert f"{bad}:{line}:7: {expected}" in refused.stderr


def test_ingest_keeps_rows_whose_account_the_core_cannot_give_for_later(tmp_path: Path) -> None:
    """With the core down, no row is taken on a guess; the same file later takes them all."""
    from closeloop.connectors.reference_core import Faults, ReferenceCore
    from closeloop.store.database import create_engine
    from tests.conftest import ROOT
    from tests.integration.test_runtime import ACCOUNT
    from tests.servers import Served, free_port

    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    core = ReferenceCore(engine, api_key="k", admin_key="a", faults=Faults(down=True))
    core.add_accounts([ACCOUNT])
    served = Served(core.app, free_port())
    mapping = tmp_path / "core.yaml"
    example = (ROOT / "examples" / "connectors" / "reference_core.yaml").read_text()
    mapping.write_text(example.replace("http://127.0.0.1:8092", served.url))
    env = {"CLOSELOOP_CONNECTOR": str(mapping), "CLOSELOOP_CORE_API_KEY": "k"}
    batch = tmp_path / "failed.csv"
    batch.write_text(
        "id,type,account_id,amount_due,decline_code,due_date\n"
        "e1,payment.failed,A1,120.50,51,2026-03-01\n"
    )
    try:
        down = run("ingest", str(batch), "--json", cwd=tmp_path, env=env)
        assert down.returncode == 1, down.stderr
        report = json.loads(down.stdout)
        assert report["created"] == 0 and report["unavailable"] == 1
        assert report["not_taken"][0].startswith(f"{batch}:2: not taken: ")
        core.faults = Faults()
        back = run("ingest", str(batch), "--json", cwd=tmp_path, env=env)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["created"] == 1
    finally:
        served.stop()
        engine.dispose()


def test_sandbox_core_over_mutual_tls_with_oauth2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS that wants a client certificate, and bearer tokens from /oauth/token."""
    import ssl

    from closeloop.channels.devtls import dev_certificate

    server_cert, server_key = dev_certificate(tmp_path / "server", "localhost")
    client_cert, client_key = dev_certificate(tmp_path / "client", "closeloop")
    monkeypatch.setenv("CLOSELOOP_CORE_CLIENT_ID", "closeloop")
    monkeypatch.setenv("CLOSELOOP_CORE_CLIENT_SECRET", "s3cret")
    args = ("sandbox", "core", "--tls-cert", str(server_cert), "--tls-key", str(server_key))
    args += ("--client-ca", str(client_cert), "--port")
    context = ssl.create_default_context(cafile=str(server_cert))
    context.load_cert_chain(str(client_cert), str(client_key))
    with listening(tmp_path, *args) as port:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=context) as client:
            token = client.post(
                f"{url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("closeloop", "s3cret"),
            )
            assert token.status_code == 200 and token.json()["token_type"] == "Bearer"
            bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
            assert client.get(f"{url}/v1/accounts/nobody", headers=bearer).status_code == 404
            wrong = client.post(
                f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=("x", "y")
            )
            assert wrong.status_code == 401 and wrong.json() == {"error": "invalid_client"}
        with (
            httpx.Client(verify=ssl.create_default_context(cafile=str(server_cert))) as stranger,
            pytest.raises(httpx.HTTPError),
        ):
            stranger.get(f"{url}/v1/accounts/nobody", headers=bearer)
    refused = run("sandbox", "core", "--client-ca", str(client_cert), cwd=tmp_path)
    assert refused.returncode == 2 and "--client-ca needs them" in refused.stderr
