"""Reviewer accounts, logins and sessions of the review app, kept in SQLite (migration 0005).

* Accounts (``reviewers``): a name and a scrypt hash each, managed with ``paperloop review users``.
  Removing an account disables it (its name stays in the audit log) and ends its sessions.
* Logins (``review_logins``): every attempt, with its outcome and the client's address. After
  ``review.login_max_failures`` failures for one name (or ``login_max_failures_per_address`` from
  one address) within ``review.login_window_minutes``, logins are refused until
  ``review.lockout_minutes`` after the last failure, even with the right password.
* Sessions (``review_sessions``): a random token per login, stored as its SHA-256 only. A session
  not used for ``review.session_idle_minutes`` ends; logging out deletes it.

:meth:`ReviewerAccounts.authenticate` also accepts the legacy credentials: ``review.reviewers``
(name → hash in the config) and, for the name of an existing account only, the shared password.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Mapping

from service.config import ReviewConfig
from service.review.auth import clean_reviewer_name, hash_password, verify_password
from service.store import Store, utc_now

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DUMMY_HASH = hash_password("paperloop: no such reviewer", salt=b"\0" * 16)  # equal time for unknown names


class AccountError(ValueError):
    """An account cannot be added, changed or removed (bad name, exists, unknown)."""


class LoginError(RuntimeError):
    """Wrong name or password (which of the two is not said)."""


class LockedOut(LoginError):
    """Too many failed logins: refused until ``until`` (ISO time, UTC)."""

    def __init__(self, message: str, until: str) -> None:
        super().__init__(message)
        self.until = until


@dataclass(frozen=True)
class Reviewer:
    """A reviewer account as listed by ``paperloop review users list``."""

    name: str
    created_at: str
    disabled: bool
    last_login: str | None = None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_account_name(name: str) -> str:
    """The name if it may name an account (letters, digits, ``._@-``, at most 64); else :class:`AccountError`."""
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AccountError(f"{name!r} is not a valid reviewer name: use letters, digits and . _ @ - "
                           "(at most 64 characters, starting with a letter or digit)")
    return name


class ReviewerAccounts:
    """Accounts, login attempts, lockouts and sessions over one :class:`Store`."""

    def __init__(self, store: Store, cfg: ReviewConfig, shared_hash: str | None = None,
                 legacy: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.shared_hash = shared_hash
        self.legacy = dict(cfg.reviewers if legacy is None else legacy)

    # accounts ------------------------------------------------------------------------------

    def add(self, name: str, password: str) -> None:
        """Create an account (or re-enable a removed one with a new password)."""
        check_account_name(name)
        encoded = hash_password(password)
        with self.store.transaction() as db:
            row = db.execute("SELECT disabled FROM reviewers WHERE name = ?", [name]).fetchone()
            if row is not None and not row[0]:
                raise AccountError(f"reviewer {name!r} exists already (change the password with `users passwd`)")
            db["reviewers"].upsert({"name": name, "password_hash": encoded, "created_at": utc_now(),
                                    "disabled": 0}, pk="name")

    def set_password(self, name: str, password: str) -> None:
        """Change an account's password; its open sessions end."""
        encoded = hash_password(password)
        with self.store.transaction() as db:
            if not db.execute("UPDATE reviewers SET password_hash = ? WHERE name = ? AND disabled = 0",
                              [encoded, name]).rowcount:
                raise AccountError(f"no reviewer {name!r}")
            db.execute("DELETE FROM review_sessions WHERE name = ?", [name])

    def remove(self, name: str) -> None:
        """Disable an account (its name stays in the audit log) and end its sessions."""
        with self.store.transaction() as db:
            if not db.execute("UPDATE reviewers SET disabled = 1 WHERE name = ? AND disabled = 0",
                              [name]).rowcount:
                raise AccountError(f"no reviewer {name!r}")
            db.execute("DELETE FROM review_sessions WHERE name = ?", [name])

    def list(self) -> list[Reviewer]:
        """Every account, removed ones included, by name."""
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT r.name, r.created_at, r.disabled, (SELECT MAX(at) FROM review_logins l "
                "WHERE l.name = r.name AND l.ok = 1) FROM reviewers r ORDER BY r.name").fetchall()
        return [Reviewer(name=r[0], created_at=r[1], disabled=bool(r[2]), last_login=r[3]) for r in rows]

    def has_accounts(self) -> bool:
        """Whether any enabled account exists (in the database or ``review.reviewers``)."""
        if self.legacy:
            return True
        with self.store.transaction() as db:
            return db.execute("SELECT 1 FROM reviewers WHERE disabled = 0 LIMIT 1").fetchone() is not None

    @property
    def password_required(self) -> bool:
        """Whether logging in takes a password (else: loopback only, any name). Once an account was
        created, it always does, even when every account has been removed since."""
        if self.shared_hash or self.legacy:
            return True
        with self.store.transaction() as db:
            return db.execute("SELECT 1 FROM reviewers LIMIT 1").fetchone() is not None

    # logins --------------------------------------------------------------------------------

    def authenticate(self, name: str, password: str, address: str | None = None) -> str:
        """The account name if ``password`` opens it; :class:`LockedOut` or :class:`LoginError` otherwise.

        Every attempt is recorded; every failure is logged as a warning. With no password
        configured at all (loopback only), any reviewer name is accepted.
        """
        name = clean_reviewer_name(name)
        if not name:
            raise LoginError("a reviewer name is required")
        until = self.locked_until(name, address)
        if until is not None:
            self._record(name, address, False, "locked")
            log.warning("review login refused for %r from %s: locked until %s", name, address or "?", until)
            raise LockedOut(f"too many failed logins: try again after {until[11:16]} UTC", until)
        ok = self._verify(name, password)
        self._record(name, address, ok, "ok" if ok else "bad_credentials")
        if not ok:
            log.warning("review login failed for %r from %s", name, address or "?")
            raise LoginError("wrong name or password")
        return name

    def _stored_hash(self, name: str) -> str | None:
        with self.store.transaction() as db:
            row = db.execute("SELECT password_hash FROM reviewers WHERE name = ? AND disabled = 0",
                             [name]).fetchone()
        return row[0] if row else self.legacy.get(name)

    def _verify(self, name: str, password: str) -> bool:
        if not self.password_required:
            return True
        own = self._stored_hash(name)
        if own is None:
            verify_password(password or "", _DUMMY_HASH)
            return False
        if verify_password(password or "", own):
            return True
        return bool(self.shared_hash) and verify_password(password or "", self.shared_hash)

    def _record(self, name: str, address: str | None, ok: bool, reason: str) -> None:
        with self.store.transaction() as db:
            db["review_logins"].insert({"name": name, "at": utc_now(), "ok": int(ok), "address": address,
                                        "reason": reason})

    def locked_until(self, name: str, address: str | None = None) -> str | None:
        """When the lockout of this name (or address) ends, or ``None`` if it is not locked."""
        ends = [self._lock_end("name", name, self.cfg.login_max_failures)]
        if address:
            ends.append(self._lock_end("address", address, self.cfg.login_max_failures_per_address))
        ends = [e for e in ends if e is not None]
        return _iso(max(ends)) if ends else None

    def _lock_end(self, column: str, value: str, limit: int) -> datetime | None:
        now = _now()
        window = timedelta(minutes=self.cfg.login_window_minutes)
        lockout = timedelta(minutes=self.cfg.lockout_minutes)
        since = _iso(now - window - lockout)
        with self.store.transaction() as db:
            last_ok = db.execute(f"SELECT MAX(at) FROM review_logins WHERE {column} = ? AND ok = 1",
                                 [value]).fetchone()[0]
            rows = db.execute(
                f"SELECT at FROM review_logins WHERE {column} = ? AND ok = 0 AND reason = 'bad_credentials' "
                "AND at > ? AND at > ? ORDER BY at DESC LIMIT ?",
                [value, since, last_ok or "", limit]).fetchall()
        if len(rows) < limit:
            return None
        latest, oldest = datetime.fromisoformat(rows[0][0]), datetime.fromisoformat(rows[-1][0])
        end = latest + lockout
        return end if latest - oldest <= window and end > now else None

    # sessions ------------------------------------------------------------------------------

    def open_session(self, name: str) -> str:
        """Start a session for an authenticated reviewer; returns its token (only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        now = _now()
        with self.store.transaction() as db:
            db.execute("DELETE FROM review_sessions WHERE expires_at <= ?", [_iso(now)])
            db["review_sessions"].insert({
                "token_hash": _token_hash(token), "name": name, "created_at": _iso(now), "last_seen": _iso(now),
                "expires_at": _iso(now + timedelta(minutes=self.cfg.session_idle_minutes))})
        return token

    def resume(self, token: str | None) -> str | None:
        """The reviewer of a live session (and the session renewed), or ``None``."""
        if not token:
            return None
        now = _now()
        with self.store.transaction() as db:
            row = db.execute("SELECT name, expires_at FROM review_sessions WHERE token_hash = ?",
                             [_token_hash(token)]).fetchone()
            if row is None or row[1] <= _iso(now) or not self._may_use(db, row[0]):
                db.execute("DELETE FROM review_sessions WHERE token_hash = ?", [_token_hash(token)])
                return None
            db.execute("UPDATE review_sessions SET last_seen = ?, expires_at = ? WHERE token_hash = ?",
                       [_iso(now), _iso(now + timedelta(minutes=self.cfg.session_idle_minutes)),
                        _token_hash(token)])
        return row[0]

    def _may_use(self, db, name: str) -> bool:
        """Whether a session's reviewer may still work: an enabled account, a legacy one, or no passwords."""
        if not self.password_required:
            return True
        row = db.execute("SELECT disabled FROM reviewers WHERE name = ?", [name]).fetchone()
        return (row is not None and not row[0]) or (row is None and name in self.legacy)

    def close_session(self, token: str | None) -> None:
        """End a session (log out)."""
        if token:
            with self.store.transaction() as db:
                db.execute("DELETE FROM review_sessions WHERE token_hash = ?", [_token_hash(token)])
