"""Signed unsubscribe links: whoever holds one may unsubscribe that person, and nobody else."""

from __future__ import annotations

from dataclasses import dataclass

from postyard.secretbox import SecretBox


@dataclass(frozen=True)
class UnsubscribeToken:
    workspace_id: int
    person_pk: int
    campaign_id: int | None

    def message(self) -> str:
        return f"{self.workspace_id}.{self.person_pk}.{self.campaign_id or 0}"


def make_token(box: SecretBox, token: UnsubscribeToken) -> str:
    message = token.message()
    return f"{message}.{box.sign(message)}"


def read_token(box: SecretBox, text: str) -> UnsubscribeToken | None:
    """The token's contents if its signature holds, else None."""
    message, _, signature = text.rpartition(".")
    parts = message.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    if not box.verify(message, signature):
        return None
    workspace_id, person_pk, campaign_id = (int(part) for part in parts)
    return UnsubscribeToken(workspace_id, person_pk, campaign_id or None)


def unsubscribe_url(public_url: str, box: SecretBox, token: UnsubscribeToken) -> str:
    return f"{public_url.rstrip('/')}/u/{make_token(box, token)}"


def unsubscribe_headers(url: str) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: mail clients POST to the URL without a page."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
