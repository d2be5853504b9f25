from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def listening(data: Path, *args: str) -> Iterator[int]:
    """Run `closeloop ARGS PORT` (ARGS end with the port's flag) until it listens; yield PORT."""
    from tests.servers import free_port

    port = free_port()
    env = {**os.environ, "CLOSELOOP_DATA_DIR": str(data)}
    env.pop("CLOSELOOP_DATABASE_URL", None)
    process = subprocess.Popen(
        [str(CLI), *args, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(process.stderr.read().decode() if process.stderr else "")
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
