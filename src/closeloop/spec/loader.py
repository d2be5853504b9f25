"""Load a resolution spec from YAML and report every problem at its line.

Loading happens in three passes, each of which collects problems rather than
stopping at the first: YAML syntax (with positions kept for every key and
item), the Pydantic model (unknown keys, missing keys, bad types), then the
meaning of the whole (references between sections, CEL rules, reachability).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from closeloop.errors import Problem, SpecError
from closeloop.spec.model import Spec, format_duration
from closeloop.spec.rules import (
    ACCOUNT_FIELDS,
    SUBMISSION_FIELDS,
    CompiledRule,
    RuleProblem,
    compile_rule,
)

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True)
class CompiledSpec:
    """A validated spec with its CEL rules compiled once."""

    spec: Spec
    eligibility: tuple[CompiledRule, ...]
    step_up: tuple[CompiledRule, ...]
    bounds: Mapping[str, tuple[CompiledRule | None, CompiledRule | None]] = field(
        default_factory=dict
    )
    floors: Mapping[str, CompiledRule] = field(default_factory=dict)  # least instalment
    source: str = ""
    variants: Mapping[str, CompiledSpec] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.spec.key

    def for_cohort(self, cohort: str) -> CompiledSpec:
        """The spec a case of this cohort is handled by: its arm's variant, else this one."""
        return self.variants.get(cohort, self)


