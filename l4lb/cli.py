"""The `l4lb` command line: run, check, demo, version, and the control-socket clients (click)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from l4lb import __version__
from l4lb.config import Config, ConfigError, load_file
from l4lb.config.durations import parse_duration_ms
from l4lb.config.model import GlobalSettings
from l4lb.control import (
    ControlError,
    os_error_text,
    request_with,
    socket_in_use,
    socket_label,
)
from l4lb.daemon import EXIT_CONFIG, MAX_DRAIN_TIMEOUT_MS
from l4lb.dataplane import DataplaneUnavailable, compiled_available, reference_requested
from l4lb.display import (
    backends_text,
    countdown,
    human_bytes,
    status_text,
    table,
    vrrp_text,
)
from l4lb.entry import ignore_operator_signals
from l4lb.logs import LEVELS, flush_logs, setup_logging
from l4lb.net.listen import ListenError
from l4lb.table.builder import U32_MAX
from l4lb.vrrp.instance import VrrpError

log = logging.getLogger("l4lb")

LEVEL_CHOICE = click.Choice(sorted(LEVELS))
FORMAT_CHOICE = click.Choice(["text", "json"])


def _version_text() -> str:
    if reference_requested():
        plane = "pure-Python reference (L4LB_NO_EXTENSIONS is set)"
    elif compiled_available():
        from l4lb import _dataplane

        plane = f"compiled C ({_dataplane.__file__})"
    else:
        plane = "NOT BUILT (run `pip install .`)"
    return f"l4lb {__version__}\ndata plane: {plane}\npython: {sys.version.split()[0]}"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print what `l4lb version` prints and exit.")
@click.option("--log-level", type=LEVEL_CHOICE, default=None,
              help="Override [global] log_level (debug, info, warning, error).")
@click.option("--log-format", type=FORMAT_CHOICE, default=None,
              help="Override [global] log_format (text or json).")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """l4lb: a TCP and UDP load balancer with a C data plane and a Python control plane."""
    ctx.obj = {"log_level": log_level, "log_format": log_format}


def _echo_error(text: str) -> None:
    click.echo(text, err=True)


def _log_error(text: str) -> None:
    log.error("%s", text)


def _not_a_file(path: str) -> str:
    """Why `path` cannot be a configuration file ("" when it may be one): reading a
    directory fails late and reading a FIFO blocks, so both are refused before open()."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""  # open() reports it
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return ""


def _load_or_exit(path: str, report: Callable[[str], None] = _echo_error) -> Config:
    problem = _not_a_file(path)
    if problem:
        report(f"{path}: error: cannot read configuration: {problem}")
        sys.exit(EXIT_CONFIG)
    try:
        return load_file(path)
    except ConfigError as exc:
        report(str(exc))
        sys.exit(EXIT_CONFIG)
    except OSError as exc:
        report(f"{path}: error: cannot read configuration: {exc.strerror or exc}")
        sys.exit(EXIT_CONFIG)


@cli.command()
@click.option("-c", "--config", "path", required=True, help="Configuration file (TOML).")
def check(path: str) -> None:
    """Validate a configuration file; exit 0 when it is valid, 1 with every problem when not."""
    config = _load_or_exit(path)
    n_backends = sum(len(s.backends) for s in config.services)
    click.echo(f"{path}: ok ({len(config.services)} service(s), {n_backends} backend(s))")


def _fatal(text: str, code: int, as_json: bool) -> NoReturn:
    """Report a fatal error of `l4lb run` (or demo) and exit: a log line under --log-format
    json (the logging is set up by then), else `l4lb: error: TEXT` on stderr."""
    if as_json:
        log.error("%s", text)
    else:
        flush_logs(1.0)  # the log lines that led here come first
        click.echo(f"l4lb: error: {text}", err=True)
    sys.exit(code)


