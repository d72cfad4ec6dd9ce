"""Two network namespaces joined by a veth pair, for tests that must use a real LAN
(multicast included) without touching the host's own network.

``side_a`` gets 10.251.N.1/24, ``side_b`` 10.251.N.2/24; both namespaces and the pair
are deleted when the context ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LanPair", "lan_pair", "cannot_make_namespaces"]


@dataclass(frozen=True)
class LanPair:
    ns_a: str
    ns_b: str
    addr_a: str
    addr_b: str

    def prefix(self, side: str) -> tuple[str, ...]:
        """The command prefix that runs a program inside namespace ``side`` ("a"/"b")."""
        return ("ip", "netns", "exec", self.ns_a if side == "a" else self.ns_b)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def cannot_make_namespaces() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"cmprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = getattr(e, "stderr", "") or e
        return f"cannot create a network namespace: {detail}"
    with contextlib.suppress(Exception):
        _ip("netns", "delete", name)
    return None


@contextlib.contextmanager
def lan_pair(subnet: int) -> Iterator[LanPair]:
    """Namespaces ``cm<pid>a``/``cm<pid>b`` linked by veth, multicast on, 10.251.subnet.0/24."""
    tag = f"cm{os.getpid() % 100000}{subnet}"
    pair = LanPair(f"{tag}a", f"{tag}b", f"10.251.{subnet}.1", f"10.251.{subnet}.2")
    try:
        _ip("netns", "add", pair.ns_a)
        _ip("netns", "add", pair.ns_b)
        _ip("link", "add", f"{tag}va", "netns", pair.ns_a, "type", "veth",
            "peer", "name", f"{tag}vb", "netns", pair.ns_b)
        for ns, dev, addr in ((pair.ns_a, f"{tag}va", pair.addr_a),
                              (pair.ns_b, f"{tag}vb", pair.addr_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "multicast", "on", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # mDNS goes to 224.0.0.251 on the veth: a route, so sends never fail for lack of one
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):  # deleting a namespace deletes its end of the veth
            with contextlib.suppress(Exception):
                _ip("netns", "delete", ns)
