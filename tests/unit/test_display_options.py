"""`l4lb status` names a service's socket options that differ from the defaults (TCP and UDP)."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.display import status_text, tcp_options_text, udp_options_text

DEFAULTS = {"congestion_control": None, "backend_congestion_control": None,
            "backend_fast_open": False, "defer_accept": False}


@pytest.mark.parametrize(("changes", "text"), [
    ({}, ""),
    ({"congestion_control": "cubic", "backend_congestion_control": "cubic"},
     "congestion control cubic (clients), cubic (backends)"),
    ({"backend_congestion_control": "bbr"}, "congestion control bbr (backends)"),
    ({"backend_fast_open": True, "defer_accept": True}, "backend fast open; defer accept"),
    ({"proxy_protocol": "off"}, ""),
    ({"backend_fast_open": True, "proxy_protocol": "v2"}, "backend fast open; PROXY protocol v2"),
    ({"congestion_control": "reno", "backend_congestion_control": "reno", "defer_accept": True},
     "congestion control reno (clients), reno (backends); defer accept"),
])
def test_options_text(changes: dict[str, Any], text: str) -> None:
    assert tcp_options_text({**DEFAULTS, **changes}) == text


@pytest.mark.parametrize(("changes", "text"), [
    ({"client_sndbuf": 0, "client_rcvbuf": 0, "backend_sndbuf": 0, "backend_rcvbuf": 0,
      "listener_sndbuf_applied": None, "listener_rcvbuf_applied": None,
      "listeners_keep_sockbuf": False, "backend_sockbuf_errors": 0}, ""),
    ({"client_sndbuf": 65536, "listener_sndbuf_applied": 131072},
     "client buffers snd 65536 (kernel 131072)"),
    ({"client_rcvbuf": 8192000, "listener_rcvbuf_applied": 8388608, "backend_sndbuf": 4096},
     "client buffers rcv 8192000 (kernel 8388608); backend buffers snd 4096"),
    ({"client_sndbuf": 0, "listener_sndbuf_applied": 131072, "listeners_keep_sockbuf": True},
     "client buffers snd kept (kernel 131072); listeners keep a removed buffer size until "
     "a restart"),
    ({"backend_rcvbuf": 65536, "backend_sockbuf_errors": 3},
     "backend buffers rcv 65536; 3 backend buffer refusals"),
])
def test_buffer_options_text(changes: dict[str, Any], text: str) -> None:
    assert tcp_options_text({**DEFAULTS, **changes}) == text


def status(options: dict[str, Any] | None) -> dict[str, Any]:
    svc: dict[str, Any] = {"name": "web", "protocol": "tcp", "scheduler": "round_robin",
                           "listen": ["127.0.0.1:80"], "counters": {}, "backends": [],
                           "differences_from_file": {}}
    if options is not None:
        svc["tcp_options"] = options
    return {"version": "0", "pid": 1, "workers": 1, "config": "c.toml",
            "table": {"generation": 1, "digest": "d"}, "services": [svc], "vrrp": []}


def test_status_shows_the_line_only_when_something_is_set() -> None:
    on = status_text(status({**DEFAULTS, "backend_fast_open": True}))
    assert "\n  options: backend fast open\n" in on
    assert "options:" not in status_text(status(DEFAULTS))
    assert "options:" not in status_text(status(None))  # a daemon that does not send them


@pytest.mark.parametrize(("options", "text"), [
    ({"udp_gro": True, "gro_in_effect": True}, ""),
    ({"udp_gro": False, "gro_in_effect": False}, "no GRO buffers (udp_gro = false)"),
    ({"udp_gro": True, "gro_in_effect": False},
     "no GRO buffers (this data plane or kernel reads datagram by datagram)"),
    ({"udp_gro": False, "listeners_keep_gro": True, "gro_in_effect": False},
     "no GRO buffers for new flows (udp_gro = false); the open listeners keep them until a "
     "restart"),
    ({}, ""),  # a daemon that does not send them
])
def test_udp_options_text(options: dict[str, Any], text: str) -> None:
    assert udp_options_text(options) == text


def test_status_shows_a_udp_service_without_gro() -> None:
    doc = status(None)
    doc["services"][0].update(protocol="udp", udp_options={"udp_gro": False,
                                                            "gro_in_effect": False})
    assert "\n  options: no GRO buffers (udp_gro = false)\n" in status_text(doc)
    doc["services"][0]["udp_options"] = {"udp_gro": True, "gro_in_effect": True}
    assert "options:" not in status_text(doc)


def test_status_names_accept_errors_only_when_there_are_some() -> None:
    quiet = status(None)
    assert "accept errors" not in status_text(quiet)
    quiet["services"][0]["counters"] = {"accept_errors": 7, "conns_total": 3}
    assert "3 total, 0 rejected, 0 without backend, 7 accept errors (out of fds?)" \
        in status_text(quiet)


def _svc(service: str | None, *backends: str | None) -> dict[str, Any]:
    return {"source": service,
            "backends": [{"address": f"10.0.1.{i}:80", "source": b}
                         for i, b in enumerate(backends, 1)]}


@pytest.mark.parametrize(("svc", "text"), [
    (_svc(None, None, None), ""),
    ({"backends": [{"address": "10.0.1.1:80"}]}, ""),  # a daemon that does not send them
    (_svc("10.0.0.5", "10.0.0.5", "10.0.0.5"), "source address: 10.0.0.5"),
    (_svc("10.0.0.5", "10.0.0.5", "10.0.0.6"),
     "source address: 10.0.0.5; 10.0.1.2:80 from 10.0.0.6"),
    (_svc(None, None, "10.0.0.6"),
     "source address: the kernel's choice; 10.0.1.2:80 from 10.0.0.6"),
])
def test_source_text(svc: dict[str, Any], text: str) -> None:
    from l4lb.display import source_text

    assert source_text(svc) == text
