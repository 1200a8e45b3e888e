"""The `l4lb` command's entry point: for `l4lb run`, ignore the signals an operator sends a
running daemon (SIGHUP reload, SIGUSR1 reopen, SIGUSR2 summary) before the heavy imports.

Importing the CLI and everything `run` needs takes most of a second. A SIGHUP or SIGUSR1 that
arrives in that window (a reload or logrotate that races a restart) would otherwise end the
process by its default action; systemd counts a death by SIGHUP as a clean exit and does not
restart it. `l4lb.cli.run` ignores them too, until serve() installs the real handlers, so this
module only closes the window before it. Other commands keep the default actions (an `l4lb top`
whose terminal goes away must end).
"""

from __future__ import annotations

import signal
import sys

# the group's options that take a value (l4lb.cli.cli): their value is not the command
_VALUED = ("--log-level", "--log-format")


def command(argv: list[str]) -> str | None:
    """The subcommand named in argv (without the program name), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def ignore_operator_signals() -> None:
    """Ignore SIGHUP, SIGUSR1 and SIGUSR2 until serve() installs the daemon's handlers."""
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


def main() -> None:
    """Console-script entry point (and `python -m l4lb`)."""
    if command(sys.argv[1:]) == "run":
        ignore_operator_signals()
    from l4lb.cli import main as cli_main  # the slow part

    cli_main()
