"""The REST connector against the reference core over real HTTP, and its mapping's checks."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from closeloop.app.reconcile import differences
from closeloop.channels.devtls import dev_certificate
from closeloop.connectors.credentials import ClientCredentialsAuth
from closeloop.connectors.mapping import (
    ClientCredentials,
    RestMapping,
    Tls,
    load_mapping,
    load_mapping_file,
)
from closeloop.connectors.reference_core import ReferenceCore, core_effects
from closeloop.connectors.rest import RestConnector
from closeloop.errors import InputError, OperationalError, SpecError
from closeloop.store.database import create_engine
from tests.conftest import NOW, ROOT
from tests.servers import Served, free_port

MAPPING = ROOT / "examples" / "connectors" / "reference_core.yaml"
API, ADMIN = "rest-api-key", "rest-admin-key"
PAID = {"account_id": "A1", "case_id": "case_1", "amount": "120.50", "method": "pm_1"}


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[ReferenceCore, str]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'core.db'}")
    reference = ReferenceCore(engine, api_key=API, admin_key=ADMIN)
    reference.add_accounts(
        [
            {
                "account_id": "A1",
                "first_name": "Ana",
                "time_zone": "America/New_York",
                "facts": {"flags": ["past_due"], "balance": 300.0},
                "contacts": [{"channel": "email", "address": "ana@example.com"}],
                "payment_methods": [{"id": "pm_1", "kind": "card", "last4": "4242"}],
                "secrets": {"date_of_birth": "1980-02-03"},
            }
        ]
    )
    served = Served(reference.app, free_port())
    yield reference, served.url
    served.stop()
    engine.dispose()


def mapping_for(url: str, **changes: Any) -> RestMapping:
    text = MAPPING.read_text().replace("http://127.0.0.1:8092", url)
    return load_mapping(text).model_copy(update=changes)


@pytest.fixture
def connector(
    core: tuple[ReferenceCore, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[RestConnector]:
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    rest = RestConnector(mapping_for(core[1]))
    yield rest
    rest.close()


def faults(url: str, **given: Any) -> None:
    answer = httpx.put(
        f"{url}/_admin/faults", json=given, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 200, answer.text


def test_the_example_mapping_is_valid() -> None:
    mapping = load_mapping_file(MAPPING)
    assert set(mapping.operations) >= {"post_payment", "clear_flag", "add_note"}


def test_an_account_and_each_write_by_the_mapping(
    core: tuple[ReferenceCore, str], connector: RestConnector
) -> None:
    reference, _ = core
    account = connector.read_account("A1")
    assert account is not None and account.first_name == "Ana"
    assert account.payment_methods[0]["id"] == "pm_1" and account.secrets
    assert connector.read_account("nobody") is None
    paid = connector.execute("post_payment", None, PAID, "case_1.paid.0.post_payment")
    assert paid.ok and paid.reference.startswith("pos_")
    cleared = connector.execute("clear_flag", "past_due", PAID, "case_1.paid.1.clear_flag")
    noted = connector.execute("add_note", None, {**PAID, "outcome": "paid"}, "case_1.paid.2.note")
    assert cleared.ok and noted.ok
    again = connector.execute("post_payment", None, PAID, "case_1.paid.0.post_payment")
    assert again.ok and again.reference == paid.reference  # a replay, no second effect
    assert connector.read_account("A1").facts["flags"] == []  # type: ignore[union-attr]
    assert reference.ledger() == {"effects": 3, "duplicate_keys": 0, "duplicate_outcomes": 0}


def test_the_core_lists_what_it_holds_for_a_case_for_reconciliation(
    core: tuple[ReferenceCore, str], connector: RestConnector
) -> None:
    reference, url = core
    keys = ["case_1.paid.0.post_payment", "case_1.paid.2.note"]
    connector.execute("post_payment", None, PAID, keys[0])
    connector.execute("add_note", None, {**PAID, "outcome": "paid"}, keys[1])
    connector.execute("post_payment", None, PAID, keys[0])  # a replay: still one effect
    held = connector.effects("case_1", "A1")
    assert [(e.operation, e.idempotency_key) for e in held] == [
        ("post_payment", keys[0]), ("add_note", keys[1])
    ]  # fmt: skip
    assert connector.reconciles and connector.effects("case_2", "A1") == []
    with reference.engine.begin() as c:  # a release of the core applies the payment again
        c.execute(core_effects.insert().values(
            id="pos_again", idempotency_key="other-key", operation="post_payment",
            account_id="A1", case_id="case_1", reference=keys[0], payload={}, at=NOW,
        ))  # fmt: skip
    operations = ("post_payment", "add_note")
    written = [{"idempotency_key": k, "operation": o, "status": "done",
                "result": {"reference": e.reference}}
               for k, o, e in zip(keys, operations, held, strict=True)]  # fmt: skip
    found = differences("case_1", written, connector.effects("case_1", "A1"))
    assert [d["times"] for d in found.duplicated] == [2] and not found.missing
    faults(url, down=True)
    with pytest.raises(OperationalError, match="without a list at data"):
        connector.effects("case_1", "A1")
    without = RestConnector(mapping_for(url, effects=None))
    assert not without.reconciles
    without.close()


def test_errors_a_retry_can_fix_and_errors_it_cannot(
    core: tuple[ReferenceCore, str], connector: RestConnector
) -> None:
    reference, url = core
    faults(url, errors={503: 1.0})
    busy = connector.execute("post_payment", None, PAID, "k1")
    assert not busy.ok and busy.retryable and busy.retry_after == 1.0
    faults(url, errors={429: 1.0})
    assert connector.execute("post_payment", None, PAID, "k1").retryable
    faults(url)
    refused = connector.execute("post_payment", None, {**PAID, "amount": "-5"}, "k2")
    assert not refused.ok and not refused.retryable and "422" in refused.error
    unbuildable = connector.execute("post_payment", None, {"account_id": "A1"}, "k3")
    assert not unbuildable.retryable and "amount is required" in unbuildable.error
    assert reference.ledger()["effects"] == 0


def test_a_broken_answer_is_never_taken_as_success(
    core: tuple[ReferenceCore, str], connector: RestConnector
) -> None:
    reference, url = core
    for fault, error in (
        ({"malformed": 1.0}, "not JSON"),
        ({"truncated": 1.0}, "connection"),
        ({"drift": True}, "does not match the mapping: no id"),
    ):
        faults(url, **fault)
        result = connector.execute("post_payment", None, PAID, "case_1.paid.0.post_payment")
        assert not result.ok and result.retryable and error in result.error, (fault, result)
    faults(url)
    healed = connector.execute("post_payment", None, PAID, "case_1.paid.0.post_payment")
    assert healed.ok  # the stored answer, replayed: still one effect
    assert reference.ledger()["effects"] == 1


def test_an_answer_that_differs_from_the_mapping_is_not_success(
    core: tuple[ReferenceCore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core posted, but the mapping expects a settled payment: not taken as success."""
    reference, url = core
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    text = MAPPING.read_text().replace("http://127.0.0.1:8092", url)
    strict = text.replace("{status: {equals: posted}, amount: {type: decimal}}", (
        "{status: {equals: settled}, amount: {type: integer}, settled_at: {}}"
    ))  # fmt: skip
    rest = RestConnector(load_mapping(strict))
    try:
        result = rest.execute("post_payment", None, PAID, "case_1.paid.0.post_payment")
    finally:
        rest.close()
    assert not result.ok and result.retryable
    assert result.error == (
        "the answer does not match the mapping: status is 'posted', not 'settled'; "
        "amount is not of type integer: '120.50'; no settled_at"
    )
    assert reference.ledger()["effects"] == 1  # made once; a retry replays the same answer


