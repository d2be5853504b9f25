"""`closeloop export`: Parquet by day (read back by DuckDB and pyarrow), CSV, JSON Lines;
no personal data leaves."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest

from closeloop.app.export import SCHEMAS
from tests.acceptance.conftest import demo_json, run


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("export")
    demo_json("--accounts", "80", "--days", "4", "--rollout", "none", "--out",
              str(here / "demo"), cwd=here)  # fmt: skip
    return here


def export(demo: Path, *args: str) -> dict[str, dict[str, object]]:
    done = run("export", *args, "--json", cwd=demo, env={"CLOSELOOP_DATA_DIR": str(demo / "demo")})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["tables"])


def test_parquet_by_day_reads_back_with_duckdb_and_pyarrow(demo: Path) -> None:
    tables = export(demo, "--out", str(demo / "pq"))
    with sqlite3.connect(demo / "demo" / "closeloop.db") as db:
        (cases,) = db.execute("SELECT count(*) FROM cases").fetchone()
        (account,) = db.execute("SELECT account_id FROM cases ORDER BY id LIMIT 1").fetchone()
    assert tables["cases"]["rows"] == cases > 0
    for name, schema in SCHEMAS.items():
        dataset = ds.dataset(demo / "pq" / name, format="parquet", partitioning="hive")
        assert dataset.to_table().num_rows == tables[name]["rows"], name
        assert set(dataset.schema.names) == set(schema.names), name
    days = sorted(p.name for p in (demo / "pq" / "cases").iterdir())
    assert days[0].startswith("day=2026-03-") and len(days) >= 4
    con = duckdb.connect()
    by_status = dict(con.execute(
        f"SELECT status, count(*) FROM read_parquet('{demo}/pq/cases/*/*.parquet', "
        "hive_partitioning = true) GROUP BY status"
    ).fetchall())  # fmt: skip
    assert sum(by_status.values()) == cases
    accounts = con.execute(
        f"SELECT DISTINCT account FROM read_parquet('{demo}/pq/cases/*/*.parquet')"
    ).fetchall()
    assert all(a.startswith("acct_") and len(a) == 29 for (a,) in accounts)
    assert account not in {a for (a,) in accounts}  # pseudonyms, not account ids
    again = export(demo, "--out", str(demo / "pq2"))
    first = ds.dataset(demo / "pq" / "cases", partitioning="hive").to_table().column("account")
    second = ds.dataset(demo / "pq2" / "cases", partitioning="hive").to_table().column("account")
    assert first.to_pylist() == second.to_pylist()  # the same account, the same pseudonym
    assert again["cases"]["rows"] == tables["cases"]["rows"]


def test_csv_and_jsonl_carry_no_personal_data(demo: Path) -> None:
    export(demo, "--format", "csv", "--out", str(demo / "csv"))
    tables = export(demo, "--format", "jsonl", "--out", str(demo / "jsonl"))
    text = "".join(p.read_text() for p in (demo / "csv").iterdir())
    text += "".join(p.read_text() for p in (demo / "jsonl").iterdir())
    assert "case_id" in text and "ACC-0000" not in text
    assert not re.search(r"[\w.]+@example\.com", text)  # no email address
    assert not re.search(r"\+1\d{10}", text)  # no phone number
    assert not re.search(r"/m/[A-Za-z0-9_-]{20,}", text)  # no link token
    rows = [json.loads(line) for line in (demo / "jsonl" / "writebacks.jsonl").open()]
    assert len(rows) == tables["writebacks"]["rows"] and rows[0]["created_at"].endswith("Z")
    assert set(rows[0]) == set(SCHEMAS["writebacks"].names)


def test_a_window_and_bad_flags(demo: Path) -> None:
    later = export(demo, "--since", "2026-03-04T00:00", "--out", str(demo / "late"))
    everything = export(demo, "--out", str(demo / "all"))
    assert 0 < later["cases"]["rows"] < everything["cases"]["rows"]
    env = {"CLOSELOOP_DATA_DIR": str(demo / "demo")}
    bad = run("export", "--format", "xls", "--out", str(demo / "x"), cwd=demo, env=env)
    assert bad.returncode == 2 and "--format must be one of parquet, csv, jsonl" in bad.stderr
    when = run("export", "--since", "yesterday", "--out", str(demo / "x"), cwd=demo, env=env)
    assert when.returncode == 2 and "--since" in when.stderr
