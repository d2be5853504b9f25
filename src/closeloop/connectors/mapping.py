"""A connector's mapping: how closeloop's operations become a system of record's requests.

One YAML file per connector, validated like a resolution spec (every problem
with file:line:column, the field path and what is expected). For a REST
connector it names the base URL, the credentials (from the environment, never
in the file), per-call timeouts, and for each operation the request (method,
path with ``{field}`` placeholders, body fields with renames, conversions and
constants) and what a successful answer must hold (the effect's reference at
a field path). See docs/connectors.md.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from closeloop.errors import Problem, SpecError
from closeloop.spec.loader import parse_yaml_model, read_source
from closeloop.spec.model import Duration, Operation

# What closeloop hands a connector for each write: the writeback's payload (the
# outcome's values, the account and the case), its argument and its key.
SOURCES = frozenset(
    {
        "account_id",
        "case_id",
        "argument",
        "idempotency_key",
        "amount",
        "method",
        "token_ref",
        "instalments",
        "frequency",
        "first_date",
        "schedule",
        "email",
        "phone",
        "address",
        "document_ref",
        "type",
        "size",
        "sha256",
        "note",
        "statement_version",
        "outcome",
    }
)
Conversion = Literal["string", "decimal", "cents", "integer", "boolean", "date", "as_is"]
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FieldMap(_Strict):
    """One field of a request body: taken from closeloop's data (renamed, converted) or fixed."""

    source: str | None = Field(default=None, alias="from")
    const: Any = None
    type: Conversion = "as_is"
    # For type date: how the core writes a date (strftime, "%Y%m%d"); default ISO 8601.
    format: str | None = Field(default=None, min_length=2)
    required: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FieldMap:
        if (self.source is None) == (self.const is None):
            raise ValueError("give exactly one of from (a field of closeloop's data) or const")
        if self.format is not None and self.type != "date":
            raise ValueError("format goes with type: date")
        if self.source is not None and self.source not in SOURCES:
            known = ", ".join(sorted(SOURCES))
            raise ValueError(f"from: {self.source!r} is not a field closeloop sends ({known})")
        return self


_PATH = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"  # a dotted path into a JSON answer ("data.0.id")
AnswerType = Literal["string", "decimal", "integer", "boolean", "object", "list"]


class Expected(_Strict):
    """A field a successful answer must hold: its JSON type, and maybe its exact value."""

    type: AnswerType = "string"
    equals: str | int | bool | None = None


class Answer(_Strict):
    """What a successful answer must hold."""

    reference: str = Field(pattern=_PATH)
    # Other fields, by dotted path: an answer without them, or with another type or
    # value, is not taken as success (a core that changed its answers, or a partial one).
    fields: dict[str, Expected] = Field(default_factory=dict)

    @field_validator("fields")
    @classmethod
    def _paths(cls, fields: dict[str, Expected]) -> dict[str, Expected]:
        for path in fields:
            if not re.match(_PATH, path):
                raise ValueError(f"{path!r} is not a dotted path (like status or data.0.id)")
        return fields


