"""Settings read from the environment, in one frozen object passed to every layer.

Nothing reads `os.environ` elsewhere: tests and the demo build a `Settings` of
their own and hand it in, so two instances never share hidden state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from postyard.hostpolicy import IPNetwork

DEFAULT_DATABASE_URL = "sqlite:///./postyard.db"
# Numeric settings for which 0 means "off" rather than a mistake.
ZERO_TURNS_OFF = frozenset({"api_rate_limit_per_minute"})


class ConfigError(ValueError):
    """An environment variable holds a value Postyard cannot use."""


@dataclass(frozen=True)
class ListOf:
    """A setting written as a comma-separated list: how to read one item, and what one is."""

    parse: Callable[[str], object]
    description: str


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"{port} is out of range")
    return port


def _list_of(parse: Callable[[str], object], description: str) -> dict[str, ListOf]:
    return {"list_of": ListOf(parse, description)}


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    """It may carry the database password (postgresql+psycopg://user:password@host/db)."""
    secret_key: str | None = field(default=None, repr=False)
    """Secrets are left out of the repr, so a settings object in a log or traceback shows none."""
    secret_keys: str | None = field(default=None, repr=False)
    """Several keys, comma-separated, newest first; takes precedence over `secret_key`."""
    secret_key_file: Path = Path("postyard.key")
    default_smtp_url: str | None = field(default=None, repr=False)
    """It may carry the relay's password (smtp://user:password@host)."""
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
    multi_tenant: bool = False
    """Several teams share the instance: SMTP hosts may not point into its own network."""
    smtp_allowed_networks: tuple[IPNetwork, ...] = field(
        default=(), metadata=_list_of(ip_network, "a network in CIDR notation, like 10.1.0.0/16")
    )
    """Networks SMTP servers may be in even in multi-tenant mode (a relay on the LAN)."""
    smtp_allowed_ports: tuple[int, ...] = field(
        default=(), metadata=_list_of(_port, "a port number from 1 to 65535")
    )
    """The ports SMTP servers may use; empty: any port, or 25, 465, 587 and 2525 in
    multi-tenant mode."""

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
                values[setting.name] = _parse_setting(setting, name, raw, defaults)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The `POSTYARD_*` variables that `from_env` reads back as these settings: how
        `postyard serve --workers` hands its own settings to the processes it starts."""
        env = {}
        for setting in fields(self):
            value = getattr(self, setting.name)
            if value is None:
                continue
            env[f"POSTYARD_{setting.name.upper()}"] = _format(value)
        return env


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _parse_setting(setting: Field[Any], name: str, raw: str, defaults: Settings) -> object:
    list_of = setting.metadata.get("list_of")
    if list_of is not None:
        return _parse_list(name, raw, list_of)
    return _parse(
        name, raw, getattr(defaults, setting.name), allow_zero=setting.name in ZERO_TURNS_OFF
    )


def _parse_list(name: str, raw: str, list_of: ListOf) -> tuple[object, ...]:
    items = []
    for item in (text.strip() for text in raw.split(",")):
        if not item:
            continue
        try:
            items.append(list_of.parse(item))
        except ValueError:
            raise ConfigError(
                f"{name} must list {list_of.description} in each item, not {item!r}"
            ) from None
    return tuple(items)


def _parse_flag(name: str, raw: str) -> bool:
    flag = raw.strip().lower()
    if flag in {"1", "true", "yes", "on"}:
        return True
    if flag in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true or false), not {raw!r}")


def _parse(name: str, raw: str, default: object, *, allow_zero: bool = False) -> object:
    if isinstance(default, bool):
        return _parse_flag(name, raw)
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