class _Positions:
    """Where each path of the YAML document starts (1-based line and column)."""

    def __init__(self, document: Any) -> None:
        self._at: dict[Path_, tuple[int, int]] = {(): (1, 1)}
        self._walk(document, ())

    def _walk(self, node: Any, path: Path_) -> None:
        if isinstance(node, CommentedMap):
            for key, value in node.items():
                line, col = node.lc.key(key)
                self._at[(*path, str(key))] = (line + 1, col + 1)
                try:
                    vline, vcol = node.lc.value(key)
                    self._at[(*path, str(key), "")] = (vline + 1, vcol + 1)
                except (KeyError, TypeError):
                    pass
                self._walk(value, (*path, str(key)))
        elif isinstance(node, CommentedSeq):
            for index, value in enumerate(node):
                line, col = node.lc.item(index)
                self._at[(*path, index)] = (line + 1, col + 1)
                self._walk(value, (*path, index))

    def of(self, path: Path_, *, value: bool = False) -> tuple[int, int]:
        if value and (*path, "") in self._at:
            return self._at[(*path, "")]
        for end in range(len(path), -1, -1):
            if path[:end] in self._at:
                return self._at[path[:end]]
        return (1, 1)


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_source(path: str | Path, *, what: str = "the resolution spec") -> str:
    """The text of an input file; SpecError saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem(file=str(path), line=1, column=1, path="", message=exc.strerror or "")
        raise SpecError([problem], what=what) from exc


def load_spec_file(path: str | Path) -> CompiledSpec:
    """Read and validate the spec at `path`; raise SpecError with every problem."""
    return load_spec(read_source(path), filename=str(path))


def load_spec(text: str, *, filename: str = "<spec>") -> CompiledSpec:
    """Validate spec text; raise SpecError listing every problem found."""
    spec, problem = parse_yaml_model(
        text,
        Spec,
        filename=filename,
        expected="expected a mapping with workflow, version, trigger, outcomes, ...",
    )
    return _check_meaning(spec, text, problem)


Where = Callable[..., Problem]  # (path, message, value=True) -> a Problem at that path


def parse_yaml_model(
    text: str, model: type[M], *, filename: str, expected: str, what: str = "the resolution spec"
) -> tuple[M, Where]:
    """Parse YAML text into `model`: every syntax and shape problem at its line, or
    the model and a function that places further problems at their paths."""
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax: {exc.problem or exc.context}"
        raise SpecError(
            [Problem(file=filename, line=line, column=column, path="", message=message)],
            what=what,
        ) from exc
    if not isinstance(document, CommentedMap):
        raise SpecError(
            [Problem(file=filename, line=1, column=1, path="", message=expected)], what=what
        )
    positions = _Positions(document)

    def problem(path: Path_, message: str, *, value: bool = True) -> Problem:
        line, column = positions.of(path, value=value)
        return Problem(file=filename, line=line, column=column, path=_dotted(path), message=message)

    try:
        return model.model_validate(_plain(document)), problem
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc: Path_ = tuple(error["loc"])
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key is missing"
            elif error["type"] == "string_pattern_mismatch":
                pattern = str((error.get("ctx") or {}).get("pattern", ""))
                if "\\." in pattern:
                    message = "expected an event name such as payment.failed"
                elif "A-Z" in pattern:
                    message = "expected a two-letter region code such as MA"
                else:
                    message = "expected a lower-case name (a-z, 0-9, _), starting with a letter"
            elif error["type"] == "literal_error":
                message = message.replace("Input should be", "expected one of")
            elif error["type"] == "value_error":
                message = message.removeprefix("Value error, ")
            problems.append(problem(loc, message, value=error["type"] != "extra_forbidden"))
        raise SpecError(sorted(problems, key=lambda p: (p.line, p.column)), what=what) from exc


def _check_meaning(spec: Spec, text: str, problem: Where) -> CompiledSpec:
    problems: list[Problem] = []
    compiled = _compile(spec, text, problem, problems)
    variants = {}
    for name, variant in spec.variants.items():
        replaced = {k for k in ("outreach", "identity") if getattr(variant, k) is not None}

        def placed(path: Path_, message: str, *, value: bool = True, name: str = name,
                   replaced: set[str] = replaced) -> Problem:  # fmt: skip
            if path and path[0] in replaced:
                return problem(("variants", name, *path), message, value=value)
            return problem(path, message, value=value)

        found: list[Problem] = []
        variants[name] = _compile(spec.with_variant(name), text, placed, found)
        # What the variant shares with the spec was checked above; what is new here is its own.
        known = {(p.line, p.column, p.message) for p in problems}
        for p in found:
            if p.path.startswith("variants."):
                problems.append(p)
            elif (p.line, p.column, p.message) not in known:
                problems.append(replace(p, message=f"with variant {name}: {p.message}"))
    if problems:
        raise SpecError(sorted(problems, key=lambda p: (p.line, p.column)))
    return replace(compiled, variants=variants)


def _compile(spec: Spec, text: str, problem: Where, problems: list[Problem]) -> CompiledSpec:
    """Check what the sections mean together and compile the rules; add what is wrong."""
    case_fields = dict(spec.trigger.fields)
    variables = {"case": case_fields, "account": ACCOUNT_FIELDS}

    if spec.trigger.key not in case_fields:
        problems.append(problem(("trigger", "key"), "must name one of trigger.fields"))

    def compiled(path: Path_, name: str, source: str, reason: str = "", **kw: Any) -> Any:
        try:
            return compile_rule(name, source, reason=reason, **kw)
        except RuleProblem as exc:
            # The rule's own position counts from where its value starts in the file.
            at = problem(path, exc.message)
            column = at.column + exc.column - 1 if exc.line == 1 else exc.column
            problems.append(replace(at, line=at.line + exc.line - 1, column=column))
            return None

    eligibility = [
        compiled(("eligibility", i, "rule"), r.name, r.rule, r.reason, variables=variables)
        for i, r in enumerate(spec.eligibility)
    ]
    step_up = [
        compiled(
            ("identity", "step_up", i, "when"),
            f"step_up_{i}",
            s.when,
            variables={**variables, "submission": SUBMISSION_FIELDS},
        )
        for i, s in enumerate(spec.identity.step_up)
    ]
    bounds: dict[str, tuple[CompiledRule | None, CompiledRule | None]] = {}
    floors: dict[str, CompiledRule] = {}
    for kind, option in spec.miniapp.options.items():
        if option.outcome not in spec.outcomes:
            problems.append(
                problem(
                    ("miniapp", "options", kind, "outcome"),
                    f"outcome {option.outcome!r} is not defined "
                    f"(defined: {', '.join(sorted(spec.outcomes))})",
                )
            )
        base = ("miniapp", "options", kind)
        if kind == "attestation":
            if not option.statement or "en" not in option.statement:
                problems.append(
                    problem((*base, "statement"), "an attestation needs its statement, with en")
                )
            if not option.statement_version:
                problems.append(
                    problem((*base, "statement_version"), "an attestation needs a version")
                )
        elif option.statement is not None or option.statement_version is not None:
            problems.append(problem((*base, "statement"), "only an attestation has a statement"))
        if kind == "upload_document" and not option.types:
            problems.append(problem((*base, "types"), "an upload needs the file types it takes"))
        elif kind != "upload_document" and (option.types or option.max_mb):
            problems.append(problem((*base, "types"), "only an upload takes files"))
        plan = (option.instalments, option.frequencies, option.first_within)
        if kind == "arrangement":
            for name, value in zip(
                ("instalments", "frequencies", "first_within"), plan, strict=True
            ):
                if not value:
                    problems.append(problem((*base, name), f"an arrangement needs {name}"))
            if option.max is None:
                problems.append(problem((*base, "max"), "an arrangement needs max: the total"))
            if option.min_instalment is not None:
                path = (*base, "min_instalment")
                floor = compiled(
                    path,
                    f"{kind}.min_instalment",
                    option.min_instalment,
                    variables=variables,
                    expect="number",
                )
                if floor is not None:
                    floors[kind] = floor
        elif any(v is not None for v in plan) or option.min_instalment is not None:
            problems.append(problem((*base, "instalments"), "only an arrangement has a plan"))
        low = high = None
        if option.min is not None:
            path = ("miniapp", "options", kind, "min")
            low = compiled(path, f"{kind}.min", option.min, variables=variables, expect="number")
        if option.max is not None:
            path = ("miniapp", "options", kind, "max")
            high = compiled(path, f"{kind}.max", option.max, variables=variables, expect="number")
        bounds[kind] = (low, high)
    offered = {option.outcome for option in spec.miniapp.options.values()}
    for name in spec.outcomes:
        if name not in offered:
            problems.append(
                problem(("outcomes", name), "no mini-app option leads to this outcome", value=False)
            )

    for i, step in enumerate(spec.outreach.steps):
        _check_template(
            spec,
            ("outreach", "steps", i, "template"),
            step.template,
            step.channel,
            problems,
            problem,
        )
        if step.fallback is not None:
            _check_template(
                spec,
                ("outreach", "steps", i, "fallback", "template"),
                step.fallback.template,
                step.fallback.channel,
                problems,
                problem,
            )
            if step.fallback.channel == step.channel:
                problems.append(
                    problem(
                        ("outreach", "steps", i, "fallback", "channel"),
                        "a fallback must use another channel",
                    )
                )
    names = [step.name for step in spec.outreach.steps]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(problem(("outreach", "steps", i, "name"), "step name used twice"))
    for i, offset in enumerate(spec.step_offsets()):
        if offset >= spec.outreach.expires_after:
            problems.append(
                problem(
                    ("outreach", "steps", i),
                    f"unreachable: this step would start {format_duration(offset)} after the "
                    f"case opens, but cases expire after "
                    f"{format_duration(spec.outreach.expires_after)}",
                    value=False,
                )
            )
    if spec.outreach.steps[0].condition != "always":
        problems.append(
            problem(
                ("outreach", "steps", 0, "if"),
                "the first step cannot have a condition: nothing was sent before it",
            )
        )

    _check_templates(spec, problems, problem)

    needed = {"writeback_failed": "outcomes have writebacks", "disputed": "customers may dispute"}
    if spec.identity.known_facts:
        needed["identity_locked"] = "identity checks can lock"
    for reason, why in needed.items():
        if reason not in spec.exceptions:
            problems.append(problem(("exceptions",), f"needs a route for {reason} ({why})"))

    return CompiledSpec(
        spec=spec,
        eligibility=tuple(eligibility),
        step_up=tuple(step_up),
        bounds=bounds,
        floors=floors,
        source=text,
    )


_SMS_OPT_OUT = re.compile(r"\bSTOP\b")
_UNSUBSCRIBE = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")


def _check_templates(spec: Spec, problems: list[Problem], problem: Any) -> None:
    """Every email and SMS says how to opt out; only WhatsApp has approved templates."""
    for name, template in spec.templates.items():
        bodies: list[tuple[Path_, str]] = [(("templates", name, "body"), template.body)]
        bodies += [
            (("templates", name, "locales", code, "body"), text.body)
            for code, text in template.locales.items()
        ]
        for path, body in bodies:
            if template.channel == "sms" and not _SMS_OPT_OUT.search(body):
                problems.append(
                    problem(
                        path, "an SMS must say how to opt out, for example 'Reply STOP to opt out'"
                    )
                )
            if template.channel == "email" and not _UNSUBSCRIBE.search(body):
                problems.append(
                    problem(
                        path,
                        "an email must carry its unsubscribe link: put {{ unsubscribe_url }} in "
                        "the body (closeloop also sends it as List-Unsubscribe)",
                    )
                )
        known = {"link", "first_name", *spec.trigger.fields}
        for i, variable in enumerate(template.approved_variables):
            if variable not in known:
                problems.append(
                    problem(
                        ("templates", name, "approved_variables", i),
                        f"{variable!r} is not a message variable "
                        f"(known: {', '.join(sorted(known))})",
                    )
                )
        if template.approved_variables and template.approved_name is None:
            problems.append(
                problem(
                    ("templates", name, "approved_variables"),
                    "approved_variables fill an approved template: set approved_name too",
                )
            )
        if template.approved_name is not None and template.channel != "whatsapp":
            problems.append(
                problem(
                    ("templates", name, "approved_name"),
                    "only WhatsApp templates have a provider-approved name",
                )
            )


def _check_template(
    spec: Spec, path: Path_, name: str, channel: str, problems: list[Problem], problem: Any
) -> None:
    template = spec.templates.get(name)
    if template is None:
        defined = ", ".join(sorted(spec.templates)) or "none"
        problems.append(problem(path, f"template {name!r} is not defined (defined: {defined})"))
    elif template.channel != channel:
        problems.append(
            problem(path, f"template {name!r} is for {template.channel}, not {channel}")
        )
    elif channel == "email" and not template.subject:
        problems.append(problem(path, f"email template {name!r} needs a subject"))
