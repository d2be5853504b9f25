"""The batch-file connector: instruction files out, acknowledgement files back, exactly once.

Real files in real folders: closeloop writes fixed-width (the example mapping)
or CSV instruction files; `core_run` plays the core's nightly job, reading
each new instruction file and answering with an acknowledgement file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from closeloop.app import App, Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.batch import BatchFileConnector
from closeloop.connectors.mapping import BatchMapping, load_mapping
from closeloop.engine import Status
from closeloop.errors import InputError, SpecError
from tests.conftest import EXAMPLE, NOW, ROOT
from tests.integration.test_runtime import ACCOUNT
from tests.integration.test_writebacks import paid

MAPPING = ROOT / "examples" / "connectors" / "core_batch.yaml"


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    made = {n: tmp_path / n for n in ("inbound", "acks", "extracts", "state")}
    for folder in made.values():
        folder.mkdir()
    with (made["extracts"] / "accounts.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["account_no", "first_name", "time_zone", "balance", "product", "state",
             "days_past_due", "extra_facts", "contacts", "payment_methods", "known_facts"]
        )  # fmt: skip
        for account_no in ("A1", "A2"):
            writer.writerow(
                [account_no, "Ana", "America/New_York", "300.0", "card", "NY", "4",
                 json.dumps({"flags": ["past_due"]}), json.dumps(ACCOUNT["contacts"]),
                 json.dumps(ACCOUNT["payment_methods"]), json.dumps(ACCOUNT["secrets"])]
            )  # fmt: skip
    return made


def mapping_file(folders: dict[str, Path], text: str | None = None) -> Path:
    text = (text or MAPPING.read_text()).replace("/srv/core", str(folders["inbound"].parent))
    text = text.replace("/var/lib/closeloop", str(folders["state"]))
    file = folders["state"] / "core.yaml"
    file.write_text(text)
    return file


def core_run(folders: dict[str, Path], reject: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """The core's batch job: each new instruction file answered by an acknowledgement file."""
    keys: list[str] = []
    for instructions in sorted(folders["inbound"].glob("core_batch-*.txt")):
        ack = folders["acks"] / f"{instructions.stem}.ack"
        if ack.exists():
            continue
        lines = []
        for n, record in enumerate(instructions.read_text().splitlines()):
            key, account = record[3:75].strip(), record[75:91].strip()
            keys.append(key)
            refused = account in reject
            status, reference = ("RJ", "") if refused else ("OK", f"CORE{n:012d}")
            reason = "ACCOUNT CLOSED" if refused else ""
            lines.append(f"{key:<72}{status}{reference:<16}{reason:<60}")
        ack.write_text("\n".join(lines) + "\n")
    return keys


@pytest.fixture
def app(folders: dict[str, Path], database_url: str) -> Iterator[App]:
    settings = Settings(
        data_dir=folders["state"],
        database_url=database_url,
        workflows=[EXAMPLE],
        connector=mapping_file(folders),
    )
    built = build(settings, clock=SimClock(NOW))
    yield built
    built.close()


def test_instructions_go_out_once_and_acknowledgements_close_the_cases(
    app: App, folders: dict[str, Path]
) -> None:
    clock = app.clock
    assert isinstance(clock, SimClock)
    kept = paid(app, "A1", "t1")
    refused = paid(app, "A2", "t2")
    for _ in range(3):  # asked again and again before the core answers: still one record each
        app.dispatcher.run_writebacks()
        clock.advance(timedelta(minutes=20))
    (written,) = folders["inbound"].glob("core_batch-*.txt")
    records = written.read_text().splitlines()
    assert len(records) == 6 and all(len(r) >= 91 for r in records)
    assert sorted(r[:3] for r in records) == ["FLC", "FLC", "NOT", "NOT", "PAY", "PAY"]
    payment = next(r for r in records if r.startswith("PAY") and "A1" in r[75:91])
    assert payment[91:103] == "000000012050"  # cents, right-aligned, zero-padded
    assert app.runtime.case(kept).status is Status.WRITING_BACK
    with app.store.read() as tx:
        assert all(r["attempts"] == 0 for r in tx.writebacks())  # waiting is not an attempt
    assert len(core_run(folders, reject={"A2"})) == 6
    clock.advance(timedelta(minutes=20))
    app.dispatcher.run_writebacks()
    assert app.runtime.case(kept).status is Status.RESOLVED
    case = app.runtime.case(refused)
    assert case.status is Status.EXCEPTION and "rejected by the core: ACCOUNT CLOSED" in str(
        case.reason
    )
    with app.store.read() as tx:
        references = {r["result"]["reference"] for r in tx.writebacks(kept)}
    assert all(ref.startswith("CORE") for ref in references)
    assert list(folders["inbound"].glob("*.partial")) == []
    assert len(list(folders["inbound"].glob("core_batch-*.txt"))) == 1


