"""The staff pages' templates (the consoles and the report), their filters and stylesheet."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape

from closeloop.web import charts

pages = Environment(
    loader=PackageLoader("closeloop.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
pages.globals["charts"] = charts


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _age(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} d" if hours >= 48 else f"{hours:.1f} h"


def _pct(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.1%}"  # an en dash: no value


pages.filters.update(when=_when, age=_age, pct=_pct)


@cache
def stylesheet() -> str:
    """The consoles' stylesheet, read once: served as a file, and inside the report."""
    return (resources.files("closeloop.web") / "static" / "console.css").read_text()
