"""A LAN deployment built from network namespaces, with links cut under open transactions.

The server runs in its own namespace behind a bridge, listening on every address
(``0.0.0.0`` and ``::``); each workstation is a namespace joined to the bridge by a
veth pair.  Addresses are 10.250.0.0/24, inside the namespaces only: nothing is sent
anywhere else.  Cutting a workstation's link (``ip link set ... down``) and killing
its program is the workstation that vanished in the middle of a transaction: no FIN,
no RST ever reaches the server.  The tests check that its write lock is released
within the documented time and the other workstations' writers proceed, and that a
client notices a server that vanished.  Skipped, saying why, where namespaces cannot
be made (not root, no iproute2, no CAP_NET_ADMIN).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casemate.settings_file import set_toml_value
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import set_setting

SERVER_IP = "10.250.0.1"
PORT = 19812  # the namespace has its own ports: the default one is free there


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lan:
    """The namespaces of one test: ``server`` and the workstations ``ws[i]``."""

    server: str
    ws: list[str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def cut(self, i: int) -> None:
        """Pull workstation i's cable (its end of the link goes down, and so the link)."""
        _ip("-n", self.ws[i], "link", "set", f"eth{i}", "down")

    def python(self, ns: str, script: str, *args: str) -> subprocess.Popen[str]:
        """Run a Python client program in namespace ``ns`` (our source, our environment)."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p


def _make_lan(prefix: str, workstations: int) -> Lan:
    lan = Lan(f"{prefix}-srv", [f"{prefix}-ws{i}" for i in range(workstations)])
    _ip("netns", "add", lan.server)
    _ip("-n", lan.server, "link", "set", "lo", "up")
    _ip("-n", lan.server, "link", "add", "br0", "type", "bridge")
    _ip("-n", lan.server, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
    _ip("-n", lan.server, "link", "set", "br0", "up")
    for i, ws in enumerate(lan.ws):
        _ip("netns", "add", ws)
        _ip("-n", ws, "link", "set", "lo", "up")
        _ip("link", "add", f"{prefix[-6:]}p{i}", "netns", lan.server, "type", "veth",
            "peer", "name", f"eth{i}", "netns", ws)
        _ip("-n", lan.server, "link", "set", f"{prefix[-6:]}p{i}", "master", "br0", "up")
        _ip("-n", ws, "addr", "add", f"10.250.0.{10 + i}/24", "dev", f"eth{i}")
        _ip("-n", ws, "link", "set", f"eth{i}", "up")
    return lan


def _delete(lan: Lan) -> None:
    for p in lan.procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
    for ns in [*lan.ws, lan.server]:  # deleting a namespace deletes its links
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (tools/install-test-deps.sh)")
    prefix = f"cm{os.getpid() % 1000000}"
    try:
        made = _make_lan(prefix, 2)
    except subprocess.CalledProcessError as e:
        _delete(Lan(f"{prefix}-srv", [f"{prefix}-ws{i}" for i in range(2)]))
        pytest.skip(f"cannot make network namespaces here: {e.stderr.decode().strip()}")
    try:
        yield made
    finally:
        _delete(made)


def _serve(lan: Lan, db: Path, **settings: str) -> ServerProcess:
    toml = db / "casemate.toml"
    toml.write_text(set_toml_value(toml.read_text(), "network", "listen", ["0.0.0.0", "::"]))
    for k, v in settings.items():
        set_setting(db, k, v)
    server = ServerProcess(db, PORT, prefix=("ip", "netns", "exec", lan.server)).start()
    with lan.python(lan.server, SETUP, _url("127.0.0.1")) as p:
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
    return server


def _url(host: str) -> str:
    return f"casemate://admin:{ADMIN_PASSWORD}@{host}:{PORT}"


SETUP = """
import sys, casemate
with casemate.connect(sys.argv[1]) as c:
    c.execute("CREATE TABLE t (who TEXT)")
    c.commit()
"""

# Takes the write lock, says so, then waits for ever (until killed).
HOLDER = """
import sys, time, casemate
c = casemate.connect(sys.argv[1], keepalive=float(sys.argv[2]), reconnect_attempts=0)
c.execute("INSERT INTO t VALUES ('holder')")
print("holding", flush=True)
time.sleep(600)
"""

# Writes as soon as the lock allows; prints how long that took, and what it met.
WRITER = """
import json, sys, time, casemate
c = casemate.connect(sys.argv[1], reconnect_attempts=0)
t0, busy = time.monotonic(), 0
while time.monotonic() - t0 < float(sys.argv[2]):
    try:
        c.execute("INSERT INTO t VALUES ('writer')")
        c.commit()
        break
    except casemate.OperationalError as e:
        if e.code != "55P03":
            raise
        busy += 1
        c.rollback()
else:
    print(json.dumps({"gave_up": True, "busy": busy}))
    sys.exit(0)
