"""What the server's TLS layer (server/tlsproto.py) costs by itself, in process.

Run from the repository root::

    python -m bench.tls_layer_bench [--quick]

A client ``SSLObject`` and the server's ``TLSServerProtocol`` (with a stand-in TCP
transport and an app that answers each request with an 80-byte reply) exchange a
60-byte request and its reply, N times; then the same SSL calls are made directly
(the layer "folded" into its caller, issue 16's item 5), alternating.  The difference
is what folding the layer into the session could save per round trip; everything else
is OpenSSL and the ``ssl`` module's calls, which the layer cannot avoid.  Warm caches:
in the real benchmark two processes alternate on one CPU and TLS costs more.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUEST, REPLY = b"q" * 60, b"r" * 80


def contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from casemate import tls

    key = tls.generate_key()
    tls.write_key(folder / "key.pem", key)
    tls.write_cert(folder / "cert.pem", tls.make_self_signed(key, "bench", ["localhost"]))
    server = tls.server_context(folder / "key.pem", folder / "cert.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    return server, client


class _Tcp:  # the TCP transport below the layer: keeps what it is given
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _App:  # the session above it: one reply per request
    def connection_made(self, t: Any) -> None:
        self.t = t

    def data_received(self, data: Any) -> None:
        self.t.write(REPLY)


async def measure(n: int, rounds: int) -> dict[str, list[float]]:
    from casemate.server.tlsproto import TLSServerProtocol

    with tempfile.TemporaryDirectory() as tmp:
        sctx, cctx = contexts(Path(tmp))
    ci, co = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(ci, co, server_hostname="localhost")
    srv = TLSServerProtocol(sctx, _App, asyncio.get_running_loop().time() + 60)
    tcp = _Tcp()
    srv.connection_made(tcp)  # type: ignore[arg-type]

    def to_client() -> None:
        ci.write(b"".join(tcp.out))
        tcp.out.clear()
    while True:
        try:
            c.do_handshake()
            break
        except ssl.SSLWantReadError:
            if co.pending:
                srv.data_received(co.read())
            to_client()
    buf, sbuf = bytearray(65536), bytearray(65536)

    def through_layer() -> None:
        c.write(REQUEST)
        srv.data_received(co.read())
        to_client()
        c.read(65536, buf)

    sin, sout, sobj = srv._in, srv._out, srv._obj
    assert sobj is not None

    def folded() -> None:
        c.write(REQUEST)
        sin.write(co.read())
        sobj.read(65536, sbuf)
        sobj.write(REPLY)
        tcp.write(sout.read())
        to_client()
        c.read(65536, buf)

    through_layer()  # post-handshake messages out of the way
    times: dict[str, list[float]] = {"layer": [], "folded": []}
    ways: list[tuple[str, Callable[[], None]]] = [("layer", through_layer), ("folded", folded)]
    for r in range(rounds):
        for name, f in (ways if r % 2 == 0 else ways[::-1]):
            t0 = time.process_time()
            for _ in range(n):
                f()
            times[name].append((time.process_time() - t0) / n)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tls_layer_bench",
                                description="The server TLS layer's own cost, in process.")
    p.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    args = p.parse_args(argv)
    n, rounds = (2000, 2) if args.quick else (50_000, 5)
    times = asyncio.run(measure(n, rounds))
    layer, folded = statistics.median(times["layer"]), statistics.median(times["folded"])
    print(f"{n:,} round trips x {rounds} rounds, CPU per round trip (client + server TLS "
          f"work), medians (min-max):")
    for name, vals in times.items():
        print(f"  {name}: {statistics.median(vals) * 1e6:.2f} us "
              f"({min(vals) * 1e6:.2f}-{max(vals) * 1e6:.2f})")
    print(f"the layer's own cost: {(layer - folded) * 1e6:.2f} us per round trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
