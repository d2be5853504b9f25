from __future__ import annotations

import re
from pathlib import Path

import pytest

from closeloop.errors import SpecError
from closeloop.spec import explain, load_spec, load_spec_file
from tests.conftest import EXAMPLE, KYC, ROOT


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(text, filename="bad.yaml")
    return [str(p) for p in info.value.problems]


def edit(old: str, new: str) -> str:
    text = EXAMPLE.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_example_validates_and_compiles_rules_once() -> None:
    compiled = load_spec_file(EXAMPLE)
    assert compiled.key == "failed_payment@1"
    assert [r.name for r in compiled.eligibility] == [
        "has_balance",
        "no_legal_hold",
        "not_deceased",
    ]
    assert compiled.bounds["pay_now"][0] is not None


def test_unknown_key_points_at_its_line() -> None:
    text = edit("  max_attempts: 3\n", "  max_attempts: 3\n  max_attemps: 4\n")
    found = problems_of(text)
    line = line_of(text, "max_attemps")
    assert found == [f"bad.yaml:{line}:3: identity.max_attemps: unknown key"]


def test_bad_types_and_enums_are_all_reported() -> None:
    text = edit("version: 1", "version: one").replace("channel: sms\n", "channel: pigeon\n")
    found = problems_of(text)
    line = line_of(text, "version: one")
    assert any(p.startswith(f"bad.yaml:{line}:10: version:") for p in found)
    assert any(
        "channel: expected one of 'email', 'sms', 'whatsapp' or 'webhook'" in p for p in found
    )


def test_cel_syntax_error_has_column_inside_the_rule() -> None:
    text = edit("rule: case.amount_due > 0.0", "rule: case.amount_due > ")
    (problem,) = problems_of(text)
    line = line_of(text, "rule: case.amount_due > ")
    assert problem.startswith(f"bad.yaml:{line}:")
    assert "eligibility[0].rule: CEL syntax error" in problem


def test_cel_undeclared_field_and_type_errors() -> None:
    text = edit("'deceased' in account.flags", "'deceased' in account.flagz")
    text = text.replace("min: case.amount_due * 0.25", "min: case.amount_due + 'x'")
    found = problems_of(text)
    assert any("account.flagz is not a declared field" in p for p in found)
    assert any("miniapp.options.pay_now.min: CEL type error" in p for p in found)


def test_rule_must_be_boolean() -> None:
    (problem,) = problems_of(edit("rule: case.amount_due > 0.0", "rule: case.amount_due"))
    assert "must be true or false" in problem


def test_undefined_template_outcome_and_unreachable_step() -> None:
    text = edit("template: declined_card_sms, wait", "template: declined_card_smss, wait")
    text = text.replace("      outcome: paid\n", "      outcome: payed\n")
    text = text.replace("expires_after: 8d", "expires_after: 3d")
    found = problems_of(text)
    joined = "\n".join(found)
    assert "template 'declined_card_smss' is not defined" in joined
    assert "outcome 'payed' is not defined" in joined
    assert "outcomes.paid: no mini-app option leads to this outcome" in joined
    assert re.search(r"outreach\.steps\[2\]: unreachable: this step would start 3d", joined)
    assert all(re.match(r"bad\.yaml:\d+:\d+: ", p) for p in found)


def test_yaml_syntax_error_has_position() -> None:
    (problem,) = problems_of("workflow: x\n  version: [1\n")
    assert re.match(r"bad\.yaml:\d+:\d+: YAML syntax", problem)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="No such file"):
        load_spec_file(tmp_path / "nope.yaml")


def test_explain_is_the_reviewer_page() -> None:
    page = explain(load_spec_file(EXAMPLE).spec)
    for heading in ("WHO IS CONTACTED", "IDENTITY", "WHAT DONE MEANS", "evidence kept", "CONTACT"):
        assert heading in page
    assert 'if not: "account under legal hold"' in page
    assert "Only between 08:00 and 21:00 in the customer's local time" in page
    assert "In MA: between 08:00 and 20:00." in page
    assert "At most 3 message(s) in 1w per customer, across every workflow" in page
    assert "At most 4 message(s) per case; then its outreach stops." in page
    assert "email (declined_card_email), a required notice" in page
    assert "Messages in English and Spanish" in page


def test_every_email_and_sms_says_how_to_opt_out() -> None:
    text = edit("Reply STOP to opt out.", "Thanks.")
    text = text.replace("      To stop these emails: {{ unsubscribe_url }}\n", "", 1)
    found = problems_of(text)
    sms_line = line_of(text, 'body: "Your payment of')
    assert (
        f"bad.yaml:{sms_line}:11: templates.declined_card_sms.body: an SMS must say how"
        in (found[1][: found[1].index("how") + 3])
    )
    assert (
        "templates.declined_card_email.body: an email must carry its unsubscribe link" in (found[0])
    )
    assert len(found) == 2


