"""Staff: the people and machines who run closeloop, what each may do, and how they prove it.

Roles are ordered, each allowing what the ones before it allow:

    viewer    reads the consoles, reports and the API's GETs
    agent     works the exception queue: claims, retries, resolves, closes
    operator  runs rollouts (promote, hold, halt, resume), sends triggers, exports
    admin     manages users and tokens; exports personal data when asked

People sign in with a password (Argon2id; at least 15 characters as NIST
SP 800-63B asks of a password used alone, none of the most common ones) or
through the configured OpenID Connect provider. A session lives on the server
like the mini-app's: the browser holds a random id, ended after 30 idle
minutes or 12 hours. Five wrong passwords in a row lock the account for 15
minutes.

Machines use API tokens, ``cl.<id>.<secret>``: the secret's SHA-256 is
stored (the secret is 256 random bits, so a slow hash adds nothing), each
token has one role, and a revoked or expired token is refused at once.

Every sign-in, refusal, sign-out and change of users and tokens is written to
the staff audit, which the OCSF export reads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from closeloop.clock import Clock
from closeloop.errors import InputError, NotFound, StateError
from closeloop.store import Store, Tx

ROLES = ("viewer", "agent", "operator", "admin")
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
TOUCH = timedelta(minutes=1)
MIN_PASSWORD = 15
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
# The most common passwords of the breach corpora, at the minimum length and over it.
_COMMON = frozenset(
    {
        "passwordpassword",
        "123456789012345",
        "1234567890123456",
        "qwertyuiopasdfg",
        "qwertyuiopasdfgh",
        "aaaaaaaaaaaaaaa",
        "iloveyouiloveyou",
        "passwordpassword1",
        "password1234567",
        "password12345678",
        "welcome12345678",
        "changemechangeme",
        "letmeinletmeinletmein",
        "administrator123",
    }
)
_HASHER = PasswordHasher()  # argon2id, RFC 9106's low-memory profile
# Verified against when the user does not exist, so the answer takes as long.
_DUMMY = _HASHER.hash("closeloop-no-such-user-xxxxxxxx")


class SignInError(InputError):
    """The username or password is not right, or the account cannot sign in now."""


def allows(role: str, needed: str) -> bool:
    """Whether `role` may do what `needed` may (roles are ordered)."""
    return ROLES.index(role) >= ROLES.index(needed)


def _role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check_password(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 256:
        raise InputError("the password must have at most 256 characters")
    lowered = password.lower()
    if lowered in _COMMON or len(set(lowered)) < 4 or (username and username.lower() in lowered):
        raise InputError("the password is too easy to guess: choose a longer phrase")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is asking: a signed-in person or a token, with one role."""

    name: str  # the username, or token:NAME
    role: str
    via: str  # password, oidc, token
    csrf: str = ""  # a browser session's form token
    session: str = ""  # the session id (browser sessions only)

    def may(self, needed: str) -> bool:
        return allows(self.role, needed)

    @property
    def actor(self) -> str:
        """How history and decisions name this principal."""
        return self.name if self.via == "token" else f"staff:{self.name}"


