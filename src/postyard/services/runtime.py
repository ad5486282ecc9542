"""What use cases that queue mail need besides a session: settings, the secret box, a clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from postyard.clock import Clock, utcnow
from postyard.config import Settings
from postyard.secretbox import SecretBox


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    box: SecretBox
    clock: Clock = field(default=utcnow)

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self.settings.message_lifetime_seconds)
