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
    demo_json(
        "--accounts",
        "80",
        "--days",
        "4",
        "--rollout",
        "none",
        "--out",
        str(here / "demo"),
        cwd=here,
    )
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
    by_status = dict(
        con.execute(
            f"SELECT status, count(*) FROM read_parquet('{demo}/pq/cases/*/*.parquet', "
            "hive_partitioning = true) GROUP BY status"
        ).fetchall()
    )
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
    assert (
        bad.returncode == 2 and "--format must be one of parquet, csv, jsonl or ocsf" in bad.stderr
    )
    when = run("export", "--since", "yesterday", "--out", str(demo / "x"), cwd=demo, env=env)
    assert when.returncode == 2 and "--since" in when.stderr


# The attributes OCSF 1.3.0 requires (events/base_event.json, the class files under events/,
# and the objects' `requirement: required` and `at_least_one` constraints), per class used.
BASE = ("activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid")
CLASSES: dict[int, dict[str, object]] = {
    3001: {"required": ("user",), "activities": set(range(1, 13)) | {99}},
    3002: {
        "required": ("user",),
        "one_of": ("service", "dst_endpoint"),
        "activities": set(range(1, 8)) | {99},
    },
    3004: {"required": ("entity",), "activities": set(range(1, 14)) | {99}},
    6003: {"required": ("actor", "api", "src_endpoint"), "activities": {1, 2, 3, 4, 99}},
}
ONE_OF = {
    "user": ("account", "name", "uid"),
    "actor": ("process", "user", "invoked_by", "session", "app_name", "app_uid"),
    "src_endpoint": ("ip", "uid", "name", "hostname", "svc_name", "instance_uid"),
    "dst_endpoint": ("ip", "uid", "name", "hostname", "svc_name", "instance_uid"),
    "entity": ("name", "uid"),
}


def ocsf_problems(event: dict[str, object]) -> list[str]:
    """What keeps `event` from validating against its class's required attributes."""
    problems = [f"no {name}" for name in BASE if name not in event]
    cls = CLASSES.get(int(event.get("class_uid", 0)))
    if cls is None:
        return [*problems, f"class_uid {event.get('class_uid')} is not one closeloop uses"]
    problems += [f"no {name}" for name in cls["required"] if name not in event]
    if "one_of" in cls and not any(k in event for k in cls["one_of"]):
        problems.append(f"none of {cls['one_of']}")
    if event.get("activity_id") not in cls["activities"]:
        problems.append(f"activity_id {event.get('activity_id')} is not one of the class's")
    if event.get("type_uid") != event["class_uid"] * 100 + event["activity_id"]:
        problems.append("type_uid is not class_uid * 100 + activity_id")
    if event.get("category_uid") != event["class_uid"] // 1000:
        problems.append("category_uid is not the class's category")
    metadata = event.get("metadata") or {}
    if not metadata.get("version") or not (metadata.get("product") or {}).get("name"):
        problems.append("metadata needs version and product.name")
    for name, keys in ONE_OF.items():
        value = event.get(name)
        if isinstance(value, dict) and not any(k in value for k in keys):
            problems.append(f"{name} needs one of {keys}")
    api = event.get("api")
    if isinstance(api, dict) and "operation" not in api:
        problems.append("api needs operation")
    if not isinstance(event.get("time"), int):
        problems.append("time must be epoch milliseconds")
    return problems


def with_staff(demo: Path) -> dict[str, str]:
    """Staff sign in (once wrongly) and an admin token is made; its env for the CLI."""
    from closeloop.app.staff import SignInError, Staff
    from closeloop.clock import SystemClock
    from closeloop.store import Store

    store = Store.connect(f"sqlite:///{demo / 'demo' / 'closeloop.db'}")
    staff = Staff(store, SystemClock())
    if not any(u["username"] == "ana" for u in staff.users()):
        staff.add_user("ana", "admin", password="a long and memorable passphrase")
        staff.sign_in("ana", "a long and memorable passphrase", remote="10.0.0.7")
        with pytest.raises(SignInError):
            staff.sign_in("ana", "not the right passphrase", remote="10.0.0.8")
    _, admin = staff.create_token("exports", "admin")
    _, viewer = staff.create_token("dashboards", "viewer")
    store.dispose()
    return {"CLOSELOOP_DATA_DIR": str(demo / "demo"), "ADMIN": admin, "VIEWER": viewer}


def test_ocsf_events_validate_against_the_schema_and_carry_no_personal_data(
    demo: Path,
) -> None:
    env = with_staff(demo)
    done = run(
        "export",
        "--format",
        "ocsf",
        "--out",
        str(demo / "ocsf"),
        "--json",
        cwd=demo,
        env={"CLOSELOOP_DATA_DIR": env["CLOSELOOP_DATA_DIR"]},
    )
    assert done.returncode == 0, done.stderr
    counts = {int(k): v for k, v in json.loads(done.stdout)["classes"].items()}
    lines = (demo / "ocsf" / "ocsf.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == sum(counts.values()) and set(counts) == {3001, 3002, 3004, 6003}
    bad = {e["metadata"]["uid"]: ocsf_problems(e) for e in events if ocsf_problems(e)}
    assert bad == {}
    logons = [e for e in events if e["class_uid"] == 3002]
    staff = [e for e in logons if e["user"].get("name") == "ana"]
    assert {e["status_id"] for e in staff} == {1, 2}  # the sign-in and the wrong password
    assert any(e["src_endpoint"] == {"ip": "10.0.0.8"} for e in staff)
    customers = [e for e in logons if "uid" in e["user"]]
    assert customers and all(e["user"]["uid"].startswith("acct_") for e in customers)
    writebacks = [e for e in events if e["class_uid"] == 6003]
    assert all(e["api"]["request"]["uid"] for e in writebacks)
    assert {e["type_uid"] for e in writebacks} <= {600301, 600303}
    text = "\n".join(lines)
    assert "ACC-0000" not in text and not re.search(r"[\w.]+@example\.com", text)
    assert not re.search(r"\+1\d{10}", text)


def test_personal_data_leaves_only_for_an_admin_who_asks(demo: Path) -> None:
    env = with_staff(demo)
    data = {"CLOSELOOP_DATA_DIR": env["CLOSELOOP_DATA_DIR"]}
    args = ("export", "--personal-data", "--format", "jsonl", "--json")
    refused = run(*args, "--out", str(demo / "p0"), cwd=demo, env=data)
    assert refused.returncode == 2 and "admin's API token" in refused.stderr
    viewer = run(
        *args, "--out", str(demo / "p1"), cwd=demo, env={**data, "CLOSELOOP_TOKEN": env["VIEWER"]}
    )
    assert viewer.returncode == 2 and not (demo / "p1").exists()
    admin = run(
        *args, "--out", str(demo / "p2"), cwd=demo, env={**data, "CLOSELOOP_TOKEN": env["ADMIN"]}
    )
    assert admin.returncode == 0, admin.stderr
    cases = [json.loads(line) for line in (demo / "p2" / "cases.jsonl").open()]
    assert any(c["account"].startswith("ACC-") for c in cases)  # the account ids themselves
    messages = [json.loads(line) for line in (demo / "p2" / "messages.jsonl").open()]
    assert any("@" in (m["address"] or "") for m in messages)
    with sqlite3.connect(demo / "demo" / "closeloop.db") as db:
        audit = db.execute(
            "SELECT actor, action FROM staff_audit WHERE action = ?", ("export_personal_data",)
        ).fetchall()
    assert audit == [("token:exports", "export_personal_data")]
