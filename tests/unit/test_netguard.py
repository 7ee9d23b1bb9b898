"""The outbound address guard: IPv6 forms that carry an IPv4 address are judged by that
address, for callbacks, upstreams and output fetches alike, and the allowlist reaches them."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable

import pytest

from api.tasks import CallbackRefused, check_callback
from shared.netguard import AddressRefused, Allowlist, check_host, embedded_ipv4, is_internal
from shared.settings import Settings

INTERNAL_V4 = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0"]
GLOBAL_V4 = ["8.8.8.8", "1.1.1.1"]
Form = Callable[[str], str]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def compatible(v4: str) -> str:
    return _v6(int(ipaddress.IPv4Address(v4)))


def mapped(v4: str) -> str:
    return f"::ffff:{v4}"


def translated(v4: str) -> str:
    return f"::ffff:0:{v4}"


def nat64(v4: str) -> str:
    return f"64:ff9b::{v4}"


def nat64_local(v4: str) -> str:
    # RFC 6052, /48 prefix: bits 48-63 and 72-87 carry the address, 64-71 are the u-octet.
    n = int(ipaddress.IPv4Address(v4))
    prefix = int(ipaddress.IPv6Address("64:ff9b:1::"))
    return _v6(prefix | (n >> 16) << 64 | (n & 0xFFFF) << 40)


def six_to_four(v4: str) -> str:
    return _v6(int(ipaddress.IPv6Address("2002::")) | int(ipaddress.IPv4Address(v4)) << 80 | 1)


def teredo(server: str, client: str = "8.8.4.4") -> str:
    obscured = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return _v6(
        int(ipaddress.IPv6Address("2001::"))
        | int(ipaddress.IPv4Address(server)) << 64
        | 0x8000_FFFF << 32
        | obscured
    )


def teredo_client(client: str) -> str:
    return teredo("8.8.4.4", client)


FORMS: list[Form] = [
    compatible,
    mapped,
    translated,
    nat64,
    nat64_local,
    six_to_four,
    teredo,
    teredo_client,
]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", INTERNAL_V4)
def test_forms_carrying_an_internal_ipv4_are_internal(form: Form, v4: str) -> None:
    address = ip(form(v4))
    if str(address) != "::":  # ::0.0.0.0 is the unspecified address itself
        assert ip(v4) in (embedded_ipv4(address) or ())
    assert is_internal(address), address


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", GLOBAL_V4)
def test_forms_carrying_a_global_ipv4_are_not(form: Form, v4: str) -> None:
    address = ip(form(v4))
    assert ip(v4) in (embedded_ipv4(address) or ())
    assert not is_internal(address), address


def test_the_literal_forms_of_the_report() -> None:
    for text in ("::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "::ffff:a9fe:a9fe"):
        assert is_internal(ip(text)), text
    assert embedded_ipv4(ip("2002:7f00:1::")) == (ip("127.0.0.1"),)
    assert embedded_ipv4(ip("64:ff9b:1:7f00:0:100::")) == (ip("127.0.0.1"),)
    # A Teredo address's server and client (the example of RFC 4380).
    example = ip("2001:0:4136:e378:8000:63bf:3fff:fdd2")
    assert embedded_ipv4(example) == (ip("65.54.227.120"), ip("192.0.2.45"))
    assert is_internal(example)  # the client is in TEST-NET-1


def test_plain_addresses_keep_their_own_judgement() -> None:
    for text in ("::", "::1", "fe80::1", "fc00::1", "ff02::1", "2001:db8::1"):
        assert embedded_ipv4(ip(text)) is None
        assert is_internal(ip(text)), text
    for text in ("2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "8.8.8.8"):
        assert embedded_ipv4(ip(text)) is None
        assert not is_internal(ip(text)), text


def test_a_local_nat64_address_off_the_48_layout_is_internal() -> None:
    # A non-zero u-octet or suffix: a longer translator prefix whose IPv4 cannot be read.
    for text in ("64:ff9b:1:808:ff08:800::", "64:ff9b:1:808:8:8::808"):
        assert embedded_ipv4(ip(text)) == ()
        assert is_internal(ip(text)), text


def test_allow_listing_an_ipv4_network_covers_the_forms_that_carry_it() -> None:
    allowlist = Allowlist.parse("127.0.0.0/8, internal.example")
    for form in (compatible, mapped, nat64, nat64_local, six_to_four):
        text = form("127.0.0.1")
        assert allowlist.allows(text, ip(text)), text
        other = form("10.0.0.1")
        assert not allowlist.allows(other, ip(other)), other
    # Both Teredo addresses must be allowed: a listed server with an internal client is not.
    assert not allowlist.allows("x", ip(teredo("127.0.0.1", "10.0.0.1")))
    assert allowlist.allows("x", ip(teredo("127.0.0.1", "8.8.8.8")))
    assert allowlist.allows("internal.example", ip("::ffff:10.0.0.1"))
    # An IPv6 entry lists IPv6 addresses as before.
    assert Allowlist.parse("64:ff9b::/96").allows("x", ip("64:ff9b::a00:1"))
    assert not Allowlist.parse("").allows("x", ip("64:ff9b:1:808:8:808::"))


REFUSED_HOSTS = [
    "::127.0.0.1",
    "::ffff:127.0.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::6440:1",
    "2001:0:a00:1:8000:ffff:f7f7:fbfb",
    "::ffff:0.0.0.0",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_check_host_refuses_the_forms(host: str) -> None:
    with pytest.raises(AddressRefused):
        await check_host(host, 80, Allowlist.parse(""), "SPOOL_WEBHOOK_ALLOWLIST")


async def test_check_host_accepts_global_forms_and_the_allowlist() -> None:
    for host in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"):
        await check_host(host, 443, Allowlist.parse(""), "SPOOL_WEBHOOK_ALLOWLIST")
    await check_host("::ffff:127.0.0.1", 80, Allowlist.parse("127.0.0.1"), "x")


async def test_an_address_keeps_its_verdict_for_each_allowlist() -> None:
    listed, empty = Allowlist.parse("10.0.0.0/8"), Allowlist.parse("")
    for _ in range(3):  # the verdicts are remembered, per allowlist
        await check_host("10.1.2.3", 80, listed, "x")
        with pytest.raises(AddressRefused):
            await check_host("10.1.2.3", 80, empty, "x")
        await check_host("8.8.8.8", 80, empty, "x")


async def test_callback_urls_with_the_forms_are_refused() -> None:
    settings = Settings.model_validate({"webhook_secret": WEBHOOK_SECRET})
    for host in ("::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "::ffff:169.254.169.254"):
        with pytest.raises(CallbackRefused, match="internal address"):
            await check_callback(settings, f"http://[{host}]:8080/hook")
    await check_callback(settings, "https://[64:ff9b::808:808]/hook")
    allowing = Settings.model_validate(
        {"webhook_secret": WEBHOOK_SECRET, "webhook_allowlist": "127.0.0.0/8"}
    )
    await check_callback(allowing, "http://[::ffff:127.0.0.1]:8080/hook")
