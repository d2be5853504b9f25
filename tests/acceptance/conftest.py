from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLI = Path(sys.executable).parent / "closeloop"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed `closeloop` command as a user would."""
    full_env = {**os.environ, "CLOSELOOP_DATA_DIR": str(cwd / "data"), **(env or {})}
    full_env.pop("CLOSELOOP_DATABASE_URL", None) if not env or (
        "CLOSELOOP_DATABASE_URL" not in env
    ) else None
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def demo_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run("demo", "--json", *args, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
