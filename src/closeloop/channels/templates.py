"""Message templates: Jinja2 in a sandbox, so a template cannot reach Python."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from closeloop.errors import InputError

_ENV = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)


@lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def render_message(
    subject: str | None, body: str, context: Mapping[str, Any]
) -> tuple[str | None, str]:
    """Render a template's subject and body; InputError names the missing variable."""
    try:
        rendered_subject = _compiled(subject).render(context) if subject else None
        return rendered_subject, _compiled(body).render(context).strip()
    except TemplateError as exc:
        raise InputError(f"template could not be rendered: {exc}") from exc