def _raised_in(exc: BaseException, module: str) -> bool:
    """Whether `exc`, or an exception it was raised from, was raised inside `module`."""
    seen: BaseException | None = exc
    while seen is not None:
        if any(frame.f_globals.get("__name__") == module
               for frame, _ in traceback.walk_tb(seen.__traceback__)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _serve_error_text(exc: OSError, config: Config) -> str:
    """What failed when serve() raised `exc` (the control socket raises ControlError): the
    [metrics] listener, the only other socket serve() binds."""
    if isinstance(exc, ListenError):  # already one line naming what and where
        return str(exc.strerror)
    if config.metrics_listen is not None and _raised_in(exc, "l4lb.httpserver"):
        where = config.metrics_listen.text or str(config.metrics_listen)
        return f"metrics.listen: cannot listen on {where}: {os_error_text(exc)}"
    return os_error_text(exc)


@cli.command()
@click.option("-c", "--config", "path", required=True, help="Configuration file (TOML).")
@click.pass_context
def run(ctx: click.Context, path: str) -> None:
    """Run the balancer in the foreground (logs to stderr). SIGTERM drains, SIGINT stops."""
    from l4lb.daemon import (
        EXIT_DATAPLANE,
        EXIT_LISTEN,
        ConnLogError,
        Daemon,
        fd_ceiling,
        raise_fd_limit,
        serve,
    )

    # Until serve() installs its handlers, the default action of these would end the process
    # (a logrotate SIGUSR1 or a reload's SIGHUP that comes during a slow start): ignore them
    # (l4lb.entry did so already, unless this was called without it: CliRunner, imports).
    ignore_operator_signals()
    report = _echo_error
    if ctx.obj["log_format"] == "json":  # a bad file is reported as a JSON line too
        setup_logging(ctx.obj["log_level"] or "info", "json")
        report = _log_error
    config = _load_or_exit(path, report)
    as_json = (ctx.obj["log_format"] or config.global_.log_format) == "json"
    setup_logging(ctx.obj["log_level"] or config.global_.log_level,
                  ctx.obj["log_format"] or config.global_.log_format)
    sock = config.global_.control_socket
    if sock and os.path.exists(sock):  # before anything binds, publishes or opens a file
        busy = socket_in_use(sock)
        if busy:
            _fatal(f"{socket_label(sock)}: {busy}", EXIT_LISTEN, as_json)
    fds = raise_fd_limit()
    log.info("daemon: %d file descriptors allowed (about %d TCP sessions moving data at once)",
             fds, max(0, (fd_ceiling(fds) or fds) - 64) // 6)
    daemon = Daemon(config)
    daemon.log_level_pinned = ctx.obj["log_level"] is not None
    daemon.log_format_pinned = ctx.obj["log_format"] is not None
    try:
        daemon.start()
    except DataplaneUnavailable as exc:
        _fatal(str(exc), EXIT_DATAPLANE, as_json)
    except ListenError as exc:
        _fatal(str(exc.strerror), EXIT_LISTEN, as_json)
    except ConnLogError as exc:
        _fatal(str(exc), EXIT_CONFIG, as_json)
    if reference_requested():
        log.warning("daemon: running the pure-Python reference data plane "
                    "(L4LB_NO_EXTENSIONS is set): for tests, not for traffic")
    try:
        code = asyncio.run(serve(daemon, control_path=config.global_.control_socket))
    except VrrpError as exc:
        daemon.stop(0.0)
        _fatal(str(exc), EXIT_LISTEN, as_json)
    except ControlError as exc:  # its text starts with "control socket PATH: "
        daemon.stop(0.0)
        _fatal(str(exc), EXIT_LISTEN, as_json)
    except OSError as exc:
        daemon.stop(0.0)
        _fatal(_serve_error_text(exc, config), EXIT_LISTEN, as_json)
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

    as_json = ctx.obj["log_format"] == "json"
    setup_logging(ctx.obj["log_level"] or "warning", ctx.obj["log_format"] or "text")
    try:
        code = asyncio.run(run_demo(host, port, duration, show_config))
    except DataplaneUnavailable as exc:
        _fatal(str(exc), EXIT_DATAPLANE, as_json)
    except ListenError as exc:
        _fatal(f"{exc.strerror} (try --port)", EXIT_LISTEN, as_json)
    except ConfigError as exc:  # the embedded config failed validation: a bug, say so plainly
        click.echo(f"l4lb: internal error: the demo configuration is invalid:\n{exc}", err=True)
        sys.exit(70)
    sys.exit(code)


@cli.command()
def version() -> None:
    """Print the version and which data plane this installation runs."""
    click.echo(_version_text())


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="l4lb")


# ---- clients of the control socket (docs/control-api.md) ----

def _socket_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON result.")(fn)
    fn = click.option("--socket", "socket_path", default=None,
                      help="Control socket path (default: [global] control_socket of -c FILE).")(fn)
    fn = click.option("-c", "--config", "config_path", default=None,
                      help="Configuration file whose control socket to use.")(fn)
    return fn


def _socket_of(config_path: str) -> str:
    """The control socket named by a configuration file, even when the file is invalid (the
    daemon, not the client, reports a bad file on `l4lb reload`)."""
    import tomllib

    problem = _not_a_file(config_path)
    if problem:
        click.echo(f"{config_path}: error: cannot read configuration: {problem}", err=True)
        sys.exit(1)
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


def _socket_path(config_path: str | None, socket_path: str | None) -> str:
    if socket_path is not None:
        return socket_path
    if config_path is None:
        return GlobalSettings().control_socket
    return _socket_of(config_path)


def _call(config_path: str | None, socket_path: str | None, cmd: str, **args: Any) -> Any:
    socket_path = _socket_path(config_path, socket_path)
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
          lambda views: backends_text(views, views[0].get("protocol", "tcp") if views
                                      else "tcp"))


