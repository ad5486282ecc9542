"""Settings read from the environment, in one frozen object passed to every layer.

Nothing reads `os.environ` elsewhere: tests and the demo build a `Settings` of
their own and hand it in, so two instances never share hidden state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///./postyard.db"
# Numeric settings for which 0 means "off" rather than a mistake.
ZERO_TURNS_OFF = frozenset({"api_rate_limit_per_minute"})


class ConfigError(ValueError):
    """An environment variable holds a value Postyard cannot use."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str | None = None
    secret_keys: str | None = None
    """Several keys, comma-separated, newest first; takes precedence over `secret_key`."""
    secret_key_file: Path = Path("postyard.key")
    default_smtp_url: str | None = None
    public_url: str = "http://127.0.0.1:8025"
    message_lifetime_seconds: float = 3 * 24 * 3600.0
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    smtp_timeout_seconds: float = 30.0
    lease_seconds: float = 300.0
    worker_batch_size: int = 500
    worker_poll_seconds: float = 0.25
    max_request_bytes: int = 1_000_000
    api_rate_limit_per_minute: int = 6000
    """Requests per minute per API key, in each API process; 0 turns the limit off."""
    hostname: str = field(default_factory=lambda: os.uname().nodename)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Each field `x` reads `POSTYARD_X`; an unset or empty variable keeps the default."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, Any] = {}
        for setting in fields(cls):
            name = f"POSTYARD_{setting.name.upper()}"
            raw = env.get(name)
            if raw:
                values[setting.name] = _parse(
                    name,
                    raw,
                    getattr(defaults, setting.name),
                    allow_zero=setting.name in ZERO_TURNS_OFF,
                )
        return cls(**values)


def _parse(name: str, raw: str, default: object, *, allow_zero: bool = False) -> object:
    if isinstance(default, Path):
        return Path(raw)
    if not isinstance(default, int | float):
        return raw
    try:
        value = type(default)(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {raw!r}")
    if allow_zero and value == 0:
        return value
    if value <= 0:
        qualifier = "zero (off) or more" if allow_zero else "greater than zero"
        raise ConfigError(f"{name} must be {qualifier}, not {raw!r}")
    return value
