"""Passwords and access to the review app: scrypt hashes, the login policy, reviewer names.

:func:`auth_policy` builds the :class:`AuthPolicy` from ``PAPERLOOP_REVIEW_PASSWORD`` (hashed at
once), the hash ``paperloop review`` passes in ``PAPERLOOP_REVIEW_PASSWORD_HASH``, or the config
(``review.password_hash`` and per-reviewer ``review.reviewers``); :func:`is_loopback` tells
``paperloop review`` whether a bind address is reachable from other machines. The review app logs
reviewers in through :class:`service.review.accounts.ReviewerAccounts`, which takes the shared hash
and ``review.reviewers`` from this policy as legacy credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping

from service.config import PaperloopConfig

PASSWORD_ENV = "PAPERLOOP_REVIEW_PASSWORD"
PASSWORD_HASH_ENV = "PAPERLOOP_REVIEW_PASSWORD_HASH"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt hash: ``scrypt$n$r$p$salt$hash`` (base64 parts)."""
    if not password:
        raise ValueError("the password is empty")
    salt = salt or os.urandom(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def is_loopback(address: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AuthPolicy:
    """Who may log in: a shared password hash and/or one hash per reviewer name."""

    shared_hash: str | None = None
    reviewer_hashes: Mapping[str, str] = field(default_factory=dict)

    @property
    def password_required(self) -> bool:
        """Whether any password is configured."""
        return bool(self.shared_hash or self.reviewer_hashes)

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` may log in with ``password``."""
        name = clean_reviewer_name(name)
        if not name:
            return False
        if name in self.reviewer_hashes:
            return verify_password(password, self.reviewer_hashes[name])
        if self.shared_hash:
            return verify_password(password, self.shared_hash)
        return not self.reviewer_hashes  # no password configured at all: a name is enough


def auth_policy(cfg: PaperloopConfig, environ: Mapping[str, str] | None = None) -> AuthPolicy:
    """The login policy: ``PAPERLOOP_REVIEW_PASSWORD`` (hashed at once), else the hash passed by
    ``paperloop review`` in ``PAPERLOOP_REVIEW_PASSWORD_HASH``, else ``review.password_hash``."""
    environ = os.environ if environ is None else environ
    plain = environ.get(PASSWORD_ENV)
    shared = hash_password(plain) if plain else environ.get(PASSWORD_HASH_ENV) or cfg.review.password_hash
    return AuthPolicy(shared_hash=shared, reviewer_hashes=dict(cfg.review.reviewers))


def clean_reviewer_name(name: str) -> str:
    """A reviewer name as stored: trimmed, at most 64 characters, no control characters."""
    return "".join(ch for ch in (name or "").strip() if ch.isprintable())[:64]
