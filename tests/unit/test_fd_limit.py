"""`l4lb run` raises its soft RLIMIT_NOFILE to the hard limit (a systemd default of 1024 is
about 170 busy TCP sessions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
from l4lb.daemon import raise_fd_limit
got = raise_fd_limit()
now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
want = hard if hard != resource.RLIM_INFINITY else 1 << 20
print(got, now, want)
"""


def test_raise_fd_limit_takes_the_hard_limit() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=30, cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr
    got, now, want = (int(x) for x in done.stdout.split())
    assert got == now == want > 256, done.stdout
