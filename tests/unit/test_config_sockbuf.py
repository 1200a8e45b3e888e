"""The socket buffer service keys (`client_sndbuf`, `client_rcvbuf`, `backend_sndbuf`,
`backend_rcvbuf`): their type, range and where they apply, and how the daemon hands the backend
leg to the data plane on start and reload (with a fake data plane). No sockets here; the kernel's
side is tests/dataplane/test_sockbuf.py and tests/integration/test_sockbuf_daemon.py."""

from __future__ import annotations

from typing import Any

import pytest

from l4lb.config.model import Service
from l4lb.config.validate import SOCKBUF_KEYS

from .test_config_congestion import (
    TCP,
    UDP,
    OldDataplane,
    daemon_on,
    errors,
    pure,
    sid,
    switch,
)


class BufferRecorder(OldDataplane):
    """A data plane with set_socket_buffers that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def set_socket_buffers(self, service_id: int, sndbuf: int, rcvbuf: int) -> None:
        self.calls.append((service_id, sndbuf, rcvbuf))


def test_unset_is_the_kernel_default() -> None:
    service = pure(TCP.format(keys="")).services[0]
    assert (service.client_sndbuf, service.client_rcvbuf, service.backend_sndbuf,
            service.backend_rcvbuf) == (0, 0, 0, 0)
    model = Service(name="s", protocol="tcp", listen=(), backends=())
    assert (model.client_sndbuf, model.client_rcvbuf, model.backend_sndbuf,
            model.backend_rcvbuf) == (0, 0, 0, 0)


def test_each_key_sets_its_own_field() -> None:
    keys = ("client_sndbuf = 4096\nclient_rcvbuf = 65536\nbackend_sndbuf = 1073741823\n"
            "backend_rcvbuf = 0")
    service = pure(TCP.format(keys=keys)).services[0]
    assert (service.client_sndbuf, service.client_rcvbuf, service.backend_sndbuf,
            service.backend_rcvbuf) == (4096, 65536, 1073741823, 0)


@pytest.mark.parametrize("key", SOCKBUF_KEYS)
@pytest.mark.parametrize("value", ["1", "4095", "-1", "1073741824", "2147483648"])
def test_sizes_out_of_range_are_reported_at_the_value(key: str, value: str) -> None:
    column = len(key) + 4
    assert errors(TCP.format(keys=f"{key} = {value}"), host=None) == [
        f't.toml:4:{column}: error: services[0] ("web"): {key}: {value} out of range (0 for the '
        "kernel's autotuning, or 4096..1073741823 bytes)"]


def test_a_size_must_be_an_integer() -> None:
    keys = 'client_sndbuf = "64k"\nclient_rcvbuf = "65536"\nbackend_sndbuf = 65536.0\n' \
           "backend_rcvbuf = true"
    assert errors(TCP.format(keys=keys), host=None) == [
        't.toml:4:17: error: services[0] ("web"): client_sndbuf: expected an integer, found a '
        'string ("64k")',
        't.toml:5:17: error: services[0] ("web"): client_rcvbuf: expected an integer, found a '
        'string ("65536"); write 65536 without quotes',
        't.toml:6:18: error: services[0] ("web"): backend_sndbuf: expected an integer, found a '
        "float (65536.0)",
        't.toml:7:18: error: services[0] ("web"): backend_rcvbuf: expected an integer, found a '
        "boolean (true)"]


def test_udp_services_refuse_every_key() -> None:
    keys = "\n".join(f"{key} = 65536" for key in SOCKBUF_KEYS)
    assert errors(UDP.format(keys=keys), host=None) == [
        f't.toml:{5 + i}:{len(key) + 4}: error: services[0] ("dns"): {key}: applies to '
        'protocol = "tcp" only' for i, key in enumerate(SOCKBUF_KEYS)]


def test_all_problems_at_once_with_other_keys() -> None:
    keys = "client_sndbuf = 100\nretries = 99\nbackend_rcvbuf = -5"
    assert errors(TCP.format(keys=keys), host=None) == [
        't.toml:4:17: error: services[0] ("web"): client_sndbuf: 100 out of range (0 for the '
        "kernel's autotuning, or 4096..1073741823 bytes)",
        't.toml:5:11: error: services[0] ("web"): retries: 99 out of range (0..16)',
        't.toml:6:18: error: services[0] ("web"): backend_rcvbuf: -5 out of range (0 for the '
        "kernel's autotuning, or 4096..1073741823 bytes)"]


# ---- the daemon's backend leg, against a fake data plane -----------------------------------

BOTH = "backend_sndbuf = 65536\nbackend_rcvbuf = 131072"
CLIENT_ONLY = "client_sndbuf = 65536"


def test_daemon_default_path_makes_no_call() -> None:
    dp = BufferRecorder()
    daemon = daemon_on(CLIENT_ONLY, "", dp)  # the client leg is not the data plane's
    daemon._publish()
    assert dp.calls == []


def test_daemon_sets_changes_and_clears_the_backend_leg() -> None:
    dp = BufferRecorder()
    daemon = daemon_on(BOTH, "backend_rcvbuf = 8192", dp)
    web, api = sid(daemon, "web"), sid(daemon, "api")
    assert sorted(dp.calls) == sorted([(web, 65536, 131072), (api, 0, 8192)])
    dp.calls.clear()
    daemon._publish()  # health changes re-publish: nothing to do
    assert dp.calls == []
    switch(daemon, "backend_sndbuf = 4096", "")
    assert sorted(dp.calls) == sorted([(api, 0, 0), (web, 4096, 0)])
    dp.calls.clear()
    switch(daemon, "", "")
    assert dp.calls == [(web, 0, 0)]
    assert daemon.sockbuf_backend == {}


def test_daemon_reports_a_data_plane_without_it(caplog: pytest.LogCaptureFixture) -> None:
    daemon = daemon_on("", "", OldDataplane())
    assert daemon.cc_problems == []
    switch(daemon, BOTH, "")
    assert any("socket buffers" in p for p in daemon.cc_problems)
    assert "cannot set backend socket buffers" in caplog.text


def test_daemon_logs_a_refused_size_and_leaves_autotuning(
        caplog: pytest.LogCaptureFixture) -> None:
    class Refusing(BufferRecorder):
        def set_socket_buffers(self, service_id: int, sndbuf: int, rcvbuf: int) -> None:
            if sndbuf or rcvbuf:
                raise OSError(1, "Operation not permitted")
            super().set_socket_buffers(service_id, sndbuf, rcvbuf)

    dp: Any = Refusing()
    daemon = daemon_on("", "", dp)
    switch(daemon, BOTH, "")
    web = sid(daemon, "web")
    assert daemon.cc_problems == [
        "service web: backend socket buffers 65536/131072: Operation not permitted"]
    assert "its backend connections use the kernel's buffers" in caplog.text
    assert dp.calls == [(web, 0, 0)]
    assert daemon.sockbuf_backend == {}
