"""Documents customers upload: checked, stored out of reach, scanned before anyone opens them.

An upload is written, as it streams in, to DATA_DIR/documents/incoming under
a name the server makes (never the customer's); once whole, its first bytes
must be those of an allowed type (PDF, JPEG, PNG), whatever its name or
declared type says. Then it moves to DATA_DIR/documents/store, which no route
serves, and the scanning hook runs; its row in `documents` says `clean` or
`infected`, and only a clean document may be opened by an agent.

The hook is `CLOSELOOP_SCAN_COMMAND` (for example ``clamdscan --no-summary``:
the file's path is appended; exit 0 is clean, 1 infected, anything else an
error), or, with none set, a built-in check for the EICAR test file, which is
what a scanner must catch and what the tests upload.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from closeloop.clock import Clock
from closeloop.errors import OperationalError
from closeloop.store import Store

MAGIC = {
    "pdf": (b"%PDF-",),
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
}
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def sniff(head: bytes) -> str | None:
    """The type the first bytes of a file say it is (pdf, jpeg, png), or None."""
    for kind, signatures in MAGIC.items():
        if any(head.startswith(s) for s in signatures):
            return kind
    return None


class Scanner(Protocol):
    def clean(self, path: Path) -> bool: ...


class EicarScanner:
    """The development hook: finds the EICAR test file and nothing else."""

    def clean(self, path: Path) -> bool:
        return EICAR not in path.read_bytes()


class CommandScanner:
    """A command-line scanner: the file's path appended; exit 0 clean, 1 infected."""

    def __init__(self, command: str, timeout: float = 120.0) -> None:
        self.command = shlex.split(command)
        self.timeout = timeout

    def clean(self, path: Path) -> bool:
        done = subprocess.run(
            [*self.command, str(path)], capture_output=True, timeout=self.timeout, check=False
        )
        if done.returncode in (0, 1):
            return done.returncode == 0
        raise OperationalError(
            f"the scan command failed (exit {done.returncode}): {done.stderr.decode()[-300:]}"
        )


@dataclass(frozen=True, kw_only=True)
class Stored:
    id: str
    type: str
    size: int
    sha256: str
    clean: bool


class Documents:
    def __init__(self, store: Store, clock: Clock, folder: Path, scanner: Scanner) -> None:
        self.store = store
        self.clock = clock
        self.incoming = folder / "incoming"
        self.kept = folder / "store"
        self.scanner = scanner

    def receive(self) -> tuple[str, BinaryIO]:
        """A new server-named file to stream an upload into."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        document_id = f"doc_{secrets.token_hex(16)}"
        return document_id, (self.incoming / document_id).open("xb")

    def discard(self, document_id: str) -> None:
        (self.incoming / document_id).unlink(missing_ok=True)

    def accept(self, case_id: str, document_id: str, allowed: tuple[str, ...]) -> Stored | None:
        """Check, keep and scan a received file; None (and it is gone) if its type is wrong."""
        path = self.incoming / document_id
        digest, size, kind = hashlib.sha256(), 0, None
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 16):
                if not size:  # the first bytes say what the file is
                    kind = sniff(chunk)
                    if kind is None or kind not in allowed:
                        break
                digest.update(chunk)
                size += len(chunk)
        if kind is None or kind not in allowed:
            self.discard(document_id)
            return None
        self.kept.mkdir(parents=True, exist_ok=True)
        kept = path.replace(self.kept / document_id)
        clean = self.scanner.clean(kept)
        now = self.clock.now()
        with self.store.transaction() as tx:
            tx.save_document(
                {
                    "id": document_id,
                    "case_id": case_id,
                    "type": kind,
                    "size": size,
                    "sha256": digest.hexdigest(),
                    "status": "clean" if clean else "infected",
                    "stored_at": now,
                    "scanned_at": now,
                }
            )
        return Stored(id=document_id, type=kind, size=size, sha256=digest.hexdigest(), clean=clean)
