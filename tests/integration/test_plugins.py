"""Connector plugins: a package on the path declares an entry point; closeloop loads it.

The test installs a real (if small) distribution into a folder on
`sys.path`: a module and a `.dist-info` with `entry_points.txt`, which is what
`pip install` leaves behind, so `importlib.metadata` finds it the way it
finds any installed plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from closeloop.app import Settings, build
from closeloop.clock import SimClock
from closeloop.connectors.mapping import PluginConnector, load_mapping
from closeloop.connectors.plugins import installed, load_plugin
from closeloop.engine import Status
from closeloop.errors import InputError
from tests.conftest import EXAMPLE, NOW
from tests.integration.test_runtime import trigger

PLUGIN = '''
from closeloop.connectors import Account, WritebackResult


class VaultCore:
    """A system of record reached through a vendor SDK (here: a dict)."""

    def __init__(self, options):
        self.region = options["region"]
        self.effects = {}

    def read_account(self, account_id):
        return Account(
            account_id=account_id,
            first_name="Ana",
            time_zone="America/New_York",
            facts={"flags": [], "balance": 300.0, "state": "NY", "product": "card",
                   "days_past_due": 4},
            contacts=({"channel": "sms", "address": "+12125550123", "consent": True},),
            secrets={"date_of_birth": "1980-02-03", "postal_code": "10001"},
        )

    def execute(self, operation, argument, data, idempotency_key):
        self.effects.setdefault(idempotency_key, operation)
        return WritebackResult(ok=True, reference=f"{self.region}-{len(self.effects)}")


def make(options):
    return VaultCore(options)


def broken(options):
    return object()
'''


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vault_connector.py").write_text(PLUGIN)
    info = site / "vault_connector-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vault-connector\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[closeloop.connectors]\nvault = vault_connector:make\nhollow = vault_connector:broken\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("vault_connector", None)


def config(plugin: str = "vault", **options: object) -> PluginConnector:
    text = f"connector: vault_core\nversion: 1\nkind: plugin\nplugin: {plugin}\n"
    text += f"options: {dict(options) or {'region': 'eu'}}\n"
    loaded = load_mapping(text)
    assert isinstance(loaded, PluginConnector)
    return loaded


def test_an_installed_plugin_is_found_and_made_from_its_options(plugin_on_path: Path) -> None:
    assert {"vault", "hollow"} <= set(installed())
    connector = load_plugin(config())
    account = connector.read_account("A1")
    assert account is not None and account.first_name == "Ana"
    assert connector.execute("add_note", None, {}, "k1").reference == "eu-1"


def test_the_app_reads_and_writes_back_through_the_plugin(
    plugin_on_path: Path, tmp_path: Path
) -> None:
    file = tmp_path / "vault.yaml"
    file.write_text("connector: vault_core\nversion: 1\nkind: plugin\nplugin: vault\n"
                    "options: {region: us}\n")  # fmt: skip
    settings = Settings(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}",
        workflows=[EXAMPLE], connector=file,
    )  # fmt: skip
    app = build(settings, clock=SimClock(NOW))
    try:
        (opened,) = app.runtime.intake([trigger("t1")])
        assert opened.case_id is not None and opened.status == "outreach"
        assert app.dispatcher.connector_name == "vault_core"
        assert type(app.connector).__name__ == "VaultCore"
        assert app.runtime.case(opened.case_id).account["first_name"] == "Ana"
        assert app.runtime.case(opened.case_id).status is Status.OUTREACH
    finally:
        app.close()


@pytest.mark.parametrize(
    ("plugin", "options", "message"),
    [
        ("nowhere", {"region": "eu"}, "no plugin 'nowhere' is installed"),
        ("vault", {"zone": "eu"}, "plugin 'vault' refused its options: 'region'"),
        ("hollow", {"region": "eu"}, "made a object without read_account and execute"),
    ],
)
def test_a_plugin_that_cannot_serve_is_named(
    plugin_on_path: Path, plugin: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_plugin(config(plugin, **options))


def test_a_plugin_file_is_validated_like_a_mapping() -> None:
    from closeloop.errors import SpecError

    with pytest.raises(SpecError) as caught:
        load_mapping("connector: vault_core\nversion: 1\nkind: plugin\nplugin: vault\nregion: eu\n")
    (problem,) = caught.value.problems
    assert (problem.line, problem.path, problem.message) == (5, "region", "unknown key")
    with pytest.raises(SpecError) as caught:
        load_mapping("connector: vault_core\nversion: 1\nkind: soap\n")
    assert caught.value.problems[0].line == 3
    assert "'rest', 'sql', 'batch' or 'plugin'" in caught.value.problems[0].message