@cli.command()
@click.argument("service", required=False, default="")
@click.option("--backend", default="", help="Only sessions of this backend (address or name).")
@_socket_options
def sessions(service: str, backend: str, config_path: str | None, socket_path: str | None,
             as_json: bool) -> None:
    """Open sessions (of SERVICE, of one --backend)."""
    if backend and not service:
        raise click.UsageError("--backend needs SERVICE (the backend's service)")
    result = _call(config_path, socket_path, "sessions", service=service, backend=backend)
    _emit(result, as_json, _sessions_table)


def _sessions_table(rows: list[dict[str, Any]]) -> str:
    """`l4lb sessions` as a table; a PEER column (the balancer in front, accept_proxy) only
    when some session has one."""
    peers = any(s.get("peer") for s in rows)
    return table(
        ("SERVICE", "CLIENT", *(("PEER",) if peers else ()), "BACKEND", "STATE", "AGE",
         "TO-BACKEND", "TO-CLIENT"),
        [[s["service"], s["client"], *((s.get("peer") or "-",) if peers else ()),
          s["backend"] or "-", s["state"], f"{max(0.0, time.time() - s['started']):.0f}s",
          human_bytes(s["bytes_to_backend"]), human_bytes(s["bytes_to_client"])] for s in rows])


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


def _overlay_text(r: dict[str, Any], what: str) -> str:
    """The answer to add-backend/remove-backend; what differs from the file is said as
    `l4lb status` says it."""
    diff: dict[str, list[str]] = r["differences"]
    parts = [f"{kind} at run time: {', '.join(addrs)}" for kind, addrs in diff.items() if addrs]
    differs = ("differs from the file: " + "; ".join(parts) if parts
               else "runs the backends of the file again")
    return (f"{r['service']}/{r['backend']}: {what} (table generation {r['generation']}); "
            f"service {r['service']} {differs}" + _note(r))


def _change_text(r: dict[str, Any]) -> str:
    text = (f"{r['service']}/{r['backend']}: state {r['state']}, weight {r['weight']} "
            f"(table generation {r['generation']})")
    if r.get("dynamic_weight") is not None:  # misc_dynamic replaces the base weight
        text += (f"\nnote: its check's misc_dynamic weight {r['dynamic_weight']} replaces "
                 "this weight while it is set")
    if r.get("agent"):  # the agent's own flags hold apart from the operator's
        text += f"\nnote: its agent holds it at {r['agent']} until the agent says otherwise"
    return text + _note(r)


def _note(r: dict[str, Any]) -> str:
    """A change reply's `note` (weights under round_robin) as a line of its own, or ""."""
    return f"\nnote: {r['note']}" if r.get("note") else ""


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
        ms = parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if ms > MAX_DRAIN_TIMEOUT_MS:  # the daemon refuses it too; say so before asking
        raise click.BadParameter(f"{value!r} is too long (at most 24h)")
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
        while info["outcome"] is None and (info["sessions"] + info["flows"] > 0
                                           or info.get("closing")):
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
    result = _call(config_path, socket_path, "reopen-logs")
    if result["connection_log"] and not result["reopened"]:  # logrotate's postrotate sees it
        if as_json:
            _emit(result, as_json, str)
        else:
            click.echo(f"l4lb: error: {result.get('error') or 'not reopened'}", err=True)
        sys.exit(1)
    _emit(result, as_json,
          lambda r: f"reopened {r['connection_log']}" if r["connection_log"]
          else "connection log is off: nothing to reopen")


_NEGATIVE_NUMBER = re.compile(r"-[0-9]+")


