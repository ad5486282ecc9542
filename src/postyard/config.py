"""Settings read from the environment, in one frozen object passed to every layer.

Nothing reads `os.environ` elsewhere: tests and the demo build a `Settings` of
their own and hand it in, so two instances never share hidden state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///./postyard.db"


class ConfigError(ValueError):
    """An environment variable holds a value Postyard cannot use."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str | None = None
    secret_key_file: Path = Path("postyard.key")
    default_smtp_url: str | None = None
    message_lifetime_seconds: float = 3 * 24 * 3600
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    smtp_timeout_seconds: float = 30.0
    lease_seconds: float = 300.0
    worker_batch_size: int = 500
    worker_poll_seconds: float = 1.0
    max_request_bytes: int = 1_000_000
    instance_hostname: str = field(default_factory=lambda: os.uname().nodename)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            database_url=env.get("POSTYARD_DATABASE_URL", defaults.database_url),
            secret_key=env.get("POSTYARD_SECRET_KEY") or None,
            secret_key_file=Path(env.get("POSTYARD_SECRET_KEY_FILE", defaults.secret_key_file)),
            default_smtp_url=env.get("POSTYARD_DEFAULT_SMTP_URL") or None,
            message_lifetime_seconds=_number(
                env, "POSTYARD_MESSAGE_LIFETIME_SECONDS", defaults.message_lifetime_seconds
            ),
            retry_base_seconds=_number(
                env, "POSTYARD_RETRY_BASE_SECONDS", defaults.retry_base_seconds
            ),
            retry_max_seconds=_number(env, "POSTYARD_RETRY_MAX_SECONDS", defaults.retry_max_seconds),
            smtp_timeout_seconds=_number(
                env, "POSTYARD_SMTP_TIMEOUT_SECONDS", defaults.smtp_timeout_seconds
            ),
            lease_seconds=_number(env, "POSTYARD_LEASE_SECONDS", defaults.lease_seconds),
            worker_batch_size=int(
                _number(env, "POSTYARD_WORKER_BATCH_SIZE", defaults.worker_batch_size)
            ),
            worker_poll_seconds=_number(
                env, "POSTYARD_WORKER_POLL_SECONDS", defaults.worker_poll_seconds
            ),
            max_request_bytes=int(
                _number(env, "POSTYARD_MAX_REQUEST_BYTES", defaults.max_request_bytes)
            ),
            instance_hostname=env.get("POSTYARD_HOSTNAME", defaults.instance_hostname),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than zero, not {raw!r}")
    return value
