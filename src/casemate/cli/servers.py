"""``casemate servers``: the Casemate servers announcing themselves on the LAN."""

from __future__ import annotations

import json

import click

from .. import lan


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array of servers.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
              help="Seconds to listen for announcements.")
def servers(as_json: bool, timeout: float) -> None:
    """List the Casemate servers announced on the local network (DNS-SD, _casemate._tcp).

    \b
    Columns: publication name, address, port, encryption marker, key fingerprint.
    The fingerprint is what the server announces: a hint to compare, never trust.
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
    for f in found:
        marker = "encrypted" if f.encrypted else "PLAIN"
        click.echo(f"{f.name:<24} {f.address:<24} {f.port:<6} {marker:<10} "
                   f"{f.fingerprint or '-'}")