class Staff:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- users ---------------------------------------------------------------
    def add_user(
        self,
        username: str,
        role: str,
        *,
        name: str = "",
        password: str | None = None,
        by: str = "cli",
    ) -> None:
        """Add a user; without a password they sign in only through single sign-on."""
        username = username.strip()
        if not username or len(username) > 120 or any(c.isspace() for c in username):
            raise InputError("the username must be 1 to 120 characters without spaces")
        _role(role)
        if password is not None:
            check_password(password, username)
        now = self.clock.now()
        with self.store.transaction() as tx:
            if tx.user(username) is not None:
                raise StateError(f"user {username!r} exists already")
            tx.save_user(
                {
                    "username": username,
                    "name": name or username,
                    "role": role,
                    "password_hash": _HASHER.hash(password) if password is not None else None,
                    "created_at": now,
                    "disabled_at": None,
                    "failed_sign_ins": 0,
                    "locked_until": None,
                }
            )
            self._audit(tx, by, "user_add", "success", f"{username} as {role}")

    def users(self) -> list[dict[str, Any]]:
        with self.store.read() as tx:
            rows = tx.users()
        return [
            {
                **{k: v for k, v in r.items() if k != "password_hash"},
                "has_password": r["password_hash"] is not None,
            }
            for r in rows
        ]

    def disable(self, username: str, *, by: str = "cli") -> int:
        """Disable a user and end their sessions (how many ended)."""
        now = self.clock.now()
        with self.store.transaction() as tx:
            user = tx.user(username)
            if user is None:
                raise NotFound(f"no user {username!r}")
            if user["disabled_at"] is None:
                tx.update_user(username, disabled_at=now)
            ended = tx.end_staff_sessions(now, username=username)
            self._audit(tx, by, "user_disable", "success", username)
        return ended

    def set_password(self, username: str, password: str, *, by: str = "cli") -> None:
        check_password(password, username)
        with self.store.transaction() as tx:
            if not tx.update_user(
                username,
                password_hash=_HASHER.hash(password),
                failed_sign_ins=0,
                locked_until=None,
            ):
                raise NotFound(f"no user {username!r}")
            tx.end_staff_sessions(self.clock.now(), username=username)
            self._audit(tx, by, "password_set", "success", username)

    # -- sessions ------------------------------------------------------------
    def sign_in(self, username: str, password: str, *, remote: str = "") -> tuple[str, Principal]:
        """A new session's id and principal; SignInError (one message for every cause)."""
        now = self.clock.now()
        with self.store.read() as tx:
            user = tx.user(username)
        stored = (user or {}).get("password_hash")
        try:  # outside any write transaction: a hash takes tens of milliseconds
            _HASHER.verify(stored or _DUMMY, password)
            matched = stored is not None
        except (VerificationError, InvalidHashError):
            matched = False
        if user is None:
            why = "no such user"
        elif user["disabled_at"] is not None:
            why = "disabled"
        elif user["locked_until"] and user["locked_until"] > now:
            why = "locked"
        else:
            why = "" if matched else "wrong password"
        if why:
            with self.store.transaction() as tx:
                wrong = why == "wrong password"
                if wrong and tx.count_failed_sign_in(username) >= MAX_FAILURES:
                    tx.update_user(username, failed_sign_ins=0, locked_until=now + LOCKOUT)
                self._audit(tx, username[:120], "sign_in", "failure", why, remote)
            raise SignInError()
        assert user is not None
        if stored and _HASHER.check_needs_rehash(stored):
            with self.store.transaction() as tx:
                tx.update_user(username, password_hash=_HASHER.hash(password))
        return self.start_session(username, "password", remote=remote)

    def start_session(
        self, username: str, method: str, *, remote: str = ""
    ) -> tuple[str, Principal]:
        now = self.clock.now()
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            user = tx.user(username)
            if user is None or user["disabled_at"] is not None:
                self._audit(tx, username, "sign_in", "failure", f"{method}: not allowed", remote)
                raise SignInError()
            tx.update_user(username, failed_sign_ins=0, locked_until=None)
            tx.save_staff_session(
                {
                    "id_hash": _sha256(session_id),
                    "username": username,
                    "csrf": csrf,
                    "method": method,
                    "created_at": now,
                    "seen_at": now,
                    "ended_at": None,
                }
            )
            self._audit(tx, username, "sign_in", "success", method, remote)
        principal = Principal(
            name=username, role=user["role"], via=method, csrf=csrf, session=session_id
        )
        return session_id, principal

    def session(self, session_id: str) -> Principal | None:
        """The principal of a live session, or None (unknown, ended, idle, too old, disabled)."""
        if not session_id:
            return None
        now, id_hash = self.clock.now(), _sha256(session_id)
        with self.store.read() as tx:
            row = tx.staff_session(id_hash)
        if (
            row is None
            or row["ended_at"] is not None
            or row["disabled_at"] is not None
            or now - row["seen_at"] > IDLE
            or now - row["created_at"] > ABSOLUTE
        ):
            return None
        if now - row["seen_at"] > TOUCH:
            with self.store.transaction() as tx:
                tx.touch_staff_session(id_hash, now)
        return Principal(
            name=row["username"],
            role=row["role"],
            via=row["method"],
            csrf=row["csrf"],
            session=session_id,
        )

    def sign_out(self, principal: Principal, *, remote: str = "") -> None:
        with self.store.transaction() as tx:
            tx.end_staff_sessions(self.clock.now(), id_hash=_sha256(principal.session))
            self._audit(tx, principal.name, "sign_out", "success", principal.via, remote)

    # -- API tokens ----------------------------------------------------------
    def create_token(
        self, name: str, role: str, *, by: str = "cli", expires_in: timedelta | None = None
    ) -> tuple[str, str]:
        """A new token's id and the token itself (shown once: only its hash is kept)."""
        name = name.strip()
        if not name or len(name) > 120:
            raise InputError("a token needs a name of 1 to 120 characters")
        _role(role)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.clock.now()
        with self.store.transaction() as tx:
            tx.save_token(
                {
                    "id": token_id,
                    "name": name,
                    "role": role,
                    "secret_hash": _sha256(secret),
                    "created_by": by,
                    "created_at": now,
                    "expires_at": now + expires_in if expires_in else None,
                    "revoked_at": None,
                    "last_used_at": None,
                }
            )
            self._audit(tx, by, "token_create", "success", f"{token_id} {name} as {role}")
        return token_id, f"cl.{token_id}.{secret}"

    def tokens(self) -> list[dict[str, Any]]:
        with self.store.read() as tx:
            rows = tx.api_tokens()
        return [{k: v for k, v in r.items() if k != "secret_hash"} for r in rows]

    def revoke_token(self, token_id: str, *, by: str = "cli") -> None:
        now = self.clock.now()
        with self.store.transaction() as tx:
            token = tx.api_token(token_id)
            if token is None:
                raise NotFound(f"no token {token_id!r}")
            if token["revoked_at"] is None:
                tx.update_token(token_id, revoked_at=now)
            self._audit(tx, by, "token_revoke", "success", token_id)

    def token(self, presented: str, *, remote: str = "") -> Principal | None:
        """The principal of a live token, or None; a refusal is audited."""
        parts = presented.split(".")
        if len(parts) != 3 or parts[0] != "cl":
            return None
        token_id, secret = parts[1], parts[2]
        now = self.clock.now()
        with self.store.read() as tx:
            row = tx.api_token(token_id)
        good = (
            row is not None
            and hmac.compare_digest(row["secret_hash"], _sha256(secret))
            and row["revoked_at"] is None
            and (row["expires_at"] is None or row["expires_at"] > now)
        )
        if not good:
            with self.store.transaction() as tx:
                self._audit(
                    tx,
                    f"token:{token_id}"[:120],
                    "token_use",
                    "failure",
                    "unknown" if row is None else "refused",
                    remote,
                )
            return None
        assert row is not None
        if row["last_used_at"] is None or now - row["last_used_at"] > TOUCH:
            with self.store.transaction() as tx:
                tx.update_token(token_id, last_used_at=now)
        return Principal(name=f"token:{row['name']}", role=row["role"], via="token")

    def record(self, actor: str, action: str, detail: str, *, remote: str = "") -> None:
        """Write one line of the staff audit (an export of personal data, ...)."""
        with self.store.transaction() as tx:
            self._audit(tx, actor, action, "success", detail, remote)

    def _audit(
        self, tx: Tx, actor: str, action: str, outcome: str, detail: str, remote: str = ""
    ) -> None:
        tx.audit(
            {
                "at": self.clock.now(),
                "actor": actor,
                "action": action,
                "outcome": outcome,
                "detail": detail,
                "remote": remote[:100],
            }
        )
