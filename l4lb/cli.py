"""The `l4lb` command line: run, check, demo, version (click)."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from l4lb import __version__
from l4lb.config import ConfigError, load_file
from l4lb.dataplane import DataplaneUnavailable, compiled_available, reference_requested
from l4lb.logs import LEVELS, setup_logging
from l4lb.net.listen import ListenError

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
    """l4lb: a TCP load balancer with a C data plane and a Python control plane."""
    ctx.obj = {"log_level": log_level, "log_format": log_format}


def _load_or_exit(path: str) -> object:
    try:
        return load_file(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"{path}: error: cannot read configuration: {exc.strerror or exc}", err=True)
        sys.exit(1)


@cli.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Configuration file (TOML).")
def check(path: str) -> None:
    """Validate a configuration file; exit 0 when it is valid, 1 with every problem when not."""
    config = _load_or_exit(path)
    from l4lb.config.model import Config

    assert isinstance(config, Config)
    n_backends = sum(len(s.backends) for s in config.services)
    click.echo(f"{path}: ok ({len(config.services)} service(s), {n_backends} backend(s))")


@cli.command()
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Configuration file (TOML).")
@click.pass_context
def run(ctx: click.Context, path: str) -> None:
    """Run the balancer in the foreground (logs to stderr). SIGTERM drains, SIGINT stops."""
    from l4lb.config.model import Config
    from l4lb.daemon import EXIT_DATAPLANE, EXIT_LISTEN, Daemon, serve

    config = _load_or_exit(path)
    assert isinstance(config, Config)
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
    if reference_requested():
        log.warning("daemon: running the pure-Python reference data plane "
                    "(L4LB_NO_EXTENSIONS is set): for tests, not for traffic")
    sys.exit(asyncio.run(serve(daemon)))


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
