"""The ``casemate`` command: init, serve, user, cert, trust, shell."""

from __future__ import annotations

import sys
import warnings
from typing import TextIO

import click

from .. import __version__
from ..errors import CasemateWarning
from .backup import backup, restore
from .cert import cert
from .check import check
from .control import stop
from .demo import demo
from .main import group, init, methods, serve, trust, user
from .monitor import accept, drop, message, reject, sessions, status
from .servers import servers
from .shell import shell

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="casemate")
def cli() -> None:
    """Casemate: a client/server database for Python, with one-setting encryption.

    \b
    Quick start:
      casemate demo                      create and serve a demo database
      casemate init mydb                 create a database folder
      casemate serve mydb                start its server (--detach: in the background)
      casemate stop mydb                 stop the server running on mydb
      casemate shell casemate://admin@localhost
    """


for command in (demo, init, serve, stop, user, group, cert, trust, shell, backup, restore, status,
                sessions, drop, message, accept, reject, methods, check, servers):
    cli.add_command(command)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Casemate's own warnings read as command output ("warning: ..."), not as Python's
    file:line report; others keep Python's format."""
    if issubclass(category, CasemateWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
