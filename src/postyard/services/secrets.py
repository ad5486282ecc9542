"""Re-encrypting the secrets Postyard stores (SMTP passwords) under the newest key."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from postyard.db.models import SmtpServer
from postyard.secretbox import SecretBox, SecretKeyMismatch


@dataclass(frozen=True)
class Rotation:
    reencrypted: int
    """Every stored secret, now under the newest key."""
    were_under_older_keys: int


def rotate_secrets(session: Session, box: SecretBox) -> Rotation:
    """Re-encrypt every stored secret with the box's newest key, in one transaction.

    A secret no configured key can read stops the rotation (nothing is changed); the
    error names the SMTP server, never the secret.
    """
    servers = session.scalars(
        select(SmtpServer)
        .where(SmtpServer.password_encrypted.is_not(None))
        .order_by(SmtpServer.id)
        .with_for_update()
    ).all()
    older = 0
    for server in servers:
        token = server.password_encrypted
        assert token is not None
        if not box.is_current(token):
            older += 1
        try:
            server.password_encrypted = box.reencrypt(token)
        except SecretKeyMismatch:
            raise SecretKeyMismatch(
                f"The password of SMTP server {server.id} ({server.name!r}, workspace "
                f"{server.workspace_id}) cannot be decrypted with any configured key: "
                "add the key it was saved under to POSTYARD_SECRET_KEYS and rotate again. "
                "Nothing was changed."
            ) from None
    session.flush()
    return Rotation(len(servers), older)
