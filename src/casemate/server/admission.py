"""Caps on connections that have not logged in yet, in total and per client address.

Until a connection has logged in, nobody is accountable for it, yet it holds a
socket, TLS state and buffers until the login deadline.  Without a cap, a
flood of connections that never log in takes memory (and the server's
``max_sessions``, which only counts logged-in sessions, never trips).  A
connection gets a :class:`Ticket` when it is accepted and gives it back when
it logs in or closes, whichever comes first; over a cap it is refused at once,
before TLS or any protocol byte is read.  (Frames before login are capped small
too: see ``PRELOGIN_MAX_FRAME`` in session.py.)
"""

from __future__ import annotations

import collections
import ipaddress

__all__ = ["PendingLogins", "Ticket", "address_key"]


def address_key(address: str) -> str:
    """What per-address caps and throttles count by: the IPv4 address, or the /64 of an
    IPv6 one (one host or LAN segment is handed a whole /64 and may pick any address in
    it, so counting exact IPv6 addresses would let one machine multiply every cap);
    IPv4-mapped IPv6 addresses count as their IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Ticket:
    """One connection's place among those not logged in; :meth:`release` is idempotent."""

    __slots__ = ("_owner", "address")

    def __init__(self, owner: PendingLogins, address: str) -> None:
        self._owner: PendingLogins | None = owner
        self.address = address

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.address)


class PendingLogins:
    """Counts connections not yet logged in: ``total`` at most, ``per_address`` from one IP."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total_cap, self.per_address_cap = total, per_address
        self.total = 0
        self._by_address: collections.Counter[str] = collections.Counter()

    def admit(self, address: str) -> Ticket | str:
        """A ticket, or the reason the connection is refused."""
        key = address_key(address)
        if self.total >= self.total_cap:
            return (f"server busy: {self.total} connections have not finished login "
                    "(limits.max_unauthenticated_connections)")
        if self._by_address[key] >= self.per_address_cap:
            return (f"too many connections from {key} that have not finished login "
                    "(access.max_unauthenticated_per_address)")
        self.total += 1
        self._by_address[key] += 1
        return Ticket(self, key)

    def _release(self, address: str) -> None:
        self.total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]  # bounded: only addresses with connections pending
