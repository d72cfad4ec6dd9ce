"""A small threaded TCP relay on 127.0.0.1 (port 0) that records every byte, both ways.

Modes (``Relay.mode``, may be changed between connections):

* ``"transparent"``: copies bytes between the client and ``upstream_port``.
* ``"strip"``: answers a TLS ClientHello (first byte 0x16) like a plain Casemate
  server does (a fatal ``handshake_failure`` alert) and relays anything else in
  plaintext to the upstream: an attacker that strips encryption.
* ``"refuse"``: answers any connection at once with a plaintext ``ERROR 28000``
  "refused by the server's access rules" frame, as a plain server denying the
  address does: an attacker forging a refusal.
* ``"mitm"``: terminates TLS with its own certificate (``mitm_context``), opens
  its own TLS connection to the upstream, and relays the *decrypted* bytes: a
  certificate-swapping man in the middle.  ``Flow.c2s``/``s2c`` then hold the
  plaintext the attacker could read.

Each accepted connection is one :class:`Flow`, appended to ``Relay.flows``.
``Relay.hold_replies`` (transparent mode) keeps what the server sends in
``Flow.held`` instead of forwarding it, and ``Flow.cut`` ends a flow: together
they lose a reply after the server acted on the request.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from pathlib import Path

from casemate import tls
from casemate.protocol import Msg, encode_frame

__all__ = ["FORGED_REFUSAL", "Flow", "Relay", "TLS_ALERT_HANDSHAKE_FAILURE", "mitm_server_context"]

# The bytes a plain Casemate server sends to a TLS ClientHello.
TLS_ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"
FLOW_DEADLINE = 30.0
FORGED_REFUSAL = encode_frame(Msg.ERROR, {
    "code": "28000",
    "message": "connections from this address are refused by the server's access rules"})


class Flow:
    """One client connection through the relay."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.c2s = bytearray()  # client -> server (plaintext in "mitm" mode)
        self.s2c = bytearray()  # server -> client
        self.first_byte: int | None = None
        self.refused_tls = False  # "strip": answered a ClientHello with the alert
        self.upstream_connected = False
        self.client_handshake_ok = False  # "mitm": the client finished TLS with us
        self.error: str | None = None
        self.done = threading.Event()
        self.held = bytearray()  # server -> client bytes kept back (Relay.hold_replies)
        self.cut = threading.Event()  # set: close both sides now


def mitm_server_context(folder: Path, sans: list[str] | None = None) -> ssl.SSLContext:
    """A server context with a NEW self-signed key/certificate (written to ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = tls.generate_key()
    cert = tls.make_self_signed(key, "Evil Relay", sans or ["127.0.0.1", "localhost"])
    key_path, cert_path = folder / "mitm-key.pem", folder / "mitm-cert.pem"
    tls.write_key(key_path, key)
    tls.write_cert(cert_path, cert)
    return tls.server_context(key_path, cert_path)


class Relay:
    def __init__(self, upstream_port: int, mode: str = "transparent",
                 mitm_context: ssl.SSLContext | None = None,
                 upstream_host: str = "127.0.0.1") -> None:
        if mode == "mitm" and mitm_context is None:
            raise ValueError("mode 'mitm' needs mitm_context")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.mode = mode
        self.mitm_context = mitm_context
        self.flows: list[Flow] = []
        self.hold_replies = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self._lsock.settimeout(0.05)
        self.port: int = self._lsock.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, name="relay-accept",
                                          daemon=True)
        self._accepter.start()

    # -- public ----------------------------------------------------------
    @property
    def c2s(self) -> bytes:
        """Everything the clients sent, all flows concatenated."""
        return b"".join(bytes(f.c2s) for f in self.flows)

    @property
    def s2c(self) -> bytes:
        return b"".join(bytes(f.s2c) for f in self.flows)

    def url(self, password: str, user: str = "admin") -> str:
        return f"casemate://{user}:{password}@127.0.0.1:{self.port}"

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every flow so far has finished (so its recording is complete)."""
        deadline = time.monotonic() + timeout
        for f in list(self.flows):
            f.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._lsock.close()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            flow = Flow(self.mode)
            self.flows.append(flow)
            t = threading.Thread(target=self._serve, args=(client, flow), name="relay-flow",
                                 daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _upstream(self) -> socket.socket:
        sock = socket.create_connection((self.upstream_host, self.upstream_port), 5)
        return sock

    def _serve(self, client: socket.socket, flow: Flow) -> None:
        socks: list[socket.socket] = [client]
        try:
            client.settimeout(5)
            if flow.mode == "transparent":
                up = self._upstream()
                socks.append(up)
                flow.upstream_connected = True
                self._pump(client, up, flow)
            elif flow.mode == "strip":
                first = client.recv(1, socket.MSG_PEEK)
                if not first:
                    return
                flow.first_byte = first[0]
                if first[0] == 0x16:
                    flow.refused_tls = True
                    client.sendall(TLS_ALERT_HANDSHAKE_FAILURE)
                    client.shutdown(socket.SHUT_WR)
                    _drain(client, 2.0)
                    return
                up = self._upstream()
                socks.append(up)
                flow.upstream_connected = True
                self._pump(client, up, flow)
            elif flow.mode == "refuse":
                first = client.recv(1, socket.MSG_PEEK)
                flow.first_byte = first[0] if first else None
                client.sendall(FORGED_REFUSAL)
                client.shutdown(socket.SHUT_WR)
                while chunk := client.recv(65536):
                    flow.c2s += chunk
            elif flow.mode == "mitm":
                assert self.mitm_context is not None
                tclient = self.mitm_context.wrap_socket(client, server_side=True)
                socks[0] = tclient
                flow.client_handshake_ok = True
                up = tls.client_context(None).wrap_socket(self._upstream(),
                                                          server_hostname=self.upstream_host)
                socks.append(up)
                flow.upstream_connected = True
                self._pump(tclient, up, flow)
            else:
                flow.error = f"unknown mode {flow.mode!r}"
        except (OSError, ssl.SSLError) as e:
            flow.error = f"{type(e).__name__}: {e}"
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
            flow.done.set()

    def _pump(self, client: socket.socket, up: socket.socket, flow: Flow) -> None:
        """Copy both ways until both sides are done (plain half-close is forwarded)."""
        route = {client: (up, flow.c2s), up: (client, flow.s2c)}
        reading = [client, up]
        deadline = time.monotonic() + FLOW_DEADLINE
        for s in reading:
            s.settimeout(5)
        while (reading and not self._stop.is_set() and not flow.cut.is_set()
               and time.monotonic() < deadline):
            ready = [s for s in reading if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(reading, [], [], 0.05)
            for src in ready:
                dst, record = route[src]
                try:
                    data = src.recv(65536)
                except (OSError, ssl.SSLError):
                    data = b""
                if data and src is up and self.hold_replies:
                    flow.held += data
                    continue
                if data:
                    record += data
                    try:
                        dst.sendall(data)
                    except (OSError, ssl.SSLError):
                        return
                    continue
                reading.remove(src)
                if isinstance(dst, ssl.SSLSocket) or isinstance(src, ssl.SSLSocket):
                    return  # TLS has no half-close worth forwarding here: end the flow
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)


def _drain(sock: socket.socket, seconds: float) -> None:
    """Read and discard until EOF (so that close does not reset the connection)."""
    sock.settimeout(seconds)
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass
