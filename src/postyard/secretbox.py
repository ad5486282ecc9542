"""Encryption of SMTP passwords at rest, and hashing of API keys.

Passwords must be recoverable (Postyard logs in with them), so they are
encrypted with Fernet under `POSTYARD_SECRET_KEY`. API keys need only be
recognised, so only their SHA-256 is stored: they are long random tokens, for
which a slow password hash buys nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from postyard.config import Settings

log = logging.getLogger(__name__)

API_KEY_PREFIX = "pk_"


class SecretBox:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(_fernet_key(key))
        self._signing_key = hashlib.sha256(b"postyard-signing:" + _fernet_key(key)).digest()

    def sign(self, message: str) -> str:
        """A MAC for links Postyard hands out (unsubscribe), under a key of its own."""
        digest = hmac.new(self._signing_key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def verify(self, message: str, signature: str) -> bool:
        # compare_digest raises TypeError on non-ASCII str, and a signature comes from outside.
        return hmac.compare_digest(
            self.sign(message).encode(), signature.encode("utf-8", "replace")
        )

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyMismatch(
                "A stored secret cannot be decrypted with POSTYARD_SECRET_KEY: "
                "the key changed since the secret was saved."
            ) from None


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
    """The box for these settings; without a configured key, a generated key file."""
    if settings.secret_key:
        return SecretBox(settings.secret_key)
    return SecretBox(_key_from_file(settings.secret_key_file))


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
