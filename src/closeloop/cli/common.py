"""What every command shares: the consoles, settings from the environment, problem lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from closeloop.app import Settings
from closeloop.errors import SpecError

out = Console()
err = Console(stderr=True, soft_wrap=True)


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _problems(exc: SpecError, file: Path, as_json: bool) -> typer.Exit:
    """Print every problem of a file (or them as JSON); the exit for bad input."""
    if as_json:
        print(json.dumps({"valid": False, "problems": [p.__dict__ for p in exc.problems]}))
    else:
        for problem in exc.problems:
            err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s) in {file}", style="bold red", soft_wrap=True)
    return typer.Exit(2)
