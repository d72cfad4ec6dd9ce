"""The floor under a round trip: echo servers that do nothing else, plain and encrypted.

Run from the repository root::

    python -m bench.floor_bench [--quick] [--rounds N] [--no-pin]

Four servers answer each 60-byte request with an 80-byte reply and nothing else, each
in a process of its own, on the event loop Casemate's server uses (uvloop where
installed): ``plain`` (a protocol on TCP), ``casemate-tls`` (the same protocol behind
Casemate's server TLS layer, server/tlsproto.py), ``uvloop-tls`` (the event loop's own
TLS transport) and ``blocking-tls`` (``ssl.SSLSocket`` in a blocking loop, as a process
per connection serves, PostgreSQL's way).  The client sends and reads with the blocking
client's own socket code (client/blocking.TLSSocket for TLS).  Servers and client are
pinned to one CPU, rounds interleave the servers, and the table gives the medians.

What it tells: the CPU that a round trip costs before any database work, and what TLS
adds to it when nothing else runs.  Casemate's lookups (bench.tls_bench) cost this plus
the request path; the ratio plain/encrypted of these echo servers is the best any
server built on them can reach for small round trips on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import choose_cpu, pin_client, pin_note, process_cpu, taskset_prefix

KINDS = ("plain", "casemate-tls", "uvloop-tls", "blocking-tls")
REQUEST, REPLY = b"q" * 60, b"r" * 80


def _server_context(folder: Path) -> ssl.SSLContext:
    from casemate import tls

    return tls.server_context(folder / "key.pem", folder / "cert.pem")


def _serve(kind: str, folder: Path) -> None:
    """Server process: print the port, then echo until the client goes."""
    ctx = _server_context(folder) if kind != "plain" else None
    if kind == "blocking-tls":
        assert ctx is not None
        ls = socket.create_server(("127.0.0.1", 0))
        print(ls.getsockname()[1], flush=True)
        conn, _ = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(conn, server_side=True)
        while s.recv(65536):
            s.sendall(REPLY)
        return

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                self.t.write(REPLY)  # type: ignore[attr-defined]

            def connection_lost(self, exc: Exception | None) -> None:
                done.set()

        if kind == "casemate-tls":
            from casemate.server.tlsproto import TLSServerProtocol

            assert ctx is not None
            srv = await loop.create_server(
                lambda: TLSServerProtocol(ctx, Echo, loop.time() + 60), "127.0.0.1", 0)
        else:
            srv = await loop.create_server(Echo, "127.0.0.1", 0,
                                           ssl=ctx if kind == "uvloop-tls" else None)
        print(srv.sockets[0].getsockname()[1], flush=True)
        await done.wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


class Target:
    def __init__(self, kind: str, folder: Path, cpu: int | None) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [*taskset_prefix(cpu), sys.executable, "-m", "bench.floor_bench", "--serve", kind,
             str(folder)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline())
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: object = raw
        if kind != "plain":
            from casemate.client.blocking import TLSSocket

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            self.sock = TLSSocket.handshake(raw, ctx, "localhost", None)
        self.buf = bytearray(65536)
        self.run(100)  # post-handshake messages out of the way

    def run(self, n: int) -> None:
        send, recv, buf = self.sock.sendall, self.sock.recv_into, self.buf  # type: ignore[attr-defined]
        for _ in range(n):
            send(REQUEST)
            got = 0
            while got < len(REPLY):
                k = recv(buf)
                if not k:
                    raise RuntimeError(f"{self.kind}: the server closed the connection")
                got += k

    def close(self) -> None:
        self.sock.close()  # type: ignore[attr-defined]
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(n: int, rounds: int, cpu: int | None) -> dict[str, list[tuple[float, float, float]]]:
    from casemate import tls

    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = tls.generate_key()
        tls.write_key(folder / "key.pem", key)
        tls.write_cert(folder / "cert.pem", tls.make_self_signed(key, "floor", ["localhost"]))
        targets = [Target(k, folder, cpu) for k in KINDS]
        try:
            for r in range(rounds):
                for t in (targets if r % 2 == 0 else targets[::-1]):
                    s0, c0, w0 = process_cpu(t.proc.pid), time.process_time(), time.perf_counter()
                    t.run(n)
                    wall = time.perf_counter() - w0
                    client = time.process_time() - c0
                    server = process_cpu(t.proc.pid) - s0
                    results[t.kind].append((server / n, client / n, wall / n))
        finally:
            for t in targets:
                t.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor_bench",
                                description="Echo servers, plain and encrypted: the floor "
                                            "under a round trip.")
    p.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick: 2)")
    p.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    p.add_argument("--serve", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        _serve(args.serve[0], Path(args.serve[1]))
        return 0
    n = 2000 if args.quick else 20_000
    rounds = args.rounds or (2 if args.quick else 5)
    cpu = choose_cpu(not args.no_pin)
    pin_client(cpu)
    res = measure(n, rounds, cpu)
    print(f"{n:,} round trips x {rounds} rounds; CPU pinning: {pin_note(cpu, not args.no_pin)}")
    print("| server | server CPU µs | client CPU µs | wall µs | plain/this (wall) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    plain_wall = statistics.median(w for _, _, w in res["plain"])
    for kind, vals in res.items():
        s, c, w = (statistics.median(v[i] for v in vals) for i in range(3))
        print(f"| {kind} | {s * 1e6:.1f} | {c * 1e6:.1f} | {w * 1e6:.1f} | "
              f"{plain_wall / w:.2f}x |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
