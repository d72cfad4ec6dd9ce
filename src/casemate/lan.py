"""Servers found on the local network: DNS-SD over multicast DNS (``_casemate._tcp``).

The system we model lists the servers of the LAN in its connection dialog; a
Casemate server does the same by announcing one DNS-SD service per
publication (RFC 6763 over RFC 6762, through the ``zeroconf`` library).  Its
TXT record says::

    v=1  enc=1|0  fp=sha256:HEX (the key fingerprint, when encrypted)  name=PUBLICATION

What a client reads here is a *hint*, never trust: anyone on the LAN can
announce anything.  A first contact found this way still goes through the
pin rules (client.known), and a fingerprint that differs from the key the
handshake presents is reported (:func:`announcement_mismatch`).

The announcement stays on the interfaces the server listens on: a server
bound to 10.0.0.5 answers on that interface only, one bound to a wildcard
address on all of them, one on loopback nowhere (``publish_on_lan = "auto"``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["SERVICE_TYPE", "Found", "Publisher", "browse", "find", "announcement_mismatch",
           "publish_interfaces"]

SERVICE_TYPE = "_casemate._tcp.local."
MAX_INSTANCE_BYTES = 63  # RFC 6763 4.1.1: an instance name is one DNS label


@dataclass(frozen=True)
class Found:
    """One server seen on the LAN (``casemate servers``)."""

    name: str
    addresses: tuple[str, ...]
    port: int
    encrypted: bool
    fingerprint: str | None

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else "?"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "addresses": list(self.addresses), "port": self.port,
                "encrypted": self.encrypted, "fingerprint": self.fingerprint}


def instance_name(publication: str) -> str:
    """The publication name as one DNS-SD instance label (at most 63 bytes, no dot)."""
    text = publication.replace(".", "-").strip() or "Casemate"
    while len(text.encode()) > MAX_INSTANCE_BYTES:
        text = text[:-1]
    return text


def _host_label(publication: str) -> str:
    """A host name for the SRV record: ``Sales`` -> ``Sales.local.``."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", publication).strip("-")[:MAX_INSTANCE_BYTES]
    return f"{label or 'casemate'}.local."


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def publish_interfaces(bound: list[str]) -> list[str] | None:
    """The addresses to announce on, from the addresses the server is bound to: None for
    "all interfaces" (a wildcard), [] for none (loopback only)."""
    if any(a in ("0.0.0.0", "::", "") for a in bound):
        return None
    return [a for a in bound if not _is_loopback(a)]


def _all_addresses(v6: bool) -> list[str]:
    import ifaddr
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            a = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if not _is_loopback(a) and (v6 or ":" not in a) and not a.startswith("fe80"):
                out.append(a)
    return out


