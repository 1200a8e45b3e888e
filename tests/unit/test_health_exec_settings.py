"""`kind = "exec"` without running anything: the settings' rules, the config keys (command,
command_user) with a stand-in host, the command a probe is built from (argv, environment,
user) and the reasons of exit statuses."""

from __future__ import annotations

import pwd

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.health import HealthSettings, HealthSettingsError, ProbeSpec
from l4lb.health.execprobe import EXEC_PATH, REASON_CHARS, exit_verdict, first_line

from .fakehost import FakeHost

SERVICE = """\
[[services]]
name = "web"
protocol = "{protocol}"
listen = ["127.0.0.1:8080"]
backends = [{{ address = "127.0.0.1:9001" }}]

  [services.health]
{health}"""


def config(health: str, protocol: str = "tcp") -> str:
    return SERVICE.format(health=health, protocol=protocol)


def host() -> FakeHost:
    return FakeHost(programs={"/usr/local/bin/check-web": None,
                              "/usr/local/bin/not-x": "is not executable (chmod +x)"},
                    users={"nobody": (65534, 65534)})


def problems(text: str, fake: FakeHost | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "t.toml", host=fake if fake is not None else host())
    return [str(d) for d in info.value.diagnostics]


def health_of(text: str, fake: FakeHost | None = None) -> HealthSettings:
    [service] = load_text(text, "t.toml", host=fake if fake is not None else host()).services
    assert service.health is not None
    return service.health


# -- settings -------------------------------------------------------------------------------


def test_exec_needs_an_absolute_command() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="exec")
    assert info.value.problems == [
        'health.command: kind "exec" needs a command: an argv list such as '
        '["/usr/local/bin/check", "--deep"]']
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="exec", command=("check",))
    assert info.value.problems == [
        'health.command: "check" must be an absolute path (the command runs without a shell '
        "and without the daemon's PATH)"]
    settings = HealthSettings(kind="exec", command=("/bin/true", "a b"), command_user="nobody")
    assert settings.command == ("/bin/true", "a b")


def test_command_keys_belong_to_exec_and_sockets_do_not() -> None:
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="tcp", command=("/bin/true",), command_user="nobody")
    assert info.value.problems == ['health.command: applies to kind "exec" only',
                                   'health.command_user: applies to kind "exec" only']
    with pytest.raises(HealthSettingsError) as info:
        HealthSettings(kind="exec", command=("/bin/true",), source="127.0.0.1",
                       command_user="")
    assert info.value.problems == [
        'health.command_user: "" is not a user name',
        'health.source: kind "exec" opens no socket of its own (the command decides where it '
        "connects from)"]


# -- config ---------------------------------------------------------------------------------


def test_config_reads_command_user_and_the_service() -> None:
    text = config('  kind = "exec"\n  command = ["/usr/local/bin/check-web", "--deep"]\n'
                  '  command_user = "nobody"\n  timeout = "2s"\n  port = 8443\n')
    fake = host()
    settings = health_of(text, fake)
    assert settings.kind == "exec"
    assert settings.command == ("/usr/local/bin/check-web", "--deep")
    assert settings.command_user == "nobody"
    assert (settings.service, settings.protocol, settings.timeout, settings.port) == \
        ("web", "tcp", 2.0, 8443)
    assert "program /usr/local/bin/check-web" in fake.asked and "user nobody" in fake.asked


def test_a_udp_service_may_use_a_command_without_a_port() -> None:
    settings = health_of(config('  kind = "exec"\n  command = ["/usr/local/bin/check-web"]\n',
                                protocol="udp"))
    assert (settings.kind, settings.protocol, settings.port) == ("exec", "udp", None)


