"""When and how the server announces itself on the LAN (``network.publish_on_lan``).

"auto" publishes when the server listens beyond loopback, as the system we model
does by default; a failure to publish (no multicast, zeroconf missing) is
logged and never stops the server: publication is a convenience, not a service.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import lan

if TYPE_CHECKING:
    from .app import Server

__all__ = ["start_publication"]

log = logging.getLogger("casemate.server")


def wants_publication(setting: str, bound: list[str]) -> bool:
    """``on``, or ``auto`` with an address beyond loopback."""
    if setting == "off":
        return False
    interfaces = lan.publish_interfaces(bound)
    return setting == "on" or interfaces is None or bool(interfaces)


async def start_publication(server: Server) -> None:
    """Announce ``server`` on the interfaces it listens on (``server.publisher``), in the
    background: probing the name on the LAN takes about a second, which the server's
    start does not wait for."""
    bound = [h for h, _ in server.addresses]
    setting = server.settings.network.publish_on_lan
    if not server.addresses or not wants_publication(setting, bound):
        log.info("not announced on the LAN (%s)", "publish_on_lan is off" if setting == "off"
                 else "listening on loopback only")
        return
    fp = server.tls.info.spki_sha256 if server.tls is not None else None
    pub = lan.Publisher(server.settings.network.publication_name, server.addresses[0][1],
                        bound, server.encrypted, fp)
    if pub.interfaces == []:
        log.warning("publish_on_lan is on but the server listens on loopback only: "
                    "nothing to announce on the LAN")
        return
    server.publisher = pub  # from now on, shutdown closes it, even half-started
    try:
        name = await pub.start()
    except Exception as e:  # noqa: BLE001 - publication must never stop the server
        log.warning("cannot announce the server on the LAN (publish_on_lan): %s", e)
        server.publisher = None
        await _close_quietly(pub)
        return
    log.info("announced on the LAN as %r (%s)", name, lan.SERVICE_TYPE)


async def _close_quietly(pub: lan.Publisher) -> None:
    try:
        await pub.close()
    except Exception:  # noqa: BLE001
        pass