class Publisher:
    """The server's announcement; runs in the server's event loop."""

    def __init__(self, publication: str, port: int, bound: list[str], encrypted: bool,
                 fingerprint: str | None) -> None:
        self.publication = publication
        self.port = port
        self.encrypted = encrypted
        self.fingerprint = fingerprint
        self.interfaces = publish_interfaces(bound)
        self.v6 = any(":" in a for a in bound)
        self._zc: Any = None
        self._info: Any = None

    def _service(self) -> Any:
        from zeroconf import ServiceInfo
        addresses = self.interfaces if self.interfaces is not None else _all_addresses(self.v6)
        props = {"v": "1", "enc": "1" if self.encrypted else "0",
                 "fp": self.fingerprint or "", "name": self.publication[:200]}
        return ServiceInfo(SERVICE_TYPE, f"{instance_name(self.publication)}.{SERVICE_TYPE}",
                           port=self.port, properties=props, server=_host_label(self.publication),
                           parsed_addresses=addresses)

    async def start(self) -> str:
        """Announce; return the instance name in use.  Raises OSError/zeroconf errors."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncZeroconf
        interfaces: Any = InterfaceChoice.All if self.interfaces is None else self.interfaces
        version = IPVersion.All if self.v6 else IPVersion.V4Only
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        self._info = self._service()
        await self._zc.async_register_service(self._info, allow_name_change=True)
        return str(self._info.name)

    async def update(self, fingerprint: str | None) -> None:
        """A new key (rotation, reload): announce its fingerprint."""
        self.fingerprint = fingerprint
        if self._zc is None or self._info is None:
            return
        name = self._info.name
        self._info = self._service()
        self._info.name = name
        await self._zc.async_update_service(self._info)

    async def close(self) -> None:
        if self._zc is None:
            return
        try:
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)
        finally:
            await self._zc.async_close()
            self._zc = None


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SERVERS = 256  # announcements looked at in one listing
RESOLVE_SECONDS = 2.0  # at most this long spent asking the announcers for their details


def _text(v: Any) -> Any:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _found(info: Any) -> Found | None:
    """One announcement as a :class:`Found`; None for one that cannot be used (anyone may
    announce anything: a bad one is skipped, never fatal to the listing or a connect)."""
    try:
        return _parse(info)
    except (ValueError, TypeError, AttributeError):
        return None


def _parse(info: Any) -> Found | None:
    props = {_text(k): _text(v) for k, v in (info.properties or {}).items()}
    if not info.port:
        return None
    name = props.get("name") or info.name.removesuffix("." + SERVICE_TYPE)
    addresses = sorted(info.parsed_scoped_addresses(), key=lambda a: ":" in a)  # IPv4 first
    fp = props.get("fp")
    return Found(name=str(name), addresses=tuple(addresses),
                 port=int(info.port), encrypted=props.get("enc") == "1",
                 # Anyone may announce: a fingerprint that is not one is not repeated.
                 fingerprint=fp if isinstance(fp, str) and _FINGERPRINT.fullmatch(fp) else None)


class _Listener:  # a zeroconf ServiceListener (duck-typed: zeroconf imports lazily)
    def __init__(self) -> None:
        self.names: list[str] = []
        self.changed = threading.Event()

    def add_service(self, zc: Any, type_: str, name: str) -> None:
        if name not in self.names and len(self.names) < MAX_SERVERS:
            self.names.append(name)
        self.changed.set()

    def update_service(self, zc: Any, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Any, type_: str, name: str) -> None:
        if name in self.names:
            self.names.remove(name)


def _matches(name: str, publication: str) -> bool:
    instance = name.removesuffix("." + SERVICE_TYPE).lower()
    return instance in (publication.lower(), instance_name(publication).lower())


def browse(timeout: float = 2.0, publication: str | None = None) -> list[Found]:
    """The servers announcing themselves within ``timeout`` seconds (plus at most
    RESOLVE_SECONDS to ask them for their details), sorted by name.  With
    ``publication``, returns as soon as that one is seen (the servers announcing it).
    Raises OSError when no multicast socket can be opened."""
    from zeroconf import ServiceBrowser, Zeroconf
    zc = Zeroconf()
    try:
        listener = _Listener()
        browser = ServiceBrowser(zc, SERVICE_TYPE, listener)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if publication is not None and any(_matches(n, publication) for n in listener.names):
                break
            listener.changed.wait(min(left, 0.1))
            listener.changed.clear()
        browser.cancel()
        names = listener.names
        if publication is not None:
            names = [n for n in names if _matches(n, publication)]
        out = []
        # Names that are announced but never answer for must not stall the listing: one
        # deadline for all the look-ups, and at most MAX_SERVERS names looked at.
        deadline = time.monotonic() + RESOLVE_SECONDS
        for n in names[:MAX_SERVERS]:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            info = zc.get_service_info(SERVICE_TYPE, n, timeout=min(1000, left_ms))
            if info is not None and (f := _found(info)) is not None:
                out.append(f)
        return sorted(out, key=lambda f: f.name.lower())
    finally:
        zc.close()


class Ambiguous(LookupError):
    """More than one server announces the same publication name."""


def find(publication: str, timeout: float = 3.0) -> Found | None:
    """The server announcing ``publication`` (case-insensitive), or None; Ambiguous when
    servers at different addresses announce it (one of them is not the right one, and
    nothing in an announcement tells which)."""
    found = browse(timeout, publication)
    if len({(f.address, f.port) for f in found}) > 1:
        raise Ambiguous(", ".join(f"{f.address}:{f.port}" for f in found))
    return found[0] if found else None


def announcement_mismatch(announced: str | None, presented: str | None) -> str | None:
    """What to report when the LAN announcement named another key than the handshake."""
    if announced is None or presented is None or announced == presented:
        return None
    return (f"the LAN announcement of this server named key {announced}, but the server "
            f"presented {presented}: another host may be announcing this name (the "
            "announcement is never trusted; the pin rules decided)")


def resolve_host(host: str) -> bool:
    """True when ``host`` resolves by ordinary means (DNS, hosts file, nss-mdns)."""
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True
