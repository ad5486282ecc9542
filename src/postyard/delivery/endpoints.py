"""Where and how to connect for a route: a configured server, or the instance's default relay.

Where the instance's host policy restricts SMTP hosts (multi-tenant mode), a server's name
is resolved once, every address it has is checked, and the connection goes to a checked
address: a name cannot point elsewhere between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from ipaddress import ip_address
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from postyard.config import ConfigError, Settings
from postyard.db.models import SmtpServer
from postyard.hostpolicy import HostPolicy, IPAddress
from postyard.secretbox import SecretBox

SECURITY_BY_SCHEME = {"smtp": "starttls", "smtps": "tls"}

Resolver = Callable[[str, int], tuple[IPAddress, ...]]


def resolve_host(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` stands for, once each, in the resolver's order (blocking)."""
    try:
        return (ip_address(host),)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as error:  # a label IDNA cannot encode: as unresolvable as any
        raise OSError(f"{host!r} is not a host name that can be resolved") from error
    return tuple(dict.fromkeys(ip_address(sockaddr[0]) for *_, sockaddr in found))


class HostNotAllowed(Exception):
    """The host policy forbids a server's host or port. Configuring such a server is refused;
    mail routed to it fails rather than waits, since trying again cannot change the answer."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason if reason.startswith(f"{host} ") else f"{host}: {reason}")
        self.error = f"host_not_allowed: {self}"


@dataclass(frozen=True)
class HostGuard:
    """The instance's host policy, and the resolver that names are checked through."""

    policy: HostPolicy = field(default_factory=HostPolicy)
    resolve: Resolver = resolve_host

    def checked_addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """Resolve `host` once; refuse it whole if the port or any of its addresses is refused
        (a name that also points inward is no less dangerous). Raises OSError when it does not
        resolve."""
        port_refusal = self.policy.port_refusal(port)
        if port_refusal is not None:
            raise HostNotAllowed(host, port_refusal)
        addresses = self.resolve(host, port)
        for address in addresses:
            refusal = self.policy.address_refusal(address)
            if refusal is not None:
                raise HostNotAllowed(host, refusal)
        return addresses

    def check(self, host: str, port: int) -> None:
        """Refuse a server being configured with a host or port the policy forbids. A name
        that does not resolve (yet) passes: every connection checks it again."""
        if self.policy.allows_everything:
            return
        with suppress(OSError):
            self.checked_addresses(host, port)

    async def open_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to the first reachable checked address of `host`."""
        addresses = await asyncio.to_thread(self.checked_addresses, host, port)
        failure: OSError = OSError(f"{host} has no address")
        for address in addresses:
            try:
                return await asyncio.wait_for(_connected_socket(address, port), timeout)
            except OSError as error:  # TimeoutError among them
                failure = error
        raise failure


def host_guard(settings: Settings, resolve: Resolver = resolve_host) -> HostGuard:
    policy = HostPolicy.for_instance(
        multi_tenant=settings.multi_tenant,
        allowed_networks=settings.smtp_allowed_networks,
        allowed_ports=settings.smtp_allowed_ports,
    )
    return HostGuard(policy, resolve)


async def _connected_socket(address: IPAddress, port: int) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


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
    password: str | None = field(repr=False)
    ca_bundle: str | None
    max_connections: int
    timeout: float
    guard: HostGuard = field(default_factory=HostGuard)
    """The policy its host is held to; the default relay, set by the operator, allows all."""
    rate_limit_per_second: float | None = None
    """Messages per second across all workers (see `throttle`); None: no limit."""
    max_messages_per_connection: int | None = None
    """QUIT after this many messages and open a new connection; None: no limit."""

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

    async def connect(self, client: aiosmtplib.SMTP) -> aiosmtplib.SMTPResponse:
        """Connect `client`; where the policy restricts hosts, over a socket to an address
        checked just now. TLS still verifies the certificate for, and sends SNI of, the
        configured name: aiosmtplib takes both from `hostname` when given a socket."""
        if self.guard.policy.allows_everything:
            return await client.connect()
        sock = await self.guard.open_socket(self.host, self.port, self.timeout)
        try:
            return await client.connect(sock=sock, port=None)
        except BaseException:
            sock.close()
            raise


def endpoint_for(server: SmtpServer, box: SecretBox, timeout: float, guard: HostGuard) -> Endpoint:
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
        guard=guard,
        rate_limit_per_second=server.rate_limit_per_second,
        max_messages_per_connection=server.max_messages_per_connection,
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
