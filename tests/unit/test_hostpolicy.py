"""The host policy: which addresses and ports an instance may open SMTP connections to, and
the settings it is read from."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from postyard.config import ConfigError, Settings
from postyard.hostpolicy import MULTI_TENANT_PORTS, HostPolicy

MULTI_TENANT = HostPolicy.for_instance(multi_tenant=True)
SINGLE_TEAM = HostPolicy.for_instance(multi_tenant=False)

REFUSED_IN_MULTI_TENANT_MODE = [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("127.8.9.10", "127.8.9.10 is a loopback address"),
    ("::1", "::1 is a loopback address"),
    ("0.0.0.0", "0.0.0.0 is an unspecified address"),
    ("::", ":: is an unspecified address"),
    ("10.0.0.5", "10.0.0.5 is a private address"),
    ("172.16.0.1", "172.16.0.1 is a private address"),
    ("172.31.255.254", "172.31.255.254 is a private address"),
    ("192.168.1.1", "192.168.1.1 is a private address"),
    ("fd12:3456::1", "fd12:3456::1 is a private address"),
    ("169.254.10.20", "169.254.10.20 is a link-local address"),
    ("fe80::1", "fe80::1 is a link-local address"),
    ("100.64.0.1", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "100.127.255.254 is a shared (carrier-grade NAT) address"),
    ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("ff02::1", "ff02::1 is a multicast address"),
    ("240.0.0.1", "240.0.0.1 is a reserved address, not publicly routable"),
    ("255.255.255.255", "255.255.255.255 is a reserved address, not publicly routable"),
    ("192.0.2.1", "192.0.2.1 is a reserved address, not publicly routable"),
    ("2001:db8::1", "2001:db8::1 is a reserved address, not publicly routable"),
    ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
    ("fd00:ec2::254", "fd00:ec2::254 is a cloud metadata address"),
    ("100.100.100.200", "100.100.100.200 is a cloud metadata address"),
    (
        "::ffff:127.0.0.1",
        "::ffff:7f00:1 is a loopback address (127.0.0.1, embedded in IPv6)",
    ),
    (
        "::ffff:169.254.169.254",
        "::ffff:a9fe:a9fe is a cloud metadata address (169.254.169.254, embedded in IPv6)",
    ),
    ("::ffff:10.1.2.3", "::ffff:a01:203 is a private address (10.1.2.3, embedded in IPv6)"),
    ("2002:a00:1::1", "2002:a00:1::1 is a private address (10.0.0.1, embedded in IPv6)"),
    ("64:ff9b::7f00:1", "64:ff9b::7f00:1 is a loopback address (127.0.0.1, embedded in IPv6)"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "100.128.0.1"]


@pytest.mark.parametrize(("address", "reason"), REFUSED_IN_MULTI_TENANT_MODE)
def test_multi_tenant_mode_refuses_non_public_addresses_naming_the_reason(
    address: str, reason: str
) -> None:
    assert MULTI_TENANT.address_refusal(ip_address(address)) == reason
    assert MULTI_TENANT.refusal(ip_address(address), 587) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_multi_tenant_mode_allows_public_addresses(address: str) -> None:
    assert MULTI_TENANT.refusal(ip_address(address), 587) is None


@pytest.mark.parametrize(("address", "_"), REFUSED_IN_MULTI_TENANT_MODE)
def test_single_team_mode_allows_every_address_and_port(address: str, _: str) -> None:
    assert SINGLE_TEAM.allows_everything
    assert SINGLE_TEAM.refusal(ip_address(address), 2526) is None


@pytest.mark.parametrize("port", MULTI_TENANT_PORTS)
def test_multi_tenant_mode_allows_the_smtp_ports(port: int) -> None:
    assert MULTI_TENANT.port_refusal(port) is None


@pytest.mark.parametrize("port", [22, 80, 443, 2526, 5432, 6379, 8025])
def test_multi_tenant_mode_refuses_other_ports(port: int) -> None:
    assert MULTI_TENANT.port_refusal(port) == (
        f"port {port} is not an allowed SMTP port (25, 465, 587, 2525)"
    )
    assert MULTI_TENANT.refusal(ip_address("8.8.8.8"), port) is not None


def test_an_allowed_network_opens_its_addresses_even_metadata_and_mapped_forms() -> None:
    policy = HostPolicy.for_instance(
        multi_tenant=True,
        allowed_networks=(ip_network("10.20.0.0/16"), ip_network("169.254.169.254/32")),
    )
    assert policy.address_refusal(ip_address("10.20.3.4")) is None
    assert policy.address_refusal(ip_address("::ffff:10.20.3.4")) is None
    assert policy.address_refusal(ip_address("169.254.169.254")) is None
    assert policy.address_refusal(ip_address("10.21.0.1")) == "10.21.0.1 is a private address"


def test_listed_ports_replace_the_default_ones_in_either_mode() -> None:
    multi = HostPolicy.for_instance(multi_tenant=True, allowed_ports=(2526,))
    single = HostPolicy.for_instance(multi_tenant=False, allowed_ports=(587,))
    assert multi.port_refusal(2526) is None
    assert multi.port_refusal(587) == "port 587 is not an allowed SMTP port (2526)"
    assert not single.allows_everything
    assert single.port_refusal(25) == "port 25 is not an allowed SMTP port (587)"
    assert single.address_refusal(ip_address("127.0.0.1")) is None


# --- the settings it is read from -----------------------------------------------------------


def test_single_team_is_the_default_and_allows_everything() -> None:
    settings = Settings.from_env({})
    assert settings.multi_tenant is False
    assert settings.smtp_allowed_networks == ()
    assert settings.smtp_allowed_ports == ()


def test_host_policy_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "POSTYARD_MULTI_TENANT": "1",
            "POSTYARD_SMTP_ALLOWED_NETWORKS": "10.1.0.0/16, fd00:1::/64,,192.0.2.7",
            "POSTYARD_SMTP_ALLOWED_PORTS": "587, 2526",
        }
    )
    assert settings.multi_tenant is True
    assert settings.smtp_allowed_networks == (
        ip_network("10.1.0.0/16"),
        ip_network("fd00:1::/64"),
        ip_network("192.0.2.7/32"),
    )
    assert settings.smtp_allowed_ports == (587, 2526)


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("yes", True), ("0", False)])
def test_multi_tenant_takes_the_usual_spellings_of_a_flag(raw: str, expected: bool) -> None:
    assert Settings.from_env({"POSTYARD_MULTI_TENANT": raw}).multi_tenant is expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("POSTYARD_MULTI_TENANT", "maybe", "must be 1 or 0 (true or false), not 'maybe'"),
        ("POSTYARD_SMTP_ALLOWED_NETWORKS", "10.0.0.0/8,10.0.0.5/8", "not '10.0.0.5/8'"),
        ("POSTYARD_SMTP_ALLOWED_NETWORKS", "intranet", "a network in CIDR notation"),
        ("POSTYARD_SMTP_ALLOWED_PORTS", "25,70000", "a port number from 1 to 65535"),
        ("POSTYARD_SMTP_ALLOWED_PORTS", "smtp", "not 'smtp'"),
    ],
)
def test_a_bad_host_policy_setting_is_a_config_error_naming_the_variable(
    name: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        Settings.from_env({name: raw})
    assert message in str(raised.value)