class _SignedArguments(click.Command):
    """A command whose arguments may be negative numbers: click takes `-1` for an unknown
    option ("No such option: -1"); here it reaches the argument, whose range check then says
    what is wrong with it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(_NEGATIVE_NUMBER.fullmatch(arg) for arg in args):
            ctx.ignore_unknown_options = True
        return super().parse_args(ctx, args)


@cli.command(cls=_SignedArguments)
@click.argument("service")
@click.argument("backend")
@click.argument("weight", type=click.IntRange(0, 256))
@_socket_options
def weight(service: str, backend: str, weight: int, config_path: str | None,
           socket_path: str | None, as_json: bool) -> None:
    """Set the weight (0..256) of BACKEND of SERVICE at run time."""
    _emit(_call(config_path, socket_path, "weight", service=service, backend=backend,
                weight=weight), as_json, _change_text)


def _maxconn_text(r: dict[str, Any]) -> str:
    limit = r["max_connections"]
    text = (f"{r['service']}/{r['backend']}: max_connections "
            f"{limit if limit else '0 (no limit)'}, state {r['state']} "
            f"(table generation {r['generation']})")
    effective = r["effective_max_connections"]
    if effective != limit:  # only an agent's maxconn: can make it stricter
        text += (f"\nnote: its agent's maxconn:{effective} holds it at {effective} until the "
                 "agent says otherwise")
    return text


@cli.command(cls=_SignedArguments)
@click.argument("service")
@click.argument("backend")
@click.argument("max_connections", metavar="N", type=click.IntRange(0, U32_MAX))
@_socket_options
def maxconn(service: str, backend: str, max_connections: int, config_path: str | None,
            socket_path: str | None, as_json: bool) -> None:
    """Set the connection limit N of BACKEND of SERVICE at run time (0: no limit)."""
    _emit(_call(config_path, socket_path, "maxconn", service=service, backend=backend,
                max_connections=max_connections), as_json, _maxconn_text)


def _daemon_file(status: dict[str, Any]) -> str | None:
    """The file the daemon runs, as a path this process can open (None: cannot tell). The
    daemon names it as it was given to `l4lb run -c`, and as an absolute path (`config_file`);
    an older daemon without the latter: a relative path is relative to its working directory."""
    path = str(status["config"])
    if os.path.isabs(path):
        return path
    if isinstance(status.get("config_file"), str):
        return str(status["config_file"])
    try:
        return os.path.normpath(os.path.join(os.readlink(f"/proc/{int(status['pid'])}/cwd"),
                                             path))
    except (OSError, ValueError, KeyError):
        return None


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _restart_key(key: str) -> str:
    """How a restart-only key is named: `[global] workers`, `[metrics] listen`, `[[vrrp]]`,
    `[[vrrp_sync_group]]`."""
    if key in ("vrrp", "vrrp_sync_group"):
        return f"[[{key}]]"
    table, dot, name = key.partition(".")
    return f"[{table}] {name}" if dot else f"[global] {key}"


def _reload_text(r: dict[str, Any], path: str) -> str:
    return (f"reloaded {path}: {r['changes']} (table generation {r['generation']})"
            + "".join(f"\nwarning: {_restart_key(k)} changed: needs a restart"
                      for k in r["restart_needed"])
            + "".join(f"\nerror: {e} (not running; the next reload tries again)"
                      for e in r.get("vrrp_errors", ())))


@cli.command()
@_socket_options
def reload(config_path: str | None, socket_path: str | None, as_json: bool) -> None:
    """Make the daemon re-read its configuration file and apply the difference (like SIGHUP).

    The daemon re-reads the file it was started with. With -c FILE, FILE must be that file
    (-c names the daemon, through its control socket): another file is refused with exit 1;
    running another file needs a restart. An invalid file changes nothing: every error is
    printed and the exit code is 1. Exit code 1 too when the reload was applied but a [[vrrp]]
    instance it starts or changes could not start (it is named).
    """
    where = _socket_path(config_path, socket_path)
    status = _call(None, where, "status")
    daemon_file = _daemon_file(status)
    running = daemon_file or str(status["config"])
    if config_path is not None and daemon_file is not None \
            and not _same_file(config_path, daemon_file):
        click.echo(f"l4lb: error: the daemon at {where} runs {running}, not {config_path}: "
                   f"reload re-reads {running}; to run {config_path}, restart the daemon "
                   "with it", err=True)
        sys.exit(1)
    result = _call(None, where, "reload")
    _emit(result, as_json, lambda r: _reload_text(r, running))
    if result.get("vrrp_errors"):  # applied, but a VRRP instance could not start
        sys.exit(1)


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
@click.option("--socket", "socket_path", default=None,
              help="Control socket path (default: [global] control_socket of -c FILE).")
@click.option("-c", "--config", "config_path", default=None,
              help="Configuration file whose control socket to use.")
def top(interval: float, socket_path: str | None, config_path: str | None) -> None:
    """Live view of services and backends with connection and byte rates; q quits.

    It needs a terminal: with standard output redirected it says so and exits 1 (`l4lb
    status` prints a snapshot)."""
    from l4lb.top import run_top

    if not sys.stdout.isatty():
        click.echo("l4lb top: error: standard output is not a terminal; for a snapshot use "
                   "`l4lb status` (`--json` for scripts)", err=True)
        sys.exit(1)
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
    _emit(result, as_json, lambda r: _overlay_text(r, "added"))


@cli.command(name="remove-backend")
@click.argument("service")
@click.argument("backend")
@_socket_options
def remove_backend(service: str, backend: str, config_path: str | None,
                   socket_path: str | None, as_json: bool) -> None:
    """Remove BACKEND from SERVICE at run time; its open sessions continue."""
    result = _call(config_path, socket_path, "remove-backend", service=service, backend=backend)
    _emit(result, as_json, lambda r: _overlay_text(r, "removed"))
