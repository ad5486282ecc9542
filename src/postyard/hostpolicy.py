"""Which SMTP hosts an instance may connect to: pure rules, no I/O (the caller resolves names).

On an instance shared by several teams (`multi_tenant`), an SMTP server is a host and port
chosen by a user: without these rules, "test connection" and the delivery worker would
probe, or talk to, whatever the instance itself can reach (its loopback, the LAN, the
cloud's metadata service). There, only public addresses on the usual SMTP ports are allowed,
plus the networks an operator lists. A single-team instance allows everything: its users
are its operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MULTI_TENANT_PORTS = (25, 465, 587, 2525)
"""SMTP ports allowed in multi-tenant mode unless the operator lists others."""

METADATA_ADDRESSES = frozenset(
    ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud instance-metadata services (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba)."""

_KINDS: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = tuple(
    (kind, tuple(ip_network(text) for text in networks))
    for kind, networks in (
        ("an unspecified address", ("0.0.0.0/8", "::/128")),
        ("a loopback address", ("127.0.0.0/8", "::1/128")),
        ("a link-local address", ("169.254.0.0/16", "fe80::/10")),
        ("a shared (carrier-grade NAT) address", ("100.64.0.0/10",)),
        ("a private address", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
        ("a multicast address", ("224.0.0.0/4", "ff00::/8")),
    )
)

_NAT64 = ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class HostPolicy:
    """`restrict_addresses`: only public addresses, and those in `allowed_networks`;
    `allowed_ports`: the ports allowed, or all of them when empty."""

    restrict_addresses: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: tuple[int, ...] = ()

    @classmethod
    def for_instance(
        cls,
        *,
        multi_tenant: bool,
        allowed_networks: tuple[IPNetwork, ...] = (),
        allowed_ports: tuple[int, ...] = (),
    ) -> HostPolicy:
        """The policy an instance's settings ask for; multi-tenant mode defaults the ports."""
        if multi_tenant and not allowed_ports:
            allowed_ports = MULTI_TENANT_PORTS
        return cls(multi_tenant, allowed_networks, allowed_ports)

    @property
    def allows_everything(self) -> bool:
        return not self.restrict_addresses and not self.allowed_ports

    def port_refusal(self, port: int) -> str | None:
        """Why connecting to `port` is refused, in words; None when it is allowed."""
        if not self.allowed_ports or port in self.allowed_ports:
            return None
        allowed = ", ".join(str(allowed) for allowed in sorted(self.allowed_ports))
        return f"port {port} is not an allowed SMTP port ({allowed})"

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why connecting to `address` is refused, in words; None when it is allowed."""
        if not self.restrict_addresses:
            return None
        embedded = _embedded_ipv4(address)
        if any(self._in_allowed_network(a) for a in (address, embedded) if a is not None):
            return None
        if embedded is None:
            kind = _kind(address)
            return None if kind is None else f"{address} is {kind}"
        kind = _kind(embedded)
        return None if kind is None else f"{address} is {kind} ({embedded}, embedded in IPv6)"

    def refusal(self, address: IPAddress, port: int) -> str | None:
        return self.address_refusal(address) or self.port_refusal(port)

    def _in_allowed_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)


def _kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for kind, networks in _KINDS:
        if any(address in network for network in networks):
            return kind
    if address.is_reserved or not address.is_global:
        return "a reserved address, not publicly routable"
    return None


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), if any: a
    connection to it may well end at that IPv4 address."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None