def test_config_refuses_a_string_a_missing_program_and_an_unknown_user() -> None:
    assert problems(config('  kind = "exec"\n  command = "/usr/local/bin/check-web --deep"\n'
                           '  command_user = "nobody2"\n')) == [
        't.toml:9:13: error: services[0] ("web"): health.command: expected an array of strings '
        '(an argv list; no shell runs it), found a string ("/usr/local/bin/check-web --deep"); '
        'write ["/usr/local/bin/check-web", "--deep"]',
        't.toml:10:18: error: services[0] ("web"): health.command_user: no user "nobody2" on '
        "this host"]
    assert problems(config('  kind = "exec"\n  command = ["/usr/local/bin/gone"]\n')) == [
        't.toml:9:14: error: services[0] ("web"): health.command[0]: "/usr/local/bin/gone" '
        "cannot be run: no such file or directory"]
    assert problems(config('  kind = "exec"\n  command = ["/usr/local/bin/not-x"]\n')) == [
        't.toml:9:14: error: services[0] ("web"): health.command[0]: "/usr/local/bin/not-x" '
        "is not executable (chmod +x)"]
    assert problems(config('  kind = "exec"\n  command = []\n')) == [
        't.toml:9:13: error: services[0] ("web"): health.command: kind "exec" needs a command: '
        'an argv list such as ["/usr/local/bin/check", "--deep"]']
    assert problems(config('  kind = "exec"\n')) == [
        't.toml:8:10: error: services[0] ("web"): health.command: kind "exec" needs a command: '
        'an argv list such as ["/usr/local/bin/check", "--deep"]']


def test_without_host_checks_nothing_is_asked() -> None:
    [service] = load_text(config('  kind = "exec"\n  command = ["/usr/local/bin/gone"]\n'
                                 '  command_user = "nobody2"\n'), "t.toml", host=None).services
    assert service.health is not None and service.health.command_user == "nobody2"


def test_this_host_answers_for_real_files_and_users(tmp_path: object) -> None:
    from l4lb.config.host import THIS_HOST
    assert THIS_HOST.program_problem("/bin/sh") is None
    assert THIS_HOST.program_problem("/etc/passwd") == "is not executable (chmod +x)"
    assert THIS_HOST.program_problem("/") == "is a directory"
    assert THIS_HOST.program_problem("/dev/null") == "is not a regular file"
    assert THIS_HOST.program_problem("/nonexistent/x") == "no such file or directory"
    nobody = pwd.getpwnam("nobody")
    assert THIS_HOST.user_ids("nobody") == (nobody.pw_uid, nobody.pw_gid)
    assert THIS_HOST.user_ids("no-such-user-l4lb") is None


# -- the command ----------------------------------------------------------------------------


def test_spec_carries_argv_environment_and_user() -> None:
    settings = HealthSettings(kind="exec", command=("/bin/check", "--deep"),
                              command_user="nobody", service="web", protocol="udp", port=53)
    spec = ProbeSpec.build("2001:db8::5", 5353, settings)
    command = spec.command
    assert command is not None and not spec.connect_only
    assert command.argv == ("/bin/check", "--deep")
    assert dict(command.env) == {
        "PATH": EXEC_PATH, "L4LB_SERVICE": "web", "L4LB_PROTOCOL": "udp",
        "L4LB_BACKEND": "[2001:db8::5]:5353", "L4LB_BACKEND_ADDRESS": "2001:db8::5",
        "L4LB_BACKEND_PORT": "53"}
    nobody = pwd.getpwnam("nobody")
    assert (command.uid, command.gid) == (nobody.pw_uid, nobody.pw_gid)
    own = ProbeSpec.build("10.0.1.5", 8443, HealthSettings(kind="exec", command=("/bin/x",)))
    assert own.command is not None and (own.command.uid, own.command.gid) == (None, None)
    assert dict(own.command.env)["L4LB_BACKEND"] == "10.0.1.5:8443"
    assert dict(own.command.env)["L4LB_BACKEND_PORT"] == "8443"
    with pytest.raises(ValueError, match="no user 'no-such-user-l4lb'"):
        ProbeSpec.build("10.0.1.5", 1, HealthSettings(kind="exec", command=("/bin/x",),
                                                      command_user="no-such-user-l4lb"))


def test_reasons() -> None:
    assert exit_verdict(0, b"whatever\n") == (True, "exit status 0")
    assert exit_verdict(2, b"\n  \n  db unreachable  \nmore\n") == \
        (False, "exit status 2: db unreachable")
    assert exit_verdict(1, b"") == (False, "exit status 1")
    assert exit_verdict(1, b" \n\t\n") == (False, "exit status 1")
    assert exit_verdict(-11, b"core") == (False, "killed by signal SIGSEGV")
    assert exit_verdict(-9, b"") == (False, "killed by signal SIGKILL")
    assert first_line(b"x" * 500) == "x" * REASON_CHARS
    assert first_line(b"bad\x1b[31mred\xff") == "bad?[31mred\ufffd"
