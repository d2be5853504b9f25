"""The one-page summary of a spec that a compliance reviewer signs off."""

from __future__ import annotations

from closeloop.spec.model import Identity, Spec, format_duration

_FACTS = {
    "date_of_birth": "date of birth",
    "postal_code": "postal code",
    "last4_ssn": "last four digits of the SSN",
    "account_last4": "last four digits of the account number",
}


_LANGUAGES = {
    "es": "Spanish",
    "fr": "French",
    "pt": "Portuguese",
    "zh": "Chinese",
    "vi": "Vietnamese",
    "ko": "Korean",
    "de": "German",
    "it": "Italian",
}


def explain(spec: Spec) -> str:
    """Plain-language summary: outcome, eligibility, identity, evidence, contact."""
    out: list[str] = [f"{spec.title}", f"workflow {spec.workflow}, version {spec.version}", ""]
    if spec.description:
        out += [spec.description.strip(), ""]
    fields = ", ".join(f"{k} ({v})" for k, v in spec.trigger.fields.items())
    out += [
        "WHEN A CASE OPENS",
        f"  On the backend event {spec.trigger.event}, one case per {spec.trigger.key}.",
        f"  Data received: {fields}.",
    ]
    if spec.trigger.closes_on:
        out.append(f"  Closed as resolved elsewhere on: {', '.join(spec.trigger.closes_on)}.")
    out += ["", "WHO IS CONTACTED (every rule must hold; otherwise the reason is recorded)"]
    if not spec.eligibility:
        out.append("  Everyone: no eligibility rules.")
    for rule in spec.eligibility:
        out.append(f"  - {rule.name}: {rule.rule}")
        out.append(f'      if not: "{rule.reason}"')
    out += ["", "WHAT THE CUSTOMER MAY DO"]
    for kind, option in spec.miniapp.options.items():
        bounds = ""
        if option.min or option.max:
            bounds = f" (from {option.min or 'any'} to {option.max or 'any'})"
        out.append(f"  - {option.label} [{kind}]{bounds} -> outcome {option.outcome}")
        if option.instalments:
            least = f", each at least {option.min_instalment}" if option.min_instalment else ""
            counts = ", ".join(map(str, option.instalments))
            every = " or ".join(option.frequencies or ())
            first = format_duration(option.first_within) if option.first_within else "?"
            out.append(
                f"      a plan of {counts} instalments, paid {every}{least}; "
                f"the first within {first}"
            )
        for locale, text in sorted((option.statement or {}).items()):
            out.append(f'      statement {option.statement_version} ({locale}): "{text.strip()}"')
    out += ["", "IDENTITY", *_identity(spec.identity)]
    out += ["", "WHAT DONE MEANS, AND WHAT IS WRITTEN BACK"]
    for name, outcome in spec.outcomes.items():
        out.append(f"  {name}: {outcome.description}")
        out.append(f"    written back: {', '.join(str(w) for w in outcome.writebacks)}")
        evidence = ", ".join(outcome.evidence) if outcome.evidence else "none beyond the history"
        out.append(f"    evidence kept: {evidence}")
    out += ["", "CONTACT"]
    out += _cadence(spec)
    policy = spec.contact
    out.append(
        f"  Only between {policy.hours.start:%H:%M} and {policy.hours.end:%H:%M} in the "
        "customer's local time (in every time zone they may be in); otherwise later, never lost."
    )
    for region, hours in sorted(policy.jurisdictions.items()):
        out.append(f"  In {region}: between {hours.start:%H:%M} and {hours.end:%H:%M}.")
    for cap in policy.caps:
        per = f" in {format_duration(cap.per)}" if cap.per else ""
        if cap.scope == "customer":
            out.append(
                f"  At most {cap.max} message(s){per} per customer, across every workflow; "
                "more wait, required notices first."
            )
        else:
            out.append(f"  At most {cap.max} message(s){per} per case; then its outreach stops.")
    out.append(
        "  Never to an address without consent or after an opt-out; every email carries a "
        "one-click unsubscribe, every SMS says how to stop."
    )
    languages = sorted({code for t in spec.templates.values() for code in t.locales})
    if languages:
        names = ", ".join(_LANGUAGES.get(code, code) for code in languages)
        out.append(f"  Messages in English and {names}, in the customer's language.")
    out += ["", "WHEN IT LEAVES THE HAPPY PATH"]
    for reason, route in spec.exceptions.items():
        out.append(f"  {reason}: queue {route.queue}, handled within {format_duration(route.sla)}")
    if spec.variants:
        out += [
            "",
            "VARIANTS (for the cases of the rollout arm of the same name; the rest as above)",
        ]
    for name, variant in spec.variants.items():
        out.append(f"  {name}: {variant.description.strip()}".rstrip(": "))
        treated = spec.with_variant(name)
        if variant.identity is not None:
            out += ["    identity:", *(f"    {line}" for line in _identity(treated.identity))]
        if variant.outreach is not None:
            out += ["    contact:", *(f"    {line}" for line in _cadence(treated))]
    return "\n".join(out) + "\n"


def _identity(identity: Identity) -> list[str]:
    out = []
    if identity.known_facts:
        facts = ", ".join(_FACTS[f] for f in identity.known_facts)
        out.append(f"  Before any action the customer confirms: {facts}.")
        out.append(
            f"  After {identity.max_attempts} failed attempts the case is locked and goes "
            "to a person."
        )
    else:
        out.append("  No identity check: the signed link alone opens the mini-app.")
    for step_up in identity.step_up:
        out.append(f"  Also a one-time code when: {step_up.when}")
    return out


def _cadence(spec: Spec) -> list[str]:
    out = []
    for offset, step in zip(spec.step_offsets(), spec.outreach.steps, strict=True):
        when = "at once" if not offset else f"after {format_duration(offset)}"
        cond = {
            "always": "",
            "not_opened": ", only if the link was not opened",
            "not_verified": ", only if identity was not confirmed",
        }[step.condition]
        notice = ", a required notice" if step.priority == "required" else ""
        line = f"  {when}: {step.channel} ({step.template}){cond}{notice}"
        if step.fallback:
            line += f"; if it cannot be delivered, {step.fallback.channel} instead"
        out.append(line)
    out.append(f"  The case expires {format_duration(spec.outreach.expires_after)} after it opens.")
    return out
