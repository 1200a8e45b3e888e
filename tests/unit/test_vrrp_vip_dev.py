"""VIPs on another interface ("10.2.0.1/24 dev eth1"): parsing, errors, placement, tracking,
the advert address list (unchanged by dev, byte for byte against keepalived) and the loader."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.vrrp.packet import (
    Advert,
    encode_ipv4,
    encode_ipv6,
    parse_ipv4_header,
    parse_ipv6_header,
)
from l4lb.vrrp.settings import (
    KEEPALIVED_VIP_OPTIONS,
    Vip,
    VipSyntaxError,
    VrrpSettings,
    VrrpSettingsError,
    parse_vip,
)

from .fakehost import ExampleHost

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "keepalived-vrrp-captures.json"
SAMPLES = [s for s in json.loads(CAPTURES.read_text())["samples"] if "vrrp" in s]

BASE: dict[str, Any] = {"name": "VI_1", "interface": "eth0", "virtual_router_id": 51}
TWO_LEGGED = ("10.0.0.100/24", "10.2.0.1/24 dev eth1", "fd00:2::1/64 dev eth1",
              "fd00::100/64")


def make(vips: tuple[str, ...], **kw: Any) -> VrrpSettings:
    return VrrpSettings(**{**BASE, "vips": vips, **kw})


def problems(vips: tuple[str, ...], **kw: Any) -> list[str]:
    with pytest.raises(VrrpSettingsError) as info:
        make(vips, **kw)
    return info.value.problems


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "address", "dev"), [
    ("10.0.0.100/24", "10.0.0.100/24", None),
    ("10.0.0.100", "10.0.0.100/32", None),
    ("10.2.0.1/24 dev eth1", "10.2.0.1/24", "eth1"),
    ("  10.2.0.1/24   dev\teth1 ", "10.2.0.1/24", "eth1"),
    ("fd00:2::1/64 dev eth1", "fd00:2::1/64", "eth1"),
    ("fd00:2::1 dev bond0.100", "fd00:2::1/128", "bond0.100"),
])
def test_parse_vip(text: str, address: str, dev: str | None) -> None:
    vip = parse_vip(text)
    assert vip == Vip(address=ipaddress.ip_interface(address), dev=dev,
                      text=text.split()[0])


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "is not an address"),
    ("10.2.0.1/24 eth1", 'has "eth1" after the address'),
    ("10.2.0.1/24 dev", 'has "dev" without an interface name'),
    ("10.2.0.1/24 dev eth1 dev eth2", 'names "dev" twice'),
    ("10.2.0.1/24 dev eth/1", "'eth/1' after dev, which is not an interface name"),
    ("10.2.0.1/24 dev eth0:1", "not an interface name"),
    ("10.2.0.1/24 dev " + "a" * 16, "not an interface name"),
    ("10.2.0.1/24 DEV eth1", 'has "DEV" after the address'),
    ("dev eth1", "is not an address"),
])
def test_parse_vip_refuses(text: str, fragment: str) -> None:
    with pytest.raises(VipSyntaxError) as info:
        parse_vip(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize("word", sorted(KEEPALIVED_VIP_OPTIONS))
def test_other_keepalived_options_are_refused_by_name(word: str) -> None:
    found = problems(("10.0.0.100/24", f"10.2.0.1/24 dev eth1 {word} x"))
    assert found == [f"vrrp.vips: '10.2.0.1/24 dev eth1 {word} x' has keepalived's \"{word}\" "
                     'option, which l4lb does not support (only "dev IFNAME" may follow the '
                     "address)"]


def test_label_scope_brd_no_track_are_among_the_refused_words() -> None:
    assert {"label", "scope", "brd", "no_track"} <= KEEPALIVED_VIP_OPTIONS


def test_every_vip_problem_is_reported_at_once() -> None:
    found = problems(("10.0.0.100/24", "10.2.0.1/24 label eth1:0", "10.2.0.2/24 dev",
                      "10.0.0.100/32 dev eth1", "10.2.0.3/24 dev a:b"))
    assert [p.split(" ", 2)[1] for p in found] == [
        "'10.2.0.1/24", "'10.2.0.2/24", "10.0.0.100", "'10.2.0.3/24"]
    assert all(p.startswith("vrrp.vips: ") for p in found)
    assert found[2] == "vrrp.vips: 10.0.0.100 is listed twice"


def test_a_duplicate_address_is_an_error_whatever_the_dev() -> None:
    assert problems(("10.2.0.1/24 dev eth1", "10.2.0.1/24 dev eth2")) == [
        "vrrp.vips: 10.2.0.1 is listed twice"]
    assert problems(("fd00:2::1/64 dev eth1", "fd00:2::1/128")) == [
        "vrrp.vips: fd00:2::1 is listed twice"]


# --- placement, tracking, display ------------------------------------------------------


def test_each_vip_goes_on_its_own_interface() -> None:
    s = make(TWO_LEGGED)
    assert [(str(v), dev) for v, dev in s.placed_vips] == [
        ("10.0.0.100/24", "eth0"), ("10.2.0.1/24", "eth1"), ("fd00:2::1/64", "eth1"),
        ("fd00::100/64", "eth0")]
    assert s.vip_links == ("eth1",)
    assert s.vip_interfaces == tuple(ipaddress.ip_interface(t.split()[0]) for t in TWO_LEGGED)


def test_without_dev_every_vip_is_on_the_instance_interface() -> None:
    s = make(("10.0.0.100/24", "fd00::100/64"))
    assert {dev for _, dev in s.placed_vips} == {"eth0"}
    assert s.vip_links == ()
    assert s.tracked_interfaces == ("eth0",)


def test_dev_naming_the_instance_interface_is_the_default() -> None:
    s = make(("10.0.0.100/24 dev eth0", "10.2.0.1/24 dev eth1"))
    assert s.vip_links == ("eth1",)
    assert s.vip_texts == ("10.0.0.100/24", "10.2.0.1/24 dev eth1")


def test_interfaces_carrying_a_vip_are_tracked() -> None:
    s = make(("10.0.0.100/24", "10.2.0.1/24 dev eth1", "10.3.0.1/24 dev eth2",
              "10.2.0.2/24 dev eth1"), track_interfaces=("eth3", "eth1"))
    assert s.vip_links == ("eth1", "eth2")
    assert s.tracked_interfaces == ("eth0", "eth1", "eth2", "eth3")


def test_vip_texts_show_dev_only_where_it_is_not_the_instance_interface() -> None:
    assert make(TWO_LEGGED).vip_texts == TWO_LEGGED
    assert make(("10.0.0.100",)).vip_texts == ("10.0.0.100",)


# --- adverts: the address list does not depend on dev ------------------------------------


def test_the_advert_address_list_is_unchanged_by_dev() -> None:
    plain = make(tuple(t.split()[0] for t in TWO_LEGGED))
    placed = make(TWO_LEGGED)
    assert placed.advertised == plain.advertised == (
        ipaddress.IPv4Address("10.0.0.100"), ipaddress.IPv4Address("10.2.0.1"))
    assert placed.excluded == plain.excluded
    assert placed.family == plain.family == 4
    six = make(("fd00:2::1/64 dev eth1", "10.2.0.1/24 dev eth1", "fd00::100/64"))
    assert six.family == 6
    assert six.advertised == (ipaddress.IPv6Address("fd00:2::1"),
                              ipaddress.IPv6Address("fd00::100"))


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s["vrrp"]["version"] == 3],
                         ids=lambda s: f"n{s['n']}")
def test_adverts_with_dev_vips_match_keepalived_byte_for_byte(sample: dict[str, Any]) -> None:
    """keepalived lists every VIP of the family, whatever its device: an instance whose
    captured VIPs all carry `dev` (plus one of the other family) sends the captured packet."""
    rec, ip = sample["vrrp"], sample["ip"]
    other = "10.2.0.1/24 dev eth1" if ip["version"] == 6 else "fd00:2::1/64 dev eth1"
    s = make((*(f"{a} dev eth1" for a in rec["ip_addrs"]), other),
             priority=max(rec["priority"], 1), advert_interval=rec["max_advert_int_cs"] / 100)
    advert = Advert(version=3, vrid=s.virtual_router_id, priority=rec["priority"],
                    interval_cs=s.interval_cs, addresses=s.advertised,
                    src=ipaddress.ip_address(ip["src"]), dst=ipaddress.ip_address(ip["dst"]))
    packet = bytes.fromhex(sample["frame_hex"])[14:]
    if ip["version"] == 4:
        assert encode_ipv4(advert, ident=parse_ipv4_header(packet).ident) == packet
    else:
        assert encode_ipv6(advert, flow_label=parse_ipv6_header(packet).flow_label) == packet


# --- the loader: positions, host checks ---------------------------------------------------


def vrrp_doc(vips: str) -> str:
    return f"""\
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
vips = {vips}
"""


def test_a_two_legged_instance_loads() -> None:
    config = load_text(vrrp_doc(json.dumps(list(TWO_LEGGED))), "t.toml",
                       host=ExampleHost())
    [s] = config.vrrp
    assert s.vips == TWO_LEGGED
    assert s.vip_links == ("eth1",)


def test_a_vip_interface_the_host_lacks_is_an_error_at_the_element() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(vrrp_doc('["10.0.0.100/24", "10.2.0.1/24 dev eth9"]'), "t.toml",
                  host=ExampleHost())
    [d] = info.value.diagnostics
    assert str(d).startswith('t.toml:5:26: error: vrrp[0] ("VI_1"): vips[1]: no interface '
                             'named "eth9" on this host (it has ')


def test_without_host_checks_a_missing_vip_interface_loads() -> None:
    config = load_text(vrrp_doc('["10.0.0.100/24", "10.2.0.1/24 dev eth9"]'), "t.toml",
                       host=None)
    assert config.vrrp[0].vip_links == ("eth9",)


def test_syntax_errors_point_at_their_element_all_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_text(vrrp_doc('["10.0.0.100/24", "10.2.0.1/24 scope link", '
                           '"10.0.0.100/32 dev eth1", "10.2.0.2 dev eth/1"]'),
                  "t.toml", host=ExampleHost())
    assert [str(d) for d in info.value.diagnostics] == [
        't.toml:5:26: error: vrrp[0] ("VI_1"): vips: \'10.2.0.1/24 scope link\' has '
        'keepalived\'s "scope" option, which l4lb does not support (only "dev IFNAME" may '
        "follow the address)",
        't.toml:5:52: error: vrrp[0] ("VI_1"): vips: 10.0.0.100 is listed twice',
        't.toml:5:78: error: vrrp[0] ("VI_1"): vips: \'10.2.0.2 dev eth/1\' has \'eth/1\' '
        "after dev, which is not an interface name",
    ]


def test_the_table_does_not_depend_on_vip_interfaces() -> None:
    """The pair's digest check compares forwarding tables, which [[vrrp]] does not enter:
    two nodes may name their backend-side interface differently."""
    service = '[[services]]\nname = "web"\nlisten = ["10.0.0.100:80"]\n' \
              '[[services.backends]]\naddress = "10.2.0.11:80"\n'
    one = load_text(service + vrrp_doc('["10.0.0.100/24", "10.2.0.1/24 dev eth1"]'),
                    "a.toml", host=None)
    two = load_text(service + vrrp_doc('["10.0.0.100/24", "10.2.0.1/24 dev ens5"]'),
                    "b.toml", host=None)
    assert one.services == two.services and one.global_ == two.global_
