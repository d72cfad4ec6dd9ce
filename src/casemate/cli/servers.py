"""``casemate servers``: the Casemate servers announcing themselves on the LAN."""

from __future__ import annotations

import json

import click

from .. import lan
from .tables import one_line, render


def shown(text: str) -> str:
    """What a stranger on the LAN announced, shown and not obeyed: one line (tables.one_line),
    and no column bar of its own, so a name can draw neither a fake row nor a fake column."""
    return one_line(text, also="|")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array of servers.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
              help="Seconds to listen for announcements.")
def servers(as_json: bool, timeout: float) -> None:
    """List the Casemate servers announced on the local network (DNS-SD, _casemate._tcp).

    \b
    Columns: publication name, address, port, encryption marker, key fingerprint.
    The fingerprint is what the server announces: a hint to compare, never trust.
    Anyone on the LAN can announce: control characters in names are shown escaped.
    Connect with casemate.connect(publication="NAME") or casemate://user@NAME.local.
    """
    try:
        found = lan.browse(timeout)
    except OSError as e:
        click.echo(f"error: cannot listen for LAN announcements: {e}", err=True)
        raise SystemExit(1) from e
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in found], indent=2))
        return
    if not found:
        click.echo(f"No Casemate server announced itself within {timeout:g} s.")
        return
    rows = [(shown(f.name), f.address, f.port, "encrypted" if f.encrypted else "PLAIN",
             shown(f.fingerprint) if f.fingerprint else "-") for f in found]
    click.echo(render(["name", "address", "port", "connections", "key fingerprint"], rows))