class RestOperation(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(pattern=r"^/\S*$")
    # Keys are field paths into the JSON body ("payment.amount" nests an object).
    body: dict[str, FieldMap] = Field(default_factory=dict)
    answer: Answer | None = None

    @field_validator("path")
    @classmethod
    def _placeholders(cls, path: str) -> str:
        for name in _PLACEHOLDER.findall(path):
            if name not in SOURCES:
                raise ValueError(f"{{{name}}} is not a field closeloop sends")
        return path


_ENV = r"^[A-Z][A-Z0-9_]*$"  # an environment variable's name: secrets never live in the file


class EffectFields(_Strict):
    """Where each effect's parts are, by dotted path inside one item of the list."""

    operation: str = Field(default="operation", pattern=_PATH)
    idempotency_key: str = Field(pattern=_PATH)  # the key closeloop sent, as the core keeps it
    reference: str = Field(default="id", pattern=_PATH)


class EffectsQuery(_Strict):
    """How to ask the core what it holds for a case (reconciliation, docs/connectors.md)."""

    method: Literal["GET"] = "GET"
    path: str = Field(pattern=r"^/\S*$")
    items: str = Field(pattern=_PATH)  # where the list of effects is in the answer
    fields: EffectFields

    @field_validator("path")
    @classmethod
    def _placeholders(cls, path: str) -> str:
        for name in _PLACEHOLDER.findall(path):
            if name not in ("account_id", "case_id"):
                raise ValueError(f"{{{name}}}: an effects query knows account_id and case_id")
        return path


class ApiKey(_Strict):
    type: Literal["api_key"]
    header: str = "Authorization"
    prefix: str = "Bearer "
    env: str = Field(pattern=_ENV)


class ClientCredentials(_Strict):
    """OAuth 2.0 client credentials (RFC 6749, section 4.4): a bearer token from the core's
    token endpoint, fetched with the client's id and secret, renewed before it expires."""

    type: Literal["oauth2_client_credentials"]
    token_url: str = Field(pattern=r"^https?://[^/\s]+(/\S*)?$")
    client_id_env: str = Field(pattern=_ENV)
    client_secret_env: str = Field(pattern=_ENV)
    scope: str | None = None


class Tls(_Strict):
    """How to trust the core, and how closeloop proves who it is (mutual TLS)."""

    ca_file: str | None = None  # the CA bundle to trust the core with (default: the system's)
    client_cert_file: str | None = None  # closeloop's certificate, PEM
    client_key_file: str | None = None  # and its private key, PEM

    @model_validator(mode="after")
    def _pair(self) -> Tls:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("give both client_cert_file and client_key_file, or neither")
        return self


class Timeouts(_Strict):
    connect: Duration = timedelta(seconds=2)
    read: Duration = timedelta(seconds=10)


class AccountFields(_Strict):
    """Where the account's parts are in the core's answer to read_account."""

    first_name: str = "first_name"
    locale: str = "locale"
    time_zone: str = "time_zone"
    facts: str = "facts"
    contacts: str = "contacts"
    payment_methods: str = "payment_methods"
    secrets: str = "secrets"


class RestMapping(_Strict):
    connector: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    kind: Literal["rest"]
    base_url: str = Field(pattern=r"^https?://[^/\s]+(/\S*)?$")
    auth: ApiKey | ClientCredentials = Field(discriminator="type")
    tls: Tls | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    honours_idempotency_keys: bool = True
    account: RestOperation
    account_fields: AccountFields = Field(default_factory=AccountFields)
    operations: dict[Operation, RestOperation]
    # How to find an effect by its reference, for reads before a retry.
    find_effect: RestOperation | None = None
    # How to list what the core holds for a case, for reconciliation.
    effects: EffectsQuery | None = None

    @model_validator(mode="after")
    def _answers(self) -> RestMapping:
        for name, operation in self.operations.items():
            if operation.answer is None:
                raise ValueError(f"operations.{name}: answer.reference is required")
        if not self.honours_idempotency_keys and self.find_effect is None:
            raise ValueError(
                "find_effect is required when the core does not honour idempotency keys"
            )
        return self


class PluginConnector(_Strict):
    """A connector written in Python, installed as an entry point (see connectors.plugins)."""

    connector: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    kind: Literal["plugin"]
    # The entry point's name in the group `closeloop.connectors`.
    plugin: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    # Handed to the plugin's factory as they are; credentials belong in the environment.
    options: dict[str, Any] = Field(default_factory=dict)


_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a table or column name, as the database spells it


class SqlAccount(_Strict):
    """Where read_account finds an account: one row of a table, by its key column."""

    table: str = Field(pattern=_NAME)
    key: str = Field(pattern=_NAME)
    first_name: str = Field(default="first_name", pattern=_NAME)
    locale: str | None = Field(default=None, pattern=_NAME)
    time_zone: str | None = Field(default=None, pattern=_NAME)
    # Columns whose values rules read as account.<column>; or one JSON column of them.
    facts: list[str] = Field(default_factory=list)
    facts_json: str | None = Field(default=None, pattern=_NAME)
    # JSON columns (lists of objects, an object): contact points, methods on file, known facts.
    contacts_json: str | None = Field(default=None, pattern=_NAME)
    payment_methods_json: str | None = Field(default=None, pattern=_NAME)
    secrets_json: str | None = Field(default=None, pattern=_NAME)

    @field_validator("facts")
    @classmethod
    def _columns(cls, columns: list[str]) -> list[str]:
        for column in columns:
            if not re.match(_NAME, column):
                raise ValueError(f"{column!r} is not a column name")
        return columns


class SqlOperation(_Strict):
    """A writeback as one row inserted into a staging table the core picks up."""

    table: str = Field(pattern=_NAME)
    columns: dict[str, FieldMap]
    # The column holding the writeback's idempotency key, unique in the table: a second
    # insert with the same key finds the first row instead of making another.
    key_column: str = Field(pattern=_NAME)
    # The column whose value is the effect's reference (default: the key column).
    reference_column: str | None = Field(default=None, pattern=_NAME)

    @model_validator(mode="after")
    def _keyed(self) -> SqlOperation:
        key = self.columns.get(self.key_column)
        if key is None or key.source != "idempotency_key":
            raise ValueError(f"key_column: {self.key_column} must be a column from idempotency_key")
        for column in self.columns:
            if not re.match(_NAME, column):
                raise ValueError(f"columns: {column!r} is not a column name")
        return self


class SqlMapping(_Strict):
    """A core that exposes a staging schema: writebacks are rows in its tables."""

    connector: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    kind: Literal["sql"]
    # The database's SQLAlchemy URL (with its credentials) from this environment variable.
    url_env: str = Field(pattern=_ENV)
    db_schema: str | None = Field(default=None, alias="schema", pattern=_NAME)
    account: SqlAccount
    operations: dict[Operation, SqlOperation]


class BatchField(FieldMap):
    """One field of an instruction record: a CSV column, or a fixed-width slice."""

    name: str = Field(pattern=_NAME)
    width: int | None = Field(default=None, ge=1, le=1000)
    align: Literal["left", "right"] = "left"
    pad: str = Field(default=" ", min_length=1, max_length=1)


class BatchOperation(_Strict):
    fields: list[BatchField] = Field(min_length=1)

    @model_validator(mode="after")
    def _keyed(self) -> BatchOperation:
        if not any(f.source == "idempotency_key" for f in self.fields):
            raise ValueError("fields: one field must come from idempotency_key")
        return self


class AckColumn(_Strict):
    """Where a part of an acknowledgement is: a CSV column, or a fixed-width slice."""

    column: str | None = None
    start: int | None = Field(default=None, ge=1)  # 1-based, as layouts are written down
    width: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> AckColumn:
        if (self.column is None) == (self.start is None or self.width is None):
            raise ValueError("give column (CSV), or start and width (fixed width)")
        return self


class AckLayout(_Strict):
    """The core's acknowledgement files: one line per instruction, accepted or rejected."""

    folder: str
    pattern: str = "*.ack"
    format: Literal["csv", "fixed_width"] = "csv"
    key: AckColumn
    status: AckColumn
    reference: AckColumn | None = None
    reason: AckColumn | None = None
    accepted: list[str] = Field(default_factory=lambda: ["OK"], min_length=1)


class AccountExtract(_Strict):
    """The core's account extract (CSV): read_account finds an account's row by its key."""

    file: str
    key: str
    first_name: str = "first_name"
    locale: str | None = None
    time_zone: str | None = None
    facts: list[str] = Field(default_factory=list)
    numbers: list[str] = Field(default_factory=list)  # facts read as numbers
    facts_json: str | None = None
    contacts_json: str | None = None
    payment_methods_json: str | None = None
    secrets_json: str | None = None


class BatchMapping(_Strict):
    """A core that takes instruction files and answers with acknowledgement files."""

    connector: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    kind: Literal["batch"]
    format: Literal["csv", "fixed_width"]
    outbound: str  # the folder the core picks instruction files up from
    journal: str  # closeloop's record of each instruction (a SQLite file it owns)
    ack: AckLayout
    accounts: AccountExtract
    operations: dict[Operation, BatchOperation]

    @model_validator(mode="after")
    def _widths(self) -> BatchMapping:
        if self.format == "csv":  # one header for the file: every record has the same columns
            layouts = {tuple(f.name for f in o.fields) for o in self.operations.values()}
            if len(layouts) > 1:
                raise ValueError(
                    "operations: in a CSV file every operation needs the same fields, in the "
                    "same order (tell them apart with a constant, such as a record type)"
                )
        if self.format == "fixed_width":
            for name, operation in self.operations.items():
                if any(f.width is None for f in operation.fields):
                    raise ValueError(f"operations.{name}: every field needs a width")
        if self.ack.format == "fixed_width" and self.ack.key.start is None:
            raise ValueError("ack: a fixed-width acknowledgement needs start and width")
        return self


class _Kind(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["rest", "sql", "batch", "plugin"]


ConnectorConfig = RestMapping | SqlMapping | BatchMapping | PluginConnector
_EXPECTED = "expected a mapping with connector, version, kind and what the kind needs"


def load_mapping(text: str, *, filename: str = "<connector>") -> ConnectorConfig:
    """Validate a connector's file; raise SpecError with every problem at its line."""
    head, _ = parse_yaml_model(
        text, _Kind, filename=filename, expected=_EXPECTED, what="the connector mapping"
    )
    kinds: dict[str, type[ConnectorConfig]] = {
        "rest": RestMapping,
        "sql": SqlMapping,
        "batch": BatchMapping,
        "plugin": PluginConnector,
    }
    model = kinds[head.kind]
    mapping, _ = parse_yaml_model(
        text, model, filename=filename, expected=_EXPECTED, what="the connector mapping"
    )
    return mapping


def load_mapping_file(path: str | Path) -> ConnectorConfig:
    return load_mapping(read_source(path, what="the connector mapping"), filename=str(path))


def load_rest_mapping(text: str, *, filename: str = "<connector>") -> RestMapping:
    """A REST connector's mapping (SpecError if the file is another kind)."""
    mapping = load_mapping(text, filename=filename)
    if not isinstance(mapping, RestMapping):
        raise SpecError(
            [Problem(file=filename, line=1, column=1, path="kind", message="expected rest")],
            what="the connector mapping",
        )
    return mapping


def convert(value: Any, kind: Conversion, form: str | None = None) -> Any:
    """A value of closeloop's data as the core wants it; ValueError if it cannot be."""
    if kind == "as_is" or value is None:
        return value
    if kind == "date":
        try:
            day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        except ValueError:
            raise ValueError(f"{value!r} is not a date") from None
        return day.strftime(form) if form else day.isoformat()
    if kind == "string":
        return str(value)
    if kind in ("decimal", "cents"):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal amount") from None
        return str(number) if kind == "decimal" else int(number * 100)
    if kind == "integer":
        return int(value)
    return bool(value)


def render_path(template: str, data: dict[str, Any]) -> str:
    """`template` with each {field} replaced by its value (URL-quoted); KeyError if missing."""
    return _PLACEHOLDER.sub(lambda m: quote(str(data[m.group(1)]), safe=""), template)


def build_body(fields: dict[str, FieldMap], data: dict[str, Any]) -> dict[str, Any]:
    """The request body for `data`: renamed, converted and fixed fields; missing ones left out."""
    body: dict[str, Any] = {}
    for name, field in fields.items():
        if field.source is None:
            body[name] = field.const
            continue
        if data.get(field.source) is None:
            if field.required:
                raise ValueError(f"{field.source} is required for {name}")
            continue
        body[name] = convert(data[field.source], field.type, field.format)
    return body


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """A JSON body from field paths: {"payment.amount": 1} becomes {"payment": {"amount": 1}}."""
    body: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: {part} is both a value and an object")
        node[leaf] = value
    return body


def at_path(document: Any, path: str) -> Any:
    """The value at a dotted path of a decoded JSON answer, or None."""
    for part in path.split("."):
        if isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        elif isinstance(document, dict) and part in document:
            document = document[part]
        else:
            return None
    return document


def _is(value: Any, kind: AnswerType) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "decimal":  # a JSON number, or exact decimal text
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return False
        try:
            return Decimal(str(value)).is_finite()
        except InvalidOperation:
            return False
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, dict if kind == "object" else list)


def mismatches(document: Any, answer: Answer) -> list[str]:
    """How a decoded 2xx answer differs from what the mapping says it holds (empty: it matches)."""
    problems = []
    if not at_path(document, answer.reference):
        problems.append(f"no {answer.reference}")
    for path, expected in answer.fields.items():
        value = at_path(document, path)
        if value is None:
            problems.append(f"no {path}")
        elif not _is(value, expected.type):
            problems.append(f"{path} is not of type {expected.type}: {value!r}")
        elif expected.equals is not None and value != expected.equals:
            problems.append(f"{path} is {value!r}, not {expected.equals!r}")
    return problems