def test_a_file_named_but_not_written_when_a_worker_died_is_written_once(
    folders: dict[str, Path],
) -> None:
    loaded = load_mapping(mapping_file(folders).read_text())
    assert isinstance(loaded, BatchMapping)
    connector = BatchFileConnector(loaded)
    data = {"account_id": "A1", "amount": "10.00", "method": "pm_1"}
    assert connector.execute("post_payment", None, data, "case_1.k.pay").pending
    original = connector._write
    connector._write = lambda name: None  # type: ignore[method-assign]  # the worker dies here
    connector.settle()
    connector._write = original  # type: ignore[method-assign]
    assert list(folders["inbound"].iterdir()) == []
    connector.close()
    again = BatchFileConnector(loaded)  # the next worker finds the named file and writes it
    again.settle()
    files = list(folders["inbound"].iterdir())
    assert [f.name for f in files] == ["core_batch-000001.txt"]
    assert len(files[0].read_text().splitlines()) == 1
    assert again.execute("post_payment", None, data, "case_1.k.pay").pending
    again.settle()
    assert len(list(folders["inbound"].iterdir())) == 1  # nothing staged: no second file
    core_run(folders)
    answer = again.execute("post_payment", None, data, "case_1.k.pay")
    assert answer.ok and answer.reference == "CORE000000000000"
    with again.engine.connect() as c:
        assert c.execute(sa.text("SELECT state FROM instructions")).scalar_one() == "accepted"
    again.close()


def test_csv_instructions_and_acknowledgements(folders: dict[str, Path]) -> None:
    text = """
connector: core_csv
version: 1
kind: batch
format: csv
outbound: /srv/core/inbound
journal: /var/lib/closeloop/core_csv.db
ack:
  folder: /srv/core/acks
  pattern: "*.csv"
  key: {column: ref}
  status: {column: result}
  reference: {column: core_id}
  reason: {column: message}
  accepted: [ACCEPTED]
accounts: {file: /srv/core/extracts/accounts.csv, key: account_no}
operations:
  add_note:
    fields:
      - {name: kind, const: NOTE}
      - {name: ref, from: idempotency_key}
      - {name: account, from: account_id}
      - {name: text, from: note}
  clear_flag:
    fields:
      - {name: kind, const: FLAG}
      - {name: ref, from: idempotency_key}
      - {name: account, from: account_id}
      - {name: text, from: argument}
"""
    loaded = load_mapping(mapping_file(folders, text).read_text())
    assert isinstance(loaded, BatchMapping)
    connector = BatchFileConnector(loaded)
    note = {"account_id": "A1", "note": 'Paid, "in full", by card'}
    assert connector.execute("add_note", None, note, "k-note").pending
    assert connector.execute("clear_flag", "past_due", {"account_id": "A1"}, "k-flag").pending
    connector.settle()
    (written,) = folders["inbound"].iterdir()
    rows = list(csv.DictReader(written.open(newline="")))
    assert [r["kind"] for r in rows] == ["FLAG", "NOTE"]  # one header, by key order
    assert rows[1]["text"] == 'Paid, "in full", by card'
    (folders["acks"] / "answers.csv").write_text(
        "ref,result,core_id,message\nk-note,ACCEPTED,N-1,\nk-flag,REJECTED,,no such flag\n"
    )
    assert connector.execute("add_note", None, note, "k-note").reference == "N-1"
    flag = connector.execute("clear_flag", "past_due", {"account_id": "A1"}, "k-flag")
    assert not flag.ok and not flag.retryable and flag.error == "rejected by the core: no such flag"
    account = connector.read_account("A1")
    assert account is not None and account.first_name == "Ana"
    connector.close()


def test_what_a_batch_mapping_refuses(folders: dict[str, Path]) -> None:
    text = MAPPING.read_text().replace(
        "{name: token, from: token_ref, width: 40}", "{name: token, from: token_ref}"
    )
    with pytest.raises(SpecError, match="every field needs a width"):
        load_mapping(text)
    loaded = load_mapping(
        mapping_file(folders).read_text().replace(str(folders["inbound"]), "/nowhere")
    )
    assert isinstance(loaded, BatchMapping)
    with pytest.raises(InputError, match="outbound /nowhere: no such folder"):
        BatchFileConnector(loaded)
    connector = BatchFileConnector(load_mapping(mapping_file(folders).read_text()))  # type: ignore[arg-type]
    long = {"account_id": "A" * 17, "amount": "1.00"}
    refused = connector.execute("post_payment", None, long, "k-long")
    assert not refused.ok and not refused.retryable
    assert "account is longer than its 16 characters" in refused.error
    connector.close()
