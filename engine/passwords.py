"""Secrets of the built-in accounts: password hashes (argon2id) and sign-in session tokens.

Passwords are hashed with argon2-cffi's defaults (argon2id, salted, parameters stored in the
hash), so a hash made with older parameters still verifies and is upgraded at the next
sign-in (needs_rehash). Session tokens are long random strings: the browser keeps the token,
the database only its SHA-256, so a copy of the database signs nobody in.
"""

from __future__ import annotations

import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a wrong name takes as long as a wrong
    password and the timing tells nobody which names exist. Made at the first sign-in, whoever
    signs in, not at import: every CLI command, worker and trainer imports this module."""
    return _hasher.hash("no such user")


def check_strength(password: str) -> None:
    """Raise ValueError for a password too weak to accept."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    check_strength(password)
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches the hash; False for no hash (an OIDC account) too."""
    dummy = _dummy_hash()
    try:
        return _hasher.verify(password_hash or dummy, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> str:
    """A session token for a browser's cookie (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_id() -> str:
    """The public name of an API token (listed and revoked by it; 64 random bits)."""
    return secrets.token_hex(8)
