"""The `udp_gro` service key: its default, type and where it applies, and how the daemon hands
it to the data plane on start and reload (with a fake data plane). No sockets here; the relay's
side is tests/dataplane/test_udp_gro.py."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config.model import Service

from .test_config_congestion import (
    TCP,
    UDP,
    OldDataplane,
    SwitchRecorder,
    daemon_on,
    errors,
    pure,
    sid,
    switch,
)

UDP_ON = 'protocol = "udp"'
UDP_OFF = 'protocol = "udp"\nudp_gro = false'


def test_on_by_default_and_off_when_asked() -> None:
    assert pure(UDP.format(keys="")).services[0].udp_gro is True
    assert Service(name="s", protocol="udp", listen=(), backends=()).udp_gro is True
    assert pure(UDP.format(keys="udp_gro = false")).services[0].udp_gro is False
    assert pure(UDP.format(keys="udp_gro = true")).services[0].udp_gro is True


def test_a_tcp_service_rejects_it() -> None:
    assert errors(TCP.format(keys="udp_gro = false"), host=None) == [
        't.toml:4:11: error: services[0] ("web"): udp_gro: applies to protocol = "udp" only']


def test_must_be_a_boolean() -> None:
    assert errors(UDP.format(keys="udp_gro = 0"), host=None) == [
        't.toml:5:11: error: services[0] ("dns"): udp_gro: expected a boolean, found an '
        'integer (0)']


def test_daemon_default_path_makes_no_call() -> None:
    """GRO is the data plane's default: a UDP service without the key costs no call."""
    dp = SwitchRecorder("set_udp_gro")
    daemon = daemon_on(UDP_ON, UDP_ON, dp)
    daemon._publish()
    assert dp.calls == []


def test_daemon_turns_it_off_and_on_across_reloads() -> None:
    dp = SwitchRecorder("set_udp_gro")
    daemon = daemon_on(UDP_OFF, UDP_ON, dp)
    web = sid(daemon, "web")
    assert dp.calls == [(web, False)]
    dp.calls.clear()
    daemon._publish()  # health changes re-publish: nothing to do
    assert dp.calls == []
    switch(daemon, UDP_ON, UDP_OFF)
    api = sid(daemon, "api")
    assert sorted(dp.calls) == sorted([(web, True), (api, False)])
    dp.calls.clear()
    switch(daemon, UDP_ON, UDP_ON)
    assert dp.calls == [(api, True)]
    assert daemon.udp_gro_off == set()


def test_daemon_follows_a_service_whose_id_moves() -> None:
    dp = SwitchRecorder("set_udp_gro")
    daemon = daemon_on(UDP_OFF, UDP_OFF, dp)
    assert sorted(dp.calls) == sorted([(sid(daemon, "web"), False), (sid(daemon, "api"), False)])
    dp.calls.clear()
    switch(daemon, UDP_OFF, "")  # api turns TCP: its id must get GRO back
    assert daemon.udp_gro_off == {sid(daemon, "web")}
    assert all(on is True for _, on in dp.calls)


def test_daemon_reports_a_data_plane_without_it(caplog: pytest.LogCaptureFixture) -> None:
    daemon = daemon_on(UDP_ON, "", OldDataplane())
    assert daemon.cc_problems == []
    switch(daemon, UDP_OFF, "")
    assert any("GRO" in p for p in daemon.cc_problems)
    assert "GRO" in caplog.text


def test_both_data_planes_take_the_switch() -> None:
    """The C module keeps it per service id (and reports it only where the kernel has GRO);
    the reference accepts it and never reads GRO buffers."""
    from l4lb.refdp import Dataplane as RefDataplane

    planes: list[Any] = [RefDataplane(1)]
    try:
        from l4lb._dataplane import Dataplane as CDataplane
        from l4lb._dataplane import _udp_gro_supported
    except ImportError:
        gro = False
    else:
        planes.append(CDataplane(1))
        gro = _udp_gro_supported()
    for dp in planes:
        c = type(dp).__module__.startswith("l4lb._")
        assert dp.udp_gro(7) is (gro and c)
        dp.set_udp_gro(7, False)
        assert dp.udp_gro(7) is False
        assert dp.udp_gro(8) is (gro and c)
        dp.set_udp_gro(7, True)
        assert dp.udp_gro(7) is (gro and c)
        with pytest.raises(ValueError):
            dp.set_udp_gro(1024, True)
        with pytest.raises(TypeError):
            dp.set_udp_gro(7, 1)
