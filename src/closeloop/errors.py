"""The one exception tree of closeloop.

    CloseloopError
    ├── InputError                 bad input from a user or caller (CLI exit 2, HTTP 4xx)
    │   ├── SpecError              a resolution spec does not validate (carries every problem)
    │   ├── TriggerError           a trigger payload does not match its workflow
    │   └── NotFound               a case, link or workflow that does not exist
    ├── StateError                 an action that the case's state does not allow
    └── OperationalError           the database, a channel or a connector failed (CLI exit 1)

Every error's docstring is its default message; raise with a message that says
what was wrong, where, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass


class CloseloopError(Exception):
    """closeloop failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InputError(CloseloopError):
    """The input is not valid."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem found in an input file, pointing at the line."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(InputError):
    """The resolution spec is not valid."""

    def __init__(self, problems: list[Problem], *, what: str = "the resolution spec") -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {what}:\n{lines}")


class TriggerError(InputError):
    """The trigger does not match its workflow's declared fields."""

    def __init__(self, message: str, *, field_errors: list[dict[str, object]] | None = None):
        self.field_errors = field_errors or []
        super().__init__(message)


class NotFound(InputError):
    """No such thing."""


class StateError(CloseloopError):
    """The case's state does not allow this action."""

    exit_code = 2


class OperationalError(CloseloopError):
    """A database, channel or connector failed."""
