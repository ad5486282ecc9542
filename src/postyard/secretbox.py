"""Encryption of SMTP passwords at rest, and hashing of API keys.

Passwords must be recoverable (Postyard logs in with them), so they are
encrypted with Fernet. API keys need only be recognised, so only their SHA-256
is stored: they are long random tokens, for which a slow password hash buys
nothing.

Keys rotate: `POSTYARD_SECRET_KEYS` lists several, newest first (MultiFernet).
New secrets are encrypted with the first; reading tries each in turn, and
`postyard secrets rotate` re-encrypts what is stored with the first, after
which older keys may be removed. `POSTYARD_SECRET_KEY` is the one-key form.

The signing key (unsubscribe links, UI session cookies, CSRF tokens) is derived
from each key too: new signatures use the first, and a signature made under any
listed key is accepted, so links and sessions survive a rotation for as long
as the key they were made with stays in the list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from postyard.config import ConfigError, Settings

log = logging.getLogger(__name__)

API_KEY_PREFIX = "pk_"
_UNREADABLE = (
    "A stored secret cannot be decrypted with any key in POSTYARD_SECRET_KEYS "
    "(or POSTYARD_SECRET_KEY): the key it was saved under is no longer configured."
)


class SecretBox:
    """Encrypts with the first of its keys and decrypts with any; signs likewise."""

    def __init__(self, keys: str | Sequence[str]) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        fernet_keys = [_fernet_key(key) for key in keys]
        self._newest = Fernet(fernet_keys[0])
        self._fernet = MultiFernet([Fernet(key) for key in fernet_keys])
        self._signing_keys = [
            hashlib.sha256(b"postyard-signing:" + key).digest() for key in fernet_keys
        ]

    @property
    def key_count(self) -> int:
        return len(self._signing_keys)

    def sign(self, message: str) -> str:
        """A MAC for links Postyard hands out (unsubscribe), under a key of its own."""
        return _mac(self._signing_keys[0], message)

    def verify(self, message: str, signature: str) -> bool:
        # compare_digest raises TypeError on non-ASCII str, and a signature comes from outside.
        given = signature.encode("utf-8", "replace")
        matches = [
            hmac.compare_digest(_mac(key, message).encode(), given) for key in self._signing_keys
        ]
        return any(matches)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch(_UNREADABLE) from None

    def is_current(self, token: str) -> bool:
        """Whether the token is encrypted under the newest key already."""
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def reencrypt(self, token: str) -> str:
        """The same secret encrypted under the newest key; SecretKeyMismatch if unreadable."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch(_UNREADABLE) from None


def _mac(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


class SecretKeyMismatch(RuntimeError):
    pass


def _fernet_key(key: str) -> bytes:
    """Accept a Fernet key as generated, or derive one from any other passphrase."""
    try:
        Fernet(key.encode())
        return key.encode()
    except ValueError:
        return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest())


def secret_box(settings: Settings) -> SecretBox:
    """The box for these settings; without a configured key, a generated key file.

    Raises ConfigError for a malformed `POSTYARD_SECRET_KEYS`.
    """
    keys = configured_keys(settings)
    if keys:
        return SecretBox(keys)
    return SecretBox(_key_from_file(settings.secret_key_file))


def configured_keys(settings: Settings) -> list[str]:
    """`POSTYARD_SECRET_KEYS` (newest first) if set, else `POSTYARD_SECRET_KEY`, else none."""
    if settings.secret_keys:
        keys = [key.strip() for key in settings.secret_keys.split(",")]
        if not all(keys):
            raise ConfigError(
                "POSTYARD_SECRET_KEYS has an empty entry: list the keys separated by "
                "single commas, newest first"
            )
        return keys
    if settings.secret_key:
        return [settings.secret_key]
    return []


def _key_from_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    key = Fernet.generate_key().decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    log.warning(
        "POSTYARD_SECRET_KEY is not set: generated a key in %s to encrypt SMTP passwords. "
        "Keep that file with the database, or set POSTYARD_SECRET_KEY in production.",
        path.resolve(),
    )
    return key


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()
