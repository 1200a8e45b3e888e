"""The `accept_proxy_from` service key: values, errors, what the table builder writes (only for
services with accept_proxy, atomically with the rest of the table), and how status and metrics
show it. No sockets here; tests/dataplane/test_accept_proxy_from.py runs the traffic."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from l4lb import display
from l4lb.config import ConfigError, load_text
from l4lb.table.blob import ProxyFromRec, Table, parse
from l4lb.table.builder import TableBuilder

from .test_config_accept_proxy import TimeoutRecorder
from .test_config_congestion import daemon_on, sid, switch

TCP = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9001"
"""


def load(text: str) -> Any:
    return load_text(text, "t.toml", host=None)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=None)
    return [str(d) for d in info.value.diagnostics]


def keys(entries: str, switch: str = "accept_proxy = true") -> str:
    return TCP.format(keys=f"{switch}\naccept_proxy_from = {entries}")


def test_absent_by_default() -> None:
    assert load(TCP.format(keys="accept_proxy = true")).services[0].accept_proxy_from == ()


def test_addresses_and_prefixes_of_both_families() -> None:
    svc = load(keys('["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "0.0.0.0/0"]'))
    assert svc.services[0].accept_proxy_from == tuple(ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128", "0.0.0.0/0"))


def test_needs_accept_proxy() -> None:
    assert errors(keys('["10.0.0.0/8"]', switch="")) == [
        't.toml:5:1: error: services[0] ("web"): accept_proxy_from: needs accept_proxy = true '
        '(it names the sources whose connections carry a PROXY header)']
    assert errors(keys('["10.0.0.0/8"]', switch="accept_proxy = false")) == [
        't.toml:5:1: error: services[0] ("web"): accept_proxy_from: needs accept_proxy = true '
        '(it names the sources whose connections carry a PROXY header)']
    # a wrong accept_proxy is reported once, not again through accept_proxy_from
    assert errors(keys('["10.0.0.0/8"]', switch='accept_proxy = "yes"')) == [
        't.toml:4:16: error: services[0] ("web"): accept_proxy: expected a boolean, found a '
        'string ("yes")']


def test_empty_list_is_an_error() -> None:
    assert errors(keys("[]")) == [
        't.toml:5:21: error: services[0] ("web"): accept_proxy_from: must not be empty (leave '
        'the key out for a header from every client, or accept_proxy out for none)']


def test_at_most_64_entries() -> None:
    many = [f'"10.0.{i // 256}.{i % 256}"' for i in range(65)]
    assert load(keys("[" + ", ".join(many[:64]) + "]")).services[0].accept_proxy_from
    assert errors(keys("[" + ", ".join(many) + "]")) == [
        't.toml:5:21: error: services[0] ("web"): accept_proxy_from: 65 entries are more than '
        '64 (the data plane compares each new connection with every entry; use wider prefixes)']


@pytest.mark.parametrize(("entry", "message"), [
    ('"10.0.0.1/8"', '"10.0.0.1/8" has host bits set beyond its prefix; write "10.0.0.0/8"'),
    ('"2001:db8::1/32"',
     '"2001:db8::1/32" has host bits set beyond its prefix; write "2001:db8::/32"'),
    ('"10.0.0.0/33"', '"10.0.0.0/33" is not an IP address or prefix (ADDRESS or '
                      'ADDRESS/LENGTH, no names, no zone)'),
    ('"lb.example"', '"lb.example" is not an IP address or prefix (ADDRESS or ADDRESS/LENGTH, '
                     'no names, no zone)'),
    ('"fe80::1%eth0"', '"fe80::1%eth0" is not an IP address or prefix (ADDRESS or '
                       'ADDRESS/LENGTH, no names, no zone)'),
    ("7", "expected an address or prefix string, found an integer (7)"),
])
def test_bad_entries(entry: str, message: str) -> None:
    assert errors(keys(f"[{entry}]")) == [
        f't.toml:5:22: error: services[0] ("web"): accept_proxy_from[0]: {message}']


def test_duplicates_and_udp() -> None:
    assert errors(keys('["192.0.2.7", "192.0.2.7/32"]')) == [
        't.toml:5:35: error: services[0] ("web"): accept_proxy_from[1]: "192.0.2.7/32" is '
        'listed twice']
    udp = TCP.format(keys='protocol = "udp"\naccept_proxy_from = ["10.0.0.0/8"]')
    assert errors(udp) == [
        't.toml:5:21: error: services[0] ("web"): accept_proxy_from: applies to protocol = '
        '"tcp" only']


def test_builder_writes_the_list_in_the_table() -> None:
    config = load(keys('["10.0.0.0/8", "2001:db8::/32"]'))
    table = parse(TableBuilder().build(config))
    svc = table.services[0]
    assert (svc.proxy_from_first, svc.proxy_from_count) == (0, 2)
    assert table.proxy_from == (ProxyFromRec(4, 8, bytes([10]) + bytes(15)),
                                ProxyFromRec(6, 32, bytes.fromhex("20010db8") + bytes(12)))
    assert table.proxy_from_match(svc, 4, bytes([10, 1, 2, 3]) + bytes(12))
    assert not table.proxy_from_match(svc, 4, bytes([127, 0, 0, 1]) + bytes(12))


def test_builder_writes_no_list_without_accept_proxy() -> None:
    # a Config made by hand (the loader refuses it): the list would mean nothing
    config = load(keys('["10.0.0.0/8"]'))
    off = dataclasses.replace(config.services[0], accept_proxy=False)
    table = parse(TableBuilder().build(dataclasses.replace(config, services=(off,))))
    assert table.services[0].proxy_from_count == 0 and table.proxy_from == ()


def count_of(table: Table | None, service_id: int) -> int:
    svc = table.service(service_id) if table is not None else None
    assert svc is not None
    return svc.proxy_from_count


def test_a_reload_changes_the_table_not_the_switch() -> None:
    dp = TimeoutRecorder()
    daemon = daemon_on('accept_proxy = true\naccept_proxy_from = ["10.0.0.0/8"]', "", dp)
    web = sid(daemon, "web")
    assert dp.calls == [(web, 5000)]
    assert count_of(daemon.builder.table, web) == 1
    dp.calls.clear()
    switch(daemon, 'accept_proxy = true\naccept_proxy_from = ["10.0.0.0/8", "::1"]', "")
    assert dp.calls == []  # the list travels in the table only
    assert count_of(daemon.builder.table, web) == 2


def test_status_shows_the_list_and_the_counter() -> None:
    assert display.tcp_options_text({"accept_proxy": True, "accept_proxy_timeout": 5.0,
                                     "accept_proxy_from": ["10.0.0.0/8", "192.0.2.7/32"]}) == \
        "accepts PROXY protocol (header within 5s, from 10.0.0.0/8, 192.0.2.7/32 only)"
    assert display.tcp_options_text({"accept_proxy": True, "accept_proxy_timeout": 5.0,
                                     "accept_proxy_from": None}) == \
        "accepts PROXY protocol (header within 5s)"
