"""The `congestion_control` and `backend_congestion_control` service keys: their form, where they
apply, how the host check is wired into the loader (with a fake host), and how the daemon hands
the backend leg to the data plane (with a fake data plane). No sockets here."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.config.model import Service
from l4lb.daemon import Daemon
from l4lb.dataplane import congestion_control_name_ok
from l4lb.state import Runtime

from .fakehost import FakeHost

TCP = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9001"
"""
UDP = """\
[[services]]
name = "dns"
protocol = "udp"
listen = ["127.0.0.1:5353"]
{keys}
  [[services.backends]]
  address = "127.0.0.1:9053"
"""


def pure(text: str) -> Any:
    """Load without host checks (no file system, no sockets)."""
    return load_text(text, "t.toml", host=None)


def errors(text: str, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", **kw)
    return [str(d) for d in info.value.diagnostics]


@pytest.fixture
def fake_host() -> FakeHost:
    """A host that has cubic, bbr and dctcp, and lets this process use cubic and bbr only."""
    return FakeHost(
        cc={"cubic": 0, "bbr": 0, "dctcp": errno.EPERM},
        sysctls={"tcp_available_congestion_control": ["reno", "cubic", "bbr", "dctcp"],
                 "tcp_allowed_congestion_control": ["reno", "bbr"]})


def test_unset_is_the_system_default() -> None:
    service = pure(TCP.format(keys="")).services[0]
    assert service.congestion_control is None
    assert service.backend_congestion_control is None
    assert service.client_congestion_control is None
    assert service.backend_leg_congestion_control is None


def test_one_key_sets_both_legs() -> None:
    service = pure(TCP.format(keys='congestion_control = "cubic"')).services[0]
    assert service.client_congestion_control == "cubic"
    assert service.backend_leg_congestion_control == "cubic"


def test_backend_key_overrides_the_backend_leg_only() -> None:
    keys = 'congestion_control = "bbr"\nbackend_congestion_control = "cubic"'
    service = pure(TCP.format(keys=keys)).services[0]
    assert (service.client_congestion_control, service.backend_leg_congestion_control) == (
        "bbr", "cubic")
    service = pure(TCP.format(keys='backend_congestion_control = "cubic"')).services[0]
    assert (service.client_congestion_control, service.backend_leg_congestion_control) == (
        None, "cubic")


@pytest.mark.parametrize("value", ["", "x" * 16, "cu bic", "cubic;", "é"])
def test_malformed_names_are_reported_at_the_value(value: str) -> None:
    text = TCP.format(keys=f'congestion_control = "{value}"')
    assert errors(text, host=None) == [
        f't.toml:4:22: error: services[0] ("web"): congestion_control: "{value}" is not a '
        "congestion control name: use 1 to 15 characters of A-Z a-z 0-9 _ - (for example "
        '"cubic" or "bbr")']


def test_a_name_must_be_a_string() -> None:
    assert errors(TCP.format(keys="backend_congestion_control = 3"), host=None) == [
        't.toml:4:30: error: services[0] ("web"): backend_congestion_control: expected a '
        "string, found an integer (3)"]


def test_udp_services_refuse_both_keys(fake_host: FakeHost) -> None:
    keys = 'congestion_control = "cubic"\nbackend_congestion_control = "nosuch"'
    assert errors(UDP.format(keys=keys), host=fake_host) == [
        't.toml:5:22: error: services[0] ("dns"): congestion_control: applies to protocol = '
        '"tcp" only',
        't.toml:6:30: error: services[0] ("dns"): backend_congestion_control: applies to '
        'protocol = "tcp" only']
    assert fake_host.asked == []  # no host check for a key that does not apply


def test_host_check_reports_unknown_and_forbidden_names(fake_host: FakeHost) -> None:
    keys = 'congestion_control = "cubc"\nbackend_congestion_control = "dctcp"'
    assert errors(TCP.format(keys=keys), host=fake_host) == [
        't.toml:4:22: error: services[0] ("web"): congestion_control: "cubc" is not a '
        "congestion control algorithm of this kernel (net.ipv4.tcp_available_congestion_control:"
        ' reno cubic bbr dctcp); did you mean "cubic"?',
        't.toml:5:30: error: services[0] ("web"): backend_congestion_control: "dctcp" is not '
        "allowed for this process: without CAP_NET_ADMIN only "
        "net.ipv4.tcp_allowed_congestion_control may be used (reno bbr); run l4lb as root (or "
        "with CAP_NET_ADMIN), or add dctcp to that sysctl"]


def test_host_check_runs_once_per_name_and_only_with_host_checks(fake_host: FakeHost) -> None:
    text = TCP.format(keys='congestion_control = "cubic"\nbackend_congestion_control = "cubic"')
    assert load_text(text, "t.toml", host=fake_host).services[0].congestion_control == "cubic"
    assert fake_host.asked == ["cc cubic"]
    pure(TCP.format(keys='congestion_control = "nosuch"'))  # without a host nobody is asked


def test_name_form() -> None:
    assert congestion_control_name_ok("cubic")
    assert congestion_control_name_ok("tcp-nv_2")
    assert congestion_control_name_ok("x" * 15)
    assert not congestion_control_name_ok("x" * 16)
    assert not congestion_control_name_ok("")
    assert not congestion_control_name_ok("cubic\n")


# ---- the daemon's backend leg, against a fake data plane -----------------------------------


class FakeDataplane:
    """publish() and set_congestion_control(), recording every call."""

    def __init__(self) -> None:
        self.generation = 0
        self.calls: list[tuple[int, str | None]] = []
        self.refuse: set[str] = set()  # names that fail like a vanished module

    def publish(self, blob: bytes) -> int:
        self.generation += 1
        return self.generation

    def set_congestion_control(self, service_id: int, name: str | None) -> None:
        if name in self.refuse:
            raise FileNotFoundError(2, f"congestion control {name!r} is not available")
        self.calls.append((service_id, name))

    def stop(self, timeout: float) -> None:
        pass


class OldDataplane:
    """A data plane with publish() and stop() only: none of the per-service switches."""

    def publish(self, blob: bytes) -> int:
        return 1

    def stop(self, timeout: float) -> None:
        pass


class SwitchRecorder(OldDataplane):
    """A data plane with one per-service switch, `method(service_id, on)`, that records every
    call (set_fast_open, set_udp_gro)."""

    def __init__(self, method: str) -> None:
        self.calls: list[tuple[int, bool]] = []
        setattr(self, method, self._record)

    def _record(self, service_id: int, on: bool) -> None:
        self.calls.append((service_id, on))


TWO = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8080"]
{web}
  [[services.backends]]
  address = "127.0.0.1:9001"

[[services]]
name = "api"
listen = ["127.0.0.1:8081"]
{api}
  [[services.backends]]
  address = "127.0.0.1:9002"
"""


def daemon_on(web: str, api: str, dp: Any) -> Daemon:
    """A daemon with the two services of TWO whose data plane is `dp` (a fake), after its
    first publish."""
    daemon = Daemon(pure(TWO.format(web=web, api=api)))
    daemon.dp = dp
    daemon.file_config = daemon.config
    daemon.runtime = Runtime.from_config(daemon.config)
    daemon._publish()
    return daemon


def daemon_with(web: str, api: str) -> tuple[Daemon, FakeDataplane]:
    dp = FakeDataplane()
    return daemon_on(web, api, dp), dp


def switch(daemon: Daemon, web: str, api: str) -> None:
    """What a reload does to the data plane's side: new config, new table."""
    daemon.config = pure(TWO.format(web=web, api=api))
    daemon.runtime = Runtime.from_config(daemon.config, previous=daemon.runtime)
    daemon._publish()


def sid(daemon: Daemon, name: str) -> int:
    return daemon.builder.service_ids()[name]


def test_daemon_default_path_makes_no_call() -> None:
    daemon, dp = daemon_with("", "")
    daemon._publish()
    assert dp.calls == []


def test_daemon_sets_changes_and_clears_the_backend_leg() -> None:
    daemon, dp = daemon_with('congestion_control = "cubic"',
                             'backend_congestion_control = "bbr"')
    web, api = sid(daemon, "web"), sid(daemon, "api")
    assert sorted(dp.calls) == sorted([(web, "cubic"), (api, "bbr")])
    dp.calls.clear()
    daemon._publish()  # health changes re-publish: nothing to do
    assert dp.calls == []
    switch(daemon, 'congestion_control = "cubic"\nbackend_congestion_control = "bbr"', "")
    assert sorted(dp.calls) == sorted([(api, None), (web, "bbr")])
    dp.calls.clear()
    switch(daemon, "", "")
    assert dp.calls == [(web, None)]
    assert daemon.cc_backend == {}


def test_daemon_logs_a_refused_name_and_leaves_the_default(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon, dp = daemon_with("", "")
    dp.refuse.add("cubic")
    switch(daemon, 'congestion_control = "cubic"', "")
    assert daemon.cc_problems and "service web" in daemon.cc_problems[0]
    assert "system default" in caplog.text
    assert dp.calls == [(sid(daemon, "web"), None)]
    assert daemon.cc_backend == {}


def test_service_model_defaults() -> None:
    service = Service(name="s", protocol="tcp", listen=(), backends=())
    assert service.backend_leg_congestion_control is None