def test_contact_policy_section_is_validated() -> None:
    text = edit('hours: {start: "08:00", end: "21:00"}', 'hours: {start: "21:00", end: "8am"}')
    text = text.replace("{scope: customer, max: 3, per: 7d}", "{scope: customer, max: 3}")
    text = text.replace("    MA: {", "    Mass: {")
    text = text.replace(
        "      fallback: {channel: email", "      priority: urgent\n      fallback: {channel: email"
    )
    found = "\n".join(problems_of(text))
    assert "contact.hours.end: expected a local time such as 08:00 or 20:30" in found
    assert "contact.caps[0]: a customer cap needs a window, for example per: 7d" in found
    assert "contact.jurisdictions.Mass.[key]: expected a two-letter region code such as MA" in found
    assert "outreach.steps[2].priority: expected one of 'required' or 'nudge'" in found
    only_whatsapp = edit(
        "    channel: whatsapp\n    approved_name", "    channel: sms\n    approved_name"
    )
    assert any("only WhatsApp templates have" in p for p in problems_of(only_whatsapp))


def test_templates_per_locale() -> None:
    from closeloop.spec import text_for

    template = load_spec_file(EXAMPLE).spec.templates["declined_card_email"]
    assert text_for(template, "es-US")[0] == "Su pago de ${{ amount_due }} no se pudo procesar"
    assert text_for(template, "es")[1].startswith("Hola")
    assert text_for(template, "fr") == (template.subject, template.body)
    assert text_for(template, None) == (template.subject, template.body)
    spanish_sms = "Responda STOP para no recibir mas."
    found = problems_of(edit(spanish_sms, "Gracias."))
    assert len(found) == 1
    assert "templates.declined_card_sms.locales.es.body: an SMS must say how to opt out" in found[0]


def test_approved_template_variables_are_checked() -> None:
    text = edit(
        "approved_variables: [first_name, amount_due, link]",
        "approved_variables: [first_name, amount_owed]",
    )
    (problem,) = problems_of(text)
    assert "approved_variables[1]: 'amount_owed' is not a message variable" in problem
    no_name = edit("    approved_name: payment_reminder_v1\n", "")
    assert any("set approved_name too" in p for p in problems_of(no_name))


def test_an_attestation_needs_its_statement_and_only_it_has_one() -> None:
    kyc = KYC.read_text()
    assert load_spec(kyc, filename="kyc.yaml").key == "kyc_attestation@1"
    unversioned = kyc.replace("      statement_version: kyc-declaration-2026-01\n", "")
    assert any("an attestation needs a version" in p for p in problems_of(unversioned))
    no_english = kyc.replace("        en: >", "        fr: >")
    assert any("its statement, with en" in p for p in problems_of(no_english))
    stray = edit("      label: Pay now\n", "      label: Pay now\n      statement: {en: x}\n")
    assert any("only an attestation has a statement" in p for p in problems_of(stray))
    summary = explain(load_spec(kyc, filename="kyc.yaml").spec)
    assert 'statement kyc-declaration-2026-01 (es): "Confirmo' in summary


def test_the_packaged_examples_are_the_repositorys() -> None:
    """The installed package carries the example workflow and mapping the docs show."""
    packaged = ROOT / "src" / "closeloop" / "examples"
    files = sorted(p.relative_to(packaged) for p in packaged.rglob("*.yaml"))
    assert Path("failed_payment.yaml") in files
    assert Path("connectors/reference_core.yaml") in files
    for name in files:
        assert (packaged / name).read_text() == (ROOT / "examples" / name).read_text(), name


def test_a_variant_is_the_cadence_of_the_arm_of_its_name() -> None:
    compiled = load_spec_file(EXAMPLE)
    sms = compiled.for_cohort("sms_first")
    assert [s.channel for s in sms.spec.outreach.steps] == ["sms", "email", "whatsapp"]
    assert sms.key == compiled.key and sms.spec.identity == compiled.spec.identity
    assert compiled.for_cohort("email_first") is compiled  # no variant: the spec's own
    assert compiled.for_cohort("control") is compiled
    assert "VARIANTS" in explain(compiled.spec) and "at once: sms" in explain(compiled.spec)


def test_a_variant_is_checked_like_the_spec_at_its_own_lines() -> None:
    text = edit(
        "template: declined_card_email, wait: 48h, if: not_opened}",
        "template: declined_card_mail, wait: 48h, if: not_opened}",
    ).replace(
        "variants:\n",
        "variants:\n  no_facts:\n    description: nothing changes\n"
        "  checked:\n    identity:\n      known_facts: [date_of_birth]\n"
        "      step_up: [{when: submission.amount > case.nope, require: one_time_code}]\n",
        1,
    )
    found = problems_of(text)
    assert found[0] == (
        f"bad.yaml:{line_of(text, '  no_facts:') + 1}:5: variants.no_facts: "
        "a variant replaces outreach, identity or both"
    )  # the shape first: nothing else is reported until it is right
    text = text.replace("  no_facts:\n    description: nothing changes\n", "")
    found = problems_of(text)
    assert len(found) == 2, found  # the spec's own sections are not reported again per variant
    assert f":{line_of(text, 'case.nope')}:" in found[0] and "case.nope" in found[0]
    assert "variants.checked.identity.step_up[0].when" in found[0]
    assert f"bad.yaml:{line_of(text, 'declined_card_mail')}:" in found[1]
    assert (
        "variants.sms_first.outreach.steps[1].template: template 'declined_card_mail'" in found[1]
    )
    reserved = problems_of(EXAMPLE.read_text().replace("  sms_first:\n", "  control:\n", 1))
    assert reserved == [
        f"bad.yaml:{line_of(EXAMPLE.read_text(), '  sms_first:')}:3: "
        "variants: 'control' names a cohort, not an arm: choose another name"
    ]
