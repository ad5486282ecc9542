"""Signed unsubscribe links: whoever holds one may unsubscribe that person, and nobody else.

A link carries the workspace, the person (by primary key) and the campaign it came
in, with a MAC over the three. Nothing is stored per link, so a link works for as
long as the secret key stays the same. Following one is `services.subscriptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from postyard.secretbox import SecretBox

# Signed with the token so that a MAC made for another kind of link, should one
# ever have the same shape, is never accepted as an unsubscribe link.
PURPOSE = "unsubscribe"

# Why a message to an unsubscribed person is recorded `suppressed`.
UNSUBSCRIBED = "person unsubscribed"


@dataclass(frozen=True)
class UnsubscribeToken:
    workspace_id: int
    person_pk: int
    campaign_id: int | None

    def message(self) -> str:
        return f"{self.workspace_id}.{self.person_pk}.{self.campaign_id or 0}"


def make_token(box: SecretBox, token: UnsubscribeToken) -> str:
    message = token.message()
    return f"{message}.{box.sign(f'{PURPOSE}:{message}')}"


def read_token(box: SecretBox, text: str) -> UnsubscribeToken | None:
    """The token's contents if its signature holds, else None (for any text at all)."""
    message, _, signature = text.rpartition(".")
    parts = message.split(".")
    # isdigit() alone accepts digits of other scripts, which int() reads or refuses.
    if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
        return None
    if not box.verify(f"{PURPOSE}:{message}", signature):
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