def test_a_timeout_after_commit_is_retried_into_the_same_effect(
    core: tuple[ReferenceCore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, url = core
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    mapping = mapping_for(url)
    quick = mapping.model_copy(
        update={"timeouts": mapping.timeouts.model_copy(update={"read": timedelta(seconds=0.5)})}
    )
    rest = RestConnector(quick)
    faults(url, timeout_after_commit=1.0, hang_seconds=2.0)
    lost = rest.execute("post_payment", None, PAID, "k1")
    assert not lost.ok and lost.retryable and lost.error == "timeout"
    faults(url)
    assert rest.execute("post_payment", None, PAID, "k1").ok
    rest.close()
    assert reference.ledger()["effects"] == 1


def test_a_core_without_idempotency_keys_is_read_before_each_write(
    core: tuple[ReferenceCore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, url = core
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    rest = RestConnector(mapping_for(url))
    first = rest.execute("post_payment", None, PAID, "k1")
    rest.mapping = rest.mapping.model_copy(update={"honours_idempotency_keys": False})
    # Without a key the core would take a second payment; the read finds the first.
    again = rest.execute("post_payment", None, PAID, "k1")
    assert again.ok and again.reference == first.reference
    rest.close()
    assert reference.ledger()["effects"] == 1


def test_a_missing_credential_is_named() -> None:
    with pytest.raises(InputError, match="set CLOSELOOP_CORE_API_KEY"):
        RestConnector(load_mapping_file(MAPPING))


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ("kind: rest", "kind", "expected one of 'rest'"),
        (
            "amount: {from: amount, type: decimal, required: true}",
            "operations.post_payment.body.amount",
            "exactly one of from",
        ),
        (
            "path: /v1/accounts/{account_id}/payments",
            "operations.post_payment.path",
            "{acount_id} is not a field",
        ),
        (
            "fields: {status: {equals: posted}, amount: {type: decimal}}",
            "operations.post_payment.answer.fields.amount.type",
            "expected one of 'string'",
        ),
        (
            "fields: {status: {equals: active}, instalments: {type: integer}}",
            "operations.set_arrangement.answer.fields",
            "not a dotted path",
        ),
        (
            "effects?case_id={case_id}",
            "effects.path",
            "an effects query knows account_id and case_id",
        ),
    ],
)
def test_mapping_problems_say_where(change: str, where: str, message: str) -> None:
    broken = {
        "kind: rest": "kind: soap",
        "amount: {from: amount, type: decimal, required: true}": (
            "amount: {from: amount, const: 1, type: decimal, required: true}"
        ),
        "path: /v1/accounts/{account_id}/payments": "path: /v1/accounts/{acount_id}/payments",
        "fields: {status: {equals: posted}, amount: {type: decimal}}": (
            "fields: {status: {equals: posted}, amount: {type: money}}"
        ),
        "fields: {status: {equals: active}, instalments: {type: integer}}": (
            "fields: {status: {equals: active}, instalments/0: {type: integer}}"
        ),
        "effects?case_id={case_id}": "effects?case_id={idempotency_key}",
    }[change]
    text = MAPPING.read_text().replace(change, broken, 1)
    with pytest.raises(SpecError) as caught:
        load_mapping(text, filename="core.yaml")
    problem = caught.value.problems[0]
    assert problem.path.startswith(where) and message in problem.message, problem
    line = text.splitlines()[problem.line - 1]
    assert broken.split(":")[0].strip() in line or where.split(".")[-1] in line


def test_oauth2_client_credentials_fetch_reuse_and_renew_a_token(
    core: tuple[ReferenceCore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, url = core
    reference.oauth_clients = {"closeloop": "s3cret"}
    reference.token_lifetime = timedelta(seconds=2)
    monkeypatch.setenv("CORE_CLIENT_ID", "closeloop")
    monkeypatch.setenv("CORE_CLIENT_SECRET", "s3cret")
    oauth = ClientCredentials(
        type="oauth2_client_credentials",
        token_url=f"{url}/oauth/token",
        client_id_env="CORE_CLIENT_ID",
        client_secret_env="CORE_CLIENT_SECRET",
    )
    rest = RestConnector(mapping_for(url, auth=oauth))
    try:
        auth = rest.client.auth
        assert isinstance(auth, ClientCredentialsAuth)
        assert rest.execute("post_payment", None, PAID, "k1").ok
        assert rest.read_account("A1") is not None and auth.fetched == 1  # one token, reused
        reference.tokens.clear()  # revoked: the core answers 401 once, a new token follows
        assert rest.execute("add_note", None, {**PAID, "outcome": "paid"}, "k2").ok
        assert auth.fetched == 2
        time.sleep(2.0)  # past its lifetime (less the margin): renewed before it is sent
        assert rest.execute("post_payment", None, PAID, "k1").ok and auth.fetched == 3
    finally:
        rest.close()
    assert reference.ledger()["effects"] == 2
    monkeypatch.setenv("CORE_CLIENT_SECRET", "wrong")
    refused = RestConnector(mapping_for(url, auth=oauth))
    try:
        result = refused.execute("post_payment", None, PAID, "k3")
    finally:
        refused.close()
    assert not result.ok and result.retryable  # the writebacks wait while the secret is fixed
    assert result.error == (
        "closeloop's credentials were refused: the token endpoint answered 401 (invalid_client)"
    )


def test_mutual_tls_only_a_client_with_its_certificate_gets_in(
    core: tuple[ReferenceCore, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = core
    server_cert, server_key = dev_certificate(tmp_path / "server", "localhost")
    client_cert, client_key = dev_certificate(tmp_path / "client", "closeloop")
    served = Served(
        reference.app,
        free_port(),
        ssl_certfile=str(server_cert),
        ssl_keyfile=str(server_key),
        ssl_ca_certs=str(client_cert),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    monkeypatch.setenv("CLOSELOOP_CORE_API_KEY", API)
    trusted = Tls(ca_file=str(server_cert))
    with_cert = trusted.model_copy(
        update={"client_cert_file": str(client_cert), "client_key_file": str(client_key)}
    )
    try:
        rest = RestConnector(mapping_for(served.url, tls=with_cert))
        anonymous = RestConnector(mapping_for(served.url, tls=trusted))
        paid = rest.execute("post_payment", None, PAID, "k1")
        stranger = anonymous.execute("post_payment", None, PAID, "k2")
        rest.close()
        anonymous.close()
    finally:
        served.stop()
    assert paid.ok and paid.reference.startswith("pos_")
    assert not stranger.ok and stranger.retryable and stranger.error.startswith("connection")
    assert reference.ledger()["effects"] == 1
    with pytest.raises(InputError, match="tls:"):
        RestConnector(mapping_for(served.url, tls=Tls(ca_file=str(tmp_path / "none.pem"))))
