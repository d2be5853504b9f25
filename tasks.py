#!/usr/bin/env python3
"""Set up a virtual environment and run the demo or the whole test suite.

    python3 tasks.py demo [demo options]   # set up, then `closeloop demo`
    python3 tasks.py test [pytest options] # set up, then lint, type-check, layer-check, test

The test setup also installs Debian's `chromium` for the browser tests (with
apt-get, as root or through sudo) when it is missing. Tests run on two workers
(pytest-xdist); CLOSELOOP_TEST_WORKERS=1 runs them one at a time.

Needs only Python 3.11+ and the package index. The environment lives in `.venv`
and is reinstalled when `pyproject.toml` changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".closeloop-installed"
WORKERS = os.environ.get("CLOSELOOP_TEST_WORKERS", "2")


def _run(*args: str | Path) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def setup(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - runs before the venv exists
        sys.exit(f"closeloop needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(BIN / "python", "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    STAMP.write_text(digest)


def browser() -> None:
    """Install Debian's chromium for the browser tests, when it is missing and we can."""
    if shutil.which("chromium") or os.environ.get("CLOSELOOP_CHROMIUM"):
        return
    if not shutil.which("apt-get"):
        print("note: no chromium and no apt-get: the browser tests will skip", flush=True)
        return
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    prefix = [] if root else ["sudo", "-n"] if shutil.which("sudo") else None
    if prefix is None:
        print("note: chromium is missing and cannot be installed here (not root)", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "chromium"]
    print("+", " ".join(install), flush=True)
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL)


def test(args: list[str]) -> int:
    setup("dev,bench")
    browser()
    steps: list[list[str | Path]] = [
        [BIN / "ruff", "check", "src", "tests", "benchmarks", "tasks.py"],
        [BIN / "mypy"],
        [BIN / "lint-imports"],
        # Two workers by default (CLOSELOOP_TEST_WORKERS), a test file to each at a time:
        # the demo-driven acceptance tests are CPU-bound and share their module's fixtures.
        [BIN / "python", "-m", "pytest", "-n", WORKERS, "--dist", "loadfile", *args],
    ]
    for step in steps:
        print("+", " ".join(str(a) for a in step), flush=True)
        code = subprocess.run([str(a) for a in step], cwd=ROOT).returncode
        if code != 0:
            return code
    return 0


def demo(args: list[str]) -> int:
    setup("dev")
    return subprocess.run([str(BIN / "closeloop"), "demo", *args], cwd=ROOT).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"demo", "test"}:
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return demo(rest) if command == "demo" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
