"""conf/l4lb.service: systemd accepts it, and what it says matches the CLI (exit codes, reload)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from l4lb import daemon

UNIT = Path(__file__).resolve().parents[2] / "conf" / "l4lb.service"


def service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_the_unit_reloads_through_the_cli_and_never_restarts_a_config_error() -> None:
    service = service_section()
    assert service["ExecReload"].split()[1:3] == ["reload", "-c"]
    assert service["ExecStart"].split()[1:3] == ["run", "-c"]
    assert service["ExecStart"].split()[-1] == service["ExecReload"].split()[-1]
    codes = {int(c) for c in service["RestartPreventExitStatus"].split()}
    assert codes == {daemon.EXIT_CONFIG, daemon.EXIT_USAGE, daemon.EXIT_DATAPLANE}
    assert daemon.EXIT_LISTEN not in codes  # an address in use may be free after a restart
    stop = service["TimeoutStopSec"]
    assert stop.endswith("s") and int(stop[:-1]) > 30  # above the default shutdown_timeout


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "l4lb.service"  # the binary need not exist for the syntax check
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/l4lb", "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if str(unit) in line or "l4lb.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
