"""TCP keepalive on LAN terms: one number, the seconds after which a silent peer is dead.

Why both sides need it: a workstation that loses its link (cable pulled, switched
off, killed while the link was down) sends nothing more, not even a FIN, so an
idle server session would wait for it forever, holding its transaction and
the write lock; a client waiting for a reply from a vanished server would wait
as long.  The operating system's defaults notice nothing for two hours.

``seconds`` is turned into the kernel's three keepalive knobs (probe after half
the time idle, then three probes over the other half).  An outage shorter than
that is ridden through, and a live peer answers probes from its kernel, so a
long statement is never cut.

Keepalive probes are not sent while data is in flight, so clients also set
``TCP_USER_TIMEOUT``: a request sent to a server that vanished fails after the
same time, not after the kernel's quarter of an hour of retransmissions.  The
server does not: Linux applies that timeout to a peer that advertises a zero
window too, so it would cut a live client that reads a large result slowly.  A
session whose client vanished while replies were in flight is bounded by
``limits.idle_in_transaction_timeout_seconds`` instead, when it holds a
transaction (the only case where it matters to others).
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["keepalive_plan", "enable_keepalive"]

PROBES = 3


def keepalive_plan(seconds: float) -> tuple[int, int, int, int]:
    """(idle s, interval s, probes, user timeout ms) for a dead-peer time of ``seconds``."""
    interval = max(1, int(seconds / 2 / PROBES))
    idle = max(1, int(seconds) - PROBES * interval)  # idle + probes fit in ``seconds``
    return idle, interval, PROBES, int(seconds * 1000)


def enable_keepalive(sock: Any, seconds: float, user_timeout: bool = False) -> None:
    """Switch keepalive on for ``sock`` (a socket, or asyncio's TransportSocket); 0 = off.
    ``user_timeout``: also end the connection when what we sent stays unacknowledged.

    Options this platform lacks are skipped (macOS has no TCP_KEEPIDLE under that
    name): the peer is then still probed, at the system's own pace.
    """
    if seconds <= 0:
        return
    idle, interval, count, user_ms = keepalive_plan(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)]
    if user_timeout:
        options.append(("TCP_USER_TIMEOUT", user_ms))
    for name, value in options:
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
