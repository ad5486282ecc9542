"""Where and how to connect for a route: a configured server, or the instance's default relay."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from postyard.config import ConfigError
from postyard.db.models import SmtpServer
from postyard.secretbox import SecretBox

SECURITY_BY_SCHEME = {"smtp": "starttls", "smtps": "tls"}


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open an authenticated connection to one SMTP server.

    `key` names the pool: it changes whenever a connection setting changes, so an
    edited server gets fresh connections while the old ones are retired.
    """

    key: str
    server_id: int | None
    name: str
    host: str
    port: int
    security: str
    username: str | None
    password: str | None
    ca_bundle: str | None
    max_connections: int
    timeout: float

    def tls_context(self) -> ssl.SSLContext | None:
        """Verified TLS for `starttls` and `tls`, trusting the server's own CA bundle if given."""
        if self.security == "none":
            return None
        if self.ca_bundle:
            return ssl.create_default_context(cadata=self.ca_bundle)
        return ssl.create_default_context()

    def client(self, local_hostname: str) -> aiosmtplib.SMTP:
        """An unconnected client that will insist on the configured security."""
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=self.tls_context(),
            local_hostname=local_hostname,
        )


def endpoint_for(server: SmtpServer, box: SecretBox, timeout: float) -> Endpoint:
    password = box.decrypt(server.password_encrypted) if server.password_encrypted else None
    return Endpoint(
        key=f"{server.id}@{server.updated_at.isoformat()}",
        server_id=server.id,
        name=server.name,
        host=server.host,
        port=server.port,
        security=server.security,
        username=server.username,
        password=password,
        ca_bundle=server.ca_bundle,
        max_connections=server.max_connections,
        timeout=timeout,
    )


def default_relay(url: str, timeout: float) -> Endpoint:
    """Parse POSTYARD_DEFAULT_SMTP_URL: `smtp://user:pass@host:587` (STARTTLS),
    `smtps://…:465` (TLS), and `?security=none` for a plain relay on a trusted network."""
    parts = urlsplit(url)
    if parts.scheme not in SECURITY_BY_SCHEME or not parts.hostname:
        raise ConfigError(
            "POSTYARD_DEFAULT_SMTP_URL must look like smtp://user:password@host:587 "
            f"or smtps://host:465, not {parts.scheme or 'a URL without scheme'}://…"
        )
    security = parse_qs(parts.query).get("security", [SECURITY_BY_SCHEME[parts.scheme]])[0]
    if security not in {"starttls", "tls", "none"}:
        raise ConfigError(f"POSTYARD_DEFAULT_SMTP_URL: unknown security {security!r}")
    return Endpoint(
        key="default-relay",
        server_id=None,
        name="default relay",
        host=parts.hostname,
        port=parts.port or (465 if security == "tls" else 587),
        security=security,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ca_bundle=None,
        max_connections=4,
        timeout=timeout,
    )
