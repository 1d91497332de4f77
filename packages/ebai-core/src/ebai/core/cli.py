"""The ``ebai`` command: a lazy click group whose subcommands come from installed packages.

``list_commands`` reads entry-point names of the ``ebai.cli`` group; ``get_command`` imports only
the command asked for. A command whose package fails to import still shows up, and running it
prints why, so one broken plugin never breaks the rest of the CLI. Errors ebai raises on purpose
are printed as one line (``--debug`` shows the traceback).

SIGTERM (what SLURM and ``kill`` send) is turned into the same exception path as Ctrl-C, so every
temporary file is removed on the way out, as after any error.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from typing import Any

import click

from ebai.core import __version__
from ebai.core.errors import EbaiError
from ebai.core.install_hints import plugin_install_line
from ebai.core.plugins import CLI, entry_point, plugin_names

__all__ = ["main", "cli"]

logger = logging.getLogger("ebai")


def _broken_command(name: str, exc: BaseException | str) -> click.Command:
    @click.command(name=name, help=f"(unavailable: {exc})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def broken(args: Any) -> None:
        msg = f"command {name!r} cannot be loaded: {exc}"
        raise click.ClickException(msg)

    return broken


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C (temporary files removed), exits with 128 + 15."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    msg = f"signal {signum}"
    raise Terminated(msg)


class LazyGroup(click.Group):
    """A click group that loads subcommands from the ``ebai.cli`` entry points on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(plugin_names(CLI)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        if cmd_name not in plugin_names(CLI):
            home = plugin_install_line(CLI, cmd_name)  # a known command whose package is missing
            return _broken_command(cmd_name, f"it is not installed: {home}") if home else None
        ep = entry_point(CLI, cmd_name)
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not break the CLI
            logger.debug("command %s failed to load", cmd_name, exc_info=True)
            return _broken_command(cmd_name, exc)
        if not isinstance(loaded, click.Command):
            return _broken_command(cmd_name, TypeError(f"{ep.value} is not a click command"))
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EbaiError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            how = "terminated" if isinstance(exc, Terminated) else "interrupted"
            click.secho(f"{how}: nothing unfinished was written", fg="yellow", err=True)
            ctx.exit(128 + signal.SIGTERM if isinstance(exc, Terminated) else 130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", package_name="ebai-core", prog_name="ebai")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Make bioimaging AI models cheap to run: compress, verify, run and benchmark them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")


def main() -> None:
    """Console-script entry point; SIGTERM cleans up as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(cli.main(prog_name="ebai", standalone_mode=True))
