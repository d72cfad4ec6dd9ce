"""The ``casemate`` command: init, serve, user, cert, trust, shell."""

from __future__ import annotations

import sys

import click

from .. import __version__
from .backup import backup, restore
from .cert import cert
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
      casemate serve mydb                start its server
      casemate shell casemate://admin@localhost
    """


for command in (demo, init, serve, user, group, cert, trust, shell, backup, restore, status,
                sessions, drop, message, accept, reject, methods, servers):
    cli.add_command(command)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
