"""A message's words for one case: its template, in the customer's language, rendered."""

from __future__ import annotations

from typing import Any

from closeloop.channels import render_message
from closeloop.engine import Case
from closeloop.spec import text_for
from closeloop.spec.model import Template


def compose(
    case: Case, template: Template, *, link: str, unsubscribe_url: str | None = None
) -> tuple[str | None, str]:
    """Subject and body; InputError names a variable the template uses but lacks.

    The language is the account's ``locale`` (``es``, ``es-US``), else the
    template's default text.
    """
    context = _context(case, link)
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    subject, body = text_for(template, case.account.get("locale"))
    return render_message(subject, body, context)


def approved_variables(case: Case, template: Template, *, link: str) -> dict[str, str]:
    """What fills an approved template's {{1}}, {{2}}, ... (as the provider numbers them)."""
    context = _context(case, link)
    return {str(n): str(context[name]) for n, name in enumerate(template.approved_variables, 1)}


def _context(case: Case, link: str) -> dict[str, Any]:
    return {**case.data, "link": link, "first_name": case.account.get("first_name", "")}