rows = c.execute("SELECT who FROM t ORDER BY who").fetchall()
print(json.dumps({"seconds": time.monotonic() - t0, "busy": busy, "rows": rows}))
"""


def _hold_and_vanish(lan: Lan, client_keepalive: float = 30) -> float:
    """Workstation 0 takes the write lock, then its cable is pulled and its program killed.
    Returns the (monotonic) time of the cut."""
    holder = lan.python(lan.ws[0], HOLDER, _url(SERVER_IP), str(client_keepalive))
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.strip() == "holding", holder.communicate(timeout=10)
    time.sleep(0.5)  # it sits in its transaction: every byte has been acknowledged
    lan.cut(0)
    cut = time.monotonic()
    holder.send_signal(signal.SIGKILL)  # its kernel cannot send FIN or RST: the link is down
    holder.wait(10)
    return cut


def _write_from_ws1(lan: Lan, give_up: float) -> dict[str, object]:
    writer = lan.python(lan.ws[1], WRITER, _url(SERVER_IP), str(give_up))
    out, err = writer.communicate(timeout=give_up + 30)
    assert writer.returncode == 0, err
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "tls"])
def test_keepalive_releases_a_vanished_workstations_lock(lan, make_db, encrypted) -> None:  # type: ignore[no-untyped-def]
    """Only TCP keepalive (the in-transaction limit is off): the server probes the silent
    peer and ends its session after network.keepalive_seconds."""
    server = _serve(lan, make_db(encrypted=encrypted), keepalive_seconds="4",
                    idle_in_transaction_timeout_seconds="0")
    try:
        cut = _hold_and_vanish(lan)
        result = _write_from_ws1(lan, give_up=20)
        released = time.monotonic() - cut
        assert "gave_up" not in result, f"the lock was never released: {result}"
        assert result["rows"] == [["writer"]]  # the holder's insert was rolled back
        assert released < 4 + 3, released  # keepalive_seconds, plus slack
    finally:
        server.stop()
    log = server.log()
    assert "rolling back its open transaction" in log, log
    assert ("encrypted TLS" in log) is encrypted  # the holder's login line


def test_idle_in_transaction_limit_releases_the_lock(lan, make_db) -> None:  # type: ignore[no-untyped-def]
    """Keepalive off on the server: the in-transaction limit alone ends the session."""
    server = _serve(lan, make_db(), keepalive_seconds="0",
                    idle_in_transaction_timeout_seconds="3")
    try:
        cut = _hold_and_vanish(lan)
        result = _write_from_ws1(lan, give_up=20)
        released = time.monotonic() - cut
        assert "gave_up" not in result, f"the lock was never released: {result}"
        assert result["rows"] == [["writer"]]
        assert released < 3 + 3, released
    finally:
        server.stop()
    assert "idle in a transaction for 3 s" in server.log()


# Waits for a reply from the server (its INSERT queues behind another's write lock),
# then reports how long it waited and what ended the wait.
WAITER = """
import json, sys, time, casemate
c = casemate.connect(sys.argv[1], keepalive=float(sys.argv[2]), reconnect_attempts=0)
c.execute("SELECT 1").fetchall()
c.rollback()
print("sending", flush=True)
t0 = time.monotonic()
try:
    c.execute("INSERT INTO t VALUES ('waiter')")
    print(json.dumps({"seconds": time.monotonic() - t0, "error": None}))
except casemate.Error as e:
    print(json.dumps({"seconds": time.monotonic() - t0, "error": str(e), "code": e.code}))
"""


def test_client_notices_a_vanished_server(lan, make_db) -> None:  # type: ignore[no-untyped-def]
    """A workstation waiting for a reply (its statement queues for the write lock, up to
    a long busy timeout) loses the server: keepalive ends the wait, not a minute later."""
    server = _serve(lan, make_db(), busy_timeout_seconds="60")
    try:
        holder = lan.python(lan.ws[1], HOLDER, _url(SERVER_IP), "30")
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        waiter = lan.python(lan.ws[0], WAITER, _url(SERVER_IP), "3")
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "sending"
        time.sleep(0.5)  # the INSERT has reached the server, which holds it for the lock
        t0 = time.monotonic()
        lan.cut(0)  # the server is gone, as far as workstation 0 can tell
        out, err = waiter.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert waiter.returncode == 0, err
        result = json.loads(out)
        assert result["code"] == "08006", result  # connection lost, not a server error
        assert elapsed < 3 + 4, elapsed
    finally:
        server.stop()


# Connects, waits for the test's word, then sends a statement and reports what happened.
SENDER = """
import json, sys, time, casemate
c = casemate.connect(sys.argv[1], keepalive=float(sys.argv[2]), reconnect_attempts=0)
c.autocommit = True
c.execute("SELECT 1").fetchall()
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
try:
    c.execute("SELECT 2").fetchall()
    print(json.dumps({"seconds": time.monotonic() - t0, "code": None}))
except casemate.Error as e:
    print(json.dumps({"seconds": time.monotonic() - t0, "error": str(e), "code": e.code}))
"""


def test_client_sending_to_a_vanished_server_fails(lan, make_db) -> None:  # type: ignore[no-untyped-def]
    """The request itself is never acknowledged (no keepalive probe is sent while it is in
    flight): TCP_USER_TIMEOUT ends the wait after the client's keepalive time."""
    server = _serve(lan, make_db())
    try:
        sender = subprocess.Popen(
            ["ip", "netns", "exec", lan.ws[0], sys.executable, "-c", SENDER, _url(SERVER_IP),
             "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        lan.procs.append(sender)
        assert sender.stdout is not None and sender.stdout.readline().strip() == "ready"
        lan.cut(0)
        out, err = sender.communicate("go\n", timeout=30)
        assert sender.returncode == 0, err
        result = json.loads(out)
        # Connection lost: 08007 because an autocommit statement was in flight (the client
        # cannot know whether a statement it sent in autocommit ran), never a server error.
        assert result["code"] == "08007", result
        assert result["seconds"] < 3 + 3, result
    finally:
        server.stop()
