"""The `l4lb` entry point: `l4lb run` ignores SIGHUP, SIGUSR1 and SIGUSR2 from before the CLI
is imported (the slow part of start-up), other commands keep the default actions."""

from __future__ import annotations

import signal
import sys
import types
from collections.abc import Iterator

import pytest

from l4lb import entry

SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@pytest.mark.parametrize(("argv", "name"), [
    (["run", "-c", "x.toml"], "run"),
    (["--log-level", "debug", "run", "-c", "x.toml"], "run"),
    (["--log-format", "json", "--log-level", "info", "run"], "run"),
    (["-V"], None),
    ([], None),
    (["status", "-c", "run"], "status"),
    (["--log-level", "run", "status"], "status"),  # "run" is the option's value here
])
def test_command_skips_the_group_options(argv: list[str], name: str | None) -> None:
    assert entry.command(argv) == name


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, object]]:
    """Stand in for l4lb.cli: its main() records the signal handlers it finds."""
    seen: dict[int, object] = {}
    module = types.ModuleType("l4lb.cli")
    module.main = lambda: seen.update({s: signal.getsignal(s) for s in SIGNALS})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "l4lb.cli", module)
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    yield seen
    for s, handler in saved.items():
        signal.signal(s, handler)  # type: ignore[arg-type]


def test_run_ignores_the_reload_signals_before_the_cli_is_imported(
        fake_cli: dict[int, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["l4lb", "run", "-c", "x.toml"])
    entry.main()
    assert fake_cli == dict.fromkeys(SIGNALS, signal.SIG_IGN)


def test_other_commands_keep_the_default_actions(fake_cli: dict[int, object],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    monkeypatch.setattr(sys, "argv", ["l4lb", "top", "-c", "x.toml"])
    entry.main()
    assert fake_cli == dict.fromkeys(SIGNALS, signal.SIG_DFL)
