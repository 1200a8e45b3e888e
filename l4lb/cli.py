"""The `l4lb` command line: run, check, demo, version, and the control-socket clients (click)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from l4lb import __version__
from l4lb.config import Config, ConfigError, load_file
from l4lb.config.durations import parse_duration_ms
from l4lb.config.model import GlobalSettings
from l4lb.control import ControlError, request_with
from l4lb.daemon import EXIT_CONFIG
from l4lb.dataplane import DataplaneUnavailable, compiled_available, reference_requested
from l4lb.display import (
    BACKEND_HEADERS,
    backend_rows,
    countdown,
    human_bytes,
    status_text,
    table,
    vrrp_text,
)
from l4lb.logs import LEVELS, setup_logging
from l4lb.net.listen import ListenError
from l4lb.vrrp.instance import VrrpError

log = logging.getLogger("l4lb")

LEVEL_CHOICE = click.Choice(sorted(LEVELS))
FORMAT_CHOICE = click.Choice(["text", "json"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=LEVEL_CHOICE, default=None,
              help="Override [global] log_level (debug, info, warning, error).")
@click.option("--log-format", type=FORMAT_CHOICE, default=None,
              help="Override [global] log_format (text or json).")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """l4lb: a TCP and UDP load balancer with a C data plane and a Python control plane."""
    ctx.obj = {"log_level": log_level, "log_format": log_format}


def _load_or_exit(path: str) -> Config:
    try:
        return load_file(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        click.echo(f"{path}: error: cannot read configuration: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_CONFIG)


@cli.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Configuration file (TOML).")
def check(path: str) -> None:
    """Validate a configuration file; exit 0 when it is valid, 1 with every problem when not."""
    config = _load_or_exit(path)
    n_backends = sum(len(s.backends) for s in config.services)
    click.echo(f"{path}: ok ({len(config.services)} service(s), {n_backends} backend(s))")


@cli.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Configuration file (TOML).")
@click.pass_context
def run(ctx: click.Context, path: str) -> None:
    """Run the balancer in the foreground (logs to stderr). SIGTERM drains, SIGINT stops."""
    from l4lb.daemon import EXIT_DATAPLANE, EXIT_LISTEN, ConnLogError, Daemon, serve

    config = _load_or_exit(path)
    setup_logging(ctx.obj["log_level"] or config.global_.log_level,
                  ctx.obj["log_format"] or config.global_.log_format)
    daemon = Daemon(config)
    try:
        daemon.start()
    except DataplaneUnavailable as exc:
        click.echo(f"l4lb: error: {exc}", err=True)
        sys.exit(EXIT_DATAPLANE)
    except ListenError as exc:
        click.echo(f"l4lb: error: {exc.strerror}", err=True)
        sys.exit(EXIT_LISTEN)
    except ConnLogError as exc:
        click.echo(f"l4lb: error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if reference_requested():
        log.warning("daemon: running the pure-Python reference data plane "
                    "(L4LB_NO_EXTENSIONS is set): for tests, not for traffic")
    try:
        code = asyncio.run(serve(daemon, control_path=config.global_.control_socket))
    except VrrpError as exc:
        daemon.stop(0.0)
        click.echo(f"l4lb: error: {exc}", err=True)
        sys.exit(EXIT_LISTEN)
    except (ControlError, OSError) as exc:
        daemon.stop(0.0)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        click.echo(f"l4lb: error: control socket {config.global_.control_socket}: {reason}",
                   err=True)
        sys.exit(EXIT_LISTEN)
    sys.exit(code)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop by itself after this many seconds (default: run until Ctrl-C).")
@click.option("--show-config", is_flag=True, help="Print the embedded configuration first.")
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, duration: float | None,
         show_config: bool) -> None:
    """Three local backends behind a balancer on HOST:PORT, with live per-backend counts."""
    from l4lb.daemon import EXIT_DATAPLANE, EXIT_LISTEN
    from l4lb.demo import run_demo

    setup_logging(ctx.obj["log_level"] or "warning", ctx.obj["log_format"] or "text")
    try:
        code = asyncio.run(run_demo(host, port, duration, show_config))
    except DataplaneUnavailable as exc:
        click.echo(f"l4lb: error: {exc}", err=True)
        sys.exit(EXIT_DATAPLANE)
    except ListenError as exc:
        click.echo(f"l4lb: error: {exc.strerror} (try --port)", err=True)
        sys.exit(EXIT_LISTEN)
    except ConfigError as exc:  # the embedded config failed validation: a bug, say so plainly
        click.echo(f"l4lb: internal error: the demo configuration is invalid:\n{exc}", err=True)
        sys.exit(70)
    sys.exit(code)


@cli.command()
def version() -> None:
    """Print the version and which data plane this installation runs."""
    if reference_requested():
        plane = "pure-Python reference (L4LB_NO_EXTENSIONS is set)"
    elif compiled_available():
        from l4lb import _dataplane

        plane = f"compiled C ({_dataplane.__file__})"
    else:
        plane = "NOT BUILT (run `pip install .`)"
    click.echo(f"l4lb {__version__}\ndata plane: {plane}\npython: {sys.version.split()[0]}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="l4lb")


# ---- clients of the control socket (docs/control-api.md) ----

def _socket_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON result.")(fn)
    fn = click.option("--socket", "socket_path", type=click.Path(dir_okay=False), default=None,
                      help="Control socket path (default: [global] control_socket of -c FILE).")(fn)
    fn = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                      default=None, help="Configuration file whose control socket to use.")(fn)
    return fn


def _socket_of(config_path: str) -> str:
    """The control socket named by a configuration file, even when the file is invalid (the
    daemon, not the client, reports a bad file on `l4lb reload`)."""
    import re
    import tomllib

    try:
        return load_file(config_path).global_.control_socket
    except ConfigError:
        pass
    except OSError as exc:
        click.echo(f"{config_path}: error: cannot read configuration: {exc.strerror or exc}",
                   err=True)
        sys.exit(1)
    with open(config_path, "rb") as f:
        raw = f.read().decode("utf-8", "replace")
    try:
        value = tomllib.loads(raw).get("global", {}).get("control_socket")
    except tomllib.TOMLDecodeError:
        found = re.search(r'^\s*control_socket\s*=\s*"([^"]+)"', raw, re.MULTILINE)
        value = found.group(1) if found else None
    return value if isinstance(value, str) else GlobalSettings().control_socket


def _call(config_path: str | None, socket_path: str | None, cmd: str, **args: Any) -> Any:
    if socket_path is None:
        if config_path is None:
            socket_path = GlobalSettings().control_socket
        else:
            socket_path = _socket_of(config_path)
    try:
        return request_with(socket_path, cmd, args)
    except ControlError as exc:
        click.echo(f"l4lb: error: {exc}", err=True)
        sys.exit(1)


def _emit(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else text(result))


@cli.command()
@_socket_options
def status(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """Services, listeners, backends (state, weight, sessions, bytes), table generation/digest."""
    _emit(_call(config_path, socket_path, "status"), as_json, status_text)


@cli.command()
@click.argument("service")
@_socket_options
def backends(service: str, config_path: str | None, socket_path: str | None,
             as_json: bool) -> None:
    """Backends of SERVICE with state and counters."""
    _emit(_call(config_path, socket_path, "backends", service=service), as_json,
          lambda r: table(BACKEND_HEADERS, backend_rows(r)))


@cli.command()
@click.argument("service", required=False, default="")
@click.option("--backend", default="", help="Only sessions of this backend (address or name).")
@_socket_options
def sessions(service: str, backend: str, config_path: str | None, socket_path: str | None,
             as_json: bool) -> None:
    """Open sessions (of SERVICE, of one --backend)."""
    result = _call(config_path, socket_path, "sessions", service=service, backend=backend)
    _emit(result, as_json, lambda r: table(
        ("SERVICE", "CLIENT", "BACKEND", "STATE", "AGE", "TO-BACKEND", "TO-CLIENT"),
        [[s["service"], s["client"], s["backend"] or "-", s["state"],
          f"{max(0.0, time.time() - s['started']):.0f}s", human_bytes(s["bytes_to_backend"]),
          human_bytes(s["bytes_to_client"])] for s in r]))


@cli.command()
@click.argument("service", required=False, default="")
@_socket_options
def flows(service: str, config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """UDP flows (of SERVICE)."""
    result = _call(config_path, socket_path, "flows", service=service)
    _emit(result, as_json, lambda r: table(
        ("SERVICE", "CLIENT", "BACKEND", "AGE", "IDLE", "TO-BACKEND", "TO-CLIENT"),
        [[f["service"], f["client"], f["backend"] or "-",
          f"{max(0.0, time.time() - f['started']):.0f}s",
          f"{max(0.0, time.time() - f['last_seen']):.0f}s",
          human_bytes(f["bytes_to_backend"]), human_bytes(f["bytes_to_client"])] for f in r]))


def _change_text(r: dict[str, Any]) -> str:
    return (f"{r['service']}/{r['backend']}: state {r['state']}, weight {r['weight']} "
            f"(table generation {r['generation']})")


def _admin_command(name: str, doc: str) -> None:
    @cli.command(name=name, help=doc)
    @click.argument("service")
    @click.argument("backend")
    @_socket_options
    def command(service: str, backend: str, config_path: str | None, socket_path: str | None,
                as_json: bool) -> None:
        _emit(_call(config_path, socket_path, name, service=service, backend=backend), as_json,
              _change_text)


_admin_command("enable", "Put BACKEND of SERVICE back in service (clears drain and maintenance; "
               "cancels a drain deadline).")
_admin_command("disable", "Put BACKEND of SERVICE in maintenance: no new sessions (cancels a "
               "drain deadline).")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@cli.command()
@click.argument("service")
@click.argument("backend")
@click.option("--timeout", default=None, callback=_duration, metavar="DURATION",
              help='Close what is left at this deadline ("30s", "5m", "1h"); the command '
                   "counts the remaining sessions down and returns when none are left.")
@_socket_options
def drain(service: str, backend: str, timeout: str | None, config_path: str | None,
          socket_path: str | None, as_json: bool) -> None:
    """Drain BACKEND of SERVICE: no new sessions; open ones continue.

    With --timeout, the daemon closes the sessions (and UDP flows) still open at the deadline.
    The deadline lives in the daemon: Ctrl-C here does not cancel it; `l4lb enable`,
    `l4lb disable` or another drain do.
    """
    if timeout is None:
        _emit(_call(config_path, socket_path, "drain", service=service, backend=backend),
              as_json, _change_text)
        return
    result = _call(config_path, socket_path, "drain", service=service, backend=backend,
                   timeout=timeout)
    if not as_json:
        click.echo(_change_text(result))
    sys.exit(_follow_drain(result["drain"], config_path, socket_path, as_json))


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _remaining_text(info: dict[str, Any]) -> str:
    """ "3 sessions" (TCP), "2 flows" (UDP); both when a backend somehow has both."""
    parts = []
    if info["protocol"] != "udp" or info["sessions"]:
        parts.append(_count(info["sessions"], "session"))
    if info["protocol"] == "udp" or info["flows"]:
        parts.append(_count(info["flows"], "flow"))
    return " and ".join(parts)


def drain_line(info: dict[str, Any]) -> str:
    """One line of the countdown: what is left and how long until the deadline."""
    return (f"{info['service']}/{info['backend']}: {_remaining_text(info)} left, "
            f"{countdown(info['remaining'])} to the deadline")


def drain_end_text(info: dict[str, Any]) -> tuple[str, int]:
    """The last line of `drain --timeout` and the exit code, for a drain that has ended."""
    who = f"{info['service']}/{info['backend']}"
    outcome = info["outcome"]
    what = "flows" if info["protocol"] == "udp" else "sessions"
    if outcome["outcome"] == "deadline":
        closed = _count(outcome["closed"], what[:-1])
        return f"{who}: deadline reached, closed {closed}", 0
    if outcome["outcome"] == "drained":
        return f"{who}: drained, no {what} left", 0
    return f"{who}: drain deadline cancelled: {outcome['reason']}", 1


def _follow_drain(info: dict[str, Any], config_path: str | None, socket_path: str | None,
                  as_json: bool) -> int:
    """Poll drain-status once a second until the drain ends; print the countdown."""
    tty = sys.stdout.isatty() and not as_json
    shown = False
    try:
        while info["outcome"] is None and info["sessions"] + info["flows"] > 0:
            if not as_json:
                line = drain_line(info)
                if tty:
                    click.echo(f"\r\x1b[K{line}", nl=False)
                else:
                    click.echo(line)
                shown = True
            time.sleep(min(1.0, max(0.05, info["remaining"] + 0.1)))
            info = _call(config_path, socket_path, "drain-status", drain_id=info["id"])
    except KeyboardInterrupt:
        if tty and shown:
            click.echo()
        at = time.strftime("%H:%M:%S", time.localtime(info["deadline"] or time.time()))
        click.echo(f"interrupted: the drain deadline stays armed in the daemon: at {at} it "
                   f"closes what is left of {info['service']}/{info['backend']} "
                   "(`l4lb enable` or `l4lb disable` cancels it)", err=True)
        return 130
    if tty and shown:
        click.echo("\r\x1b[K", nl=False)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return 0 if info["outcome"] is None or info["outcome"]["outcome"] != "cancelled" else 1
    if info["outcome"] is None:  # nothing left; the daemon ends the deadline within a second
        what = "flows" if info["protocol"] == "udp" else "sessions"
        click.echo(f"{info['service']}/{info['backend']}: drained, no {what} left")
        return 0
    text, code = drain_end_text(info)
    click.echo(text, err=code != 0)
    return code


@cli.command(name="reopen-logs")
@_socket_options
def reopen_logs(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """Reopen the connection log file (after logrotate renamed it); same as SIGUSR1."""
    _emit(_call(config_path, socket_path, "reopen-logs"), as_json,
          lambda r: f"reopened {r['connection_log']}" if r["connection_log"]
          else "connection log is off: nothing to reopen")


@cli.command()
@click.argument("service")
@click.argument("backend")
@click.argument("weight", type=click.IntRange(0, 256))
@_socket_options
def weight(service: str, backend: str, weight: int, config_path: str | None,
           socket_path: str | None, as_json: bool) -> None:
    """Set the weight (0..256) of BACKEND of SERVICE at run time."""
    _emit(_call(config_path, socket_path, "weight", service=service, backend=backend,
                weight=weight), as_json, _change_text)


@cli.command()
@_socket_options
def reload(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """Re-read the configuration file and apply the difference (like SIGHUP).

    An invalid file changes nothing: every error is printed and the exit code is 1.
    """
    _emit(_call(config_path, socket_path, "reload"), as_json,
          lambda r: f"reloaded: {r['changes']} (table generation {r['generation']})"
          + "".join(f"\nwarning: [global] {k} changed: needs a restart"
                    for k in r["restart_needed"]))


@cli.group()
def vrrp() -> None:
    """VRRP instances of a running daemon."""


@vrrp.command(name="status")
@_socket_options
def vrrp_status(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """State, priorities, master, VIPs, last transition and why, counters and drops."""
    _emit(_call(config_path, socket_path, "vrrp"), as_json, vrrp_text)


@cli.command()
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), default=None,
              help="Control socket path (default: [global] control_socket of -c FILE).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file whose control socket to use.")
def top(interval: float, socket_path: str | None, config_path: str | None) -> None:
    """Live view of services and backends with connection and byte rates; q quits."""
    from l4lb.top import run_top

    if socket_path is None:
        socket_path = (_socket_of(config_path) if config_path is not None
                       else GlobalSettings().control_socket)
    sys.exit(run_top(socket_path, interval))


@cli.command(name="add-backend")
@click.argument("service")
@click.argument("address")
@click.option("--weight", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--name", default="", help="Backend name (default: the address).")
@click.option("--backup", is_flag=True, help="A backup backend.")
@click.option("--max-connections", type=click.IntRange(min=0), default=0, show_default=True)
@_socket_options
def add_backend(service: str, address: str, weight: int, name: str, backup: bool,
                max_connections: int, config_path: str | None, socket_path: str | None,
                as_json: bool) -> None:
    """Add ADDRESS as a backend of SERVICE at run time (the file is not changed)."""
    result = _call(config_path, socket_path, "add-backend", service=service, address=address,
                   weight=weight, name=name, backup=backup, max_connections=max_connections)
    _emit(result, as_json, lambda r: f"{r['service']}/{r['backend']}: added "
          f"(table generation {r['generation']}); differs from the file: {r['differences']}")


@cli.command(name="remove-backend")
@click.argument("service")
@click.argument("backend")
@_socket_options
def remove_backend(service: str, backend: str, config_path: str | None,
                   socket_path: str | None, as_json: bool) -> None:
    """Remove BACKEND from SERVICE at run time; its open sessions continue."""
    result = _call(config_path, socket_path, "remove-backend", service=service, backend=backend)
    _emit(result, as_json, lambda r: f"{r['service']}/{r['backend']}: removed "
          f"(table generation {r['generation']}); differs from the file: {r['differences']}")
