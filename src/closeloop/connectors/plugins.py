"""Connectors written in Python, installed as entry points.

A bank whose system of record needs more than a mapping (a vendor SDK, a
message queue, a mainframe gateway) writes a connector in Python and
installs it as a package that declares an entry point in the group
``closeloop.connectors``::

    [project.entry-points."closeloop.connectors"]
    acme_core = "acme_closeloop:make_connector"

The entry point is a callable taking the ``options`` of the connector's file
(a dict) and returning an object with the port's two methods,
``read_account(account_id)`` and ``execute(operation, argument, data,
idempotency_key)`` (see connectors.port). The connector's file names it::

    connector: acme_core
    version: 1
    kind: plugin
    plugin: acme_core
    options: {region: eu-west-1}
"""

from __future__ import annotations

from importlib.metadata import entry_points

from closeloop.connectors.mapping import PluginConnector
from closeloop.connectors.port import Connector
from closeloop.errors import InputError

GROUP = "closeloop.connectors"


def installed() -> list[str]:
    """Names of the connector plugins installed in this environment."""
    return sorted({e.name for e in entry_points(group=GROUP)})


def load_plugin(config: PluginConnector) -> Connector:
    """The plugin's connector, made from the file's options; InputError saying what is wrong."""
    found = [e for e in entry_points(group=GROUP) if e.name == config.plugin]
    if not found:
        known = ", ".join(installed()) or "none"
        raise InputError(
            f"connector {config.connector}: no plugin {config.plugin!r} is installed "
            f"(entry point group {GROUP}; installed: {known})"
        )
    try:
        factory = found[0].load()
    except Exception as exc:  # a plugin's import error is its author's, reported as such
        raise InputError(
            f"connector {config.connector}: plugin {config.plugin!r} ({found[0].value}) "
            f"could not be loaded: {exc}"
        ) from exc
    try:
        connector = factory(dict(config.options))
    except Exception as exc:
        raise InputError(
            f"connector {config.connector}: plugin {config.plugin!r} refused its options: {exc}"
        ) from exc
    missing = [m for m in ("read_account", "execute") if not callable(getattr(connector, m, None))]
    if missing:
        raise InputError(
            f"connector {config.connector}: plugin {config.plugin!r} made a "
            f"{type(connector).__name__} without {' and '.join(missing)}"
        )
    return connector  # type: ignore[no-any-return]
