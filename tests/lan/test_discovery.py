"""LAN publication for real: servers in one network namespace, clients in another.

Nothing here touches the host's network: both namespaces and the veth pair between
them are made by the test (tests/lan/netns.py) and deleted after it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casemate import tls
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import set_setting

from .netns import LanPair, cannot_make_namespaces, lan_pair

pytestmark = pytest.mark.skipif(bool(why := cannot_make_namespaces()), reason=str(why))


@pytest.fixture
def lan() -> Iterator[LanPair]:
    with lan_pair(7) as pair:
        yield pair


def _serve(db: Path, lan: LanPair, started: list[ServerProcess]) -> ServerProcess:
    s = ServerProcess(db, 0, ("--host", lan.addr_a), prefix=lan.prefix("a")).start()
    started.append(s)
    return s


def _key(server: ServerProcess) -> str:
    m = re.search(r"Key fingerprint \(pinned by clients\): (\S+)", server.log())
    assert m, server.log()
    return m.group(1)


def _in_b(lan: LanPair, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lan.prefix("b"), sys.executable, *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "CM_PW": ADMIN_PASSWORD})


CONNECT = """
import os, sys, casemate
kw = dict(publication=sys.argv[1]) if sys.argv[1] != "-" else {}
conn = casemate.connect(sys.argv[2] if sys.argv[2] != "-" else None, user="admin",
                        password=os.environ["CM_PW"], **kw)
print(conn.security.level, conn.security.fingerprint)
print("note:", conn.security.note)
print(conn.cursor().execute("select 40 + 2").fetchone()[0])
"""


@pytest.fixture
def published(make_db, lan: LanPair) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        sales = _serve(make_db(encrypted=True, name="Sales"), lan, started)
        plain = _serve(make_db(name="Stock"), lan, started)
        yield sales, plain
    finally:
        for s in started:
            s.stop()


def test_servers_lists_encrypted_and_plain_with_markers(lan: LanPair, published) -> None:
    sales, plain = published
    out = _in_b(lan, "-m", "casemate", "servers", "--json", "--timeout", "4")
    assert out.returncode == 0, out.stderr
    found = {f["name"]: f for f in json.loads(out.stdout)}
    assert found["Sales"]["encrypted"] is True
    assert found["Sales"]["fingerprint"] == _key(sales)
    assert found["Sales"]["port"] == sales.port and lan.addr_a in found["Sales"]["addresses"]
    assert found["Stock"]["encrypted"] is False and found["Stock"]["fingerprint"] is None
    assert found["Stock"]["port"] == plain.port
    assert _mdns_sockets(sales.pid, lan.prefix("a"))  # what the loopback test looks for
    text = _in_b(lan, "-m", "casemate", "servers", "--timeout", "4").stdout
    sep = r"\s*\|\s*"  # the table's column separator
    assert re.search(rf"Sales{sep}{re.escape(lan.addr_a)}{sep}{sales.port}{sep}encrypted{sep}"
                     r"sha256:", text), text
    assert re.search(rf"Stock{sep}{re.escape(lan.addr_a)}{sep}{plain.port}{sep}PLAIN", text), text
    # A new key (cert rotate + reload): the announcement follows it.
    old = _key(sales)
    subprocess.run([sys.executable, "-m", "casemate", "cert", str(sales.db), "rotate"],
                   check=True, capture_output=True, timeout=60)
    assert sales.proc is not None
    sales.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "certificate reloaded" not in sales.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    new = tls.spki_fingerprint(tls.load_chain(sales.db / "Resources" / "cert.pem")[0])
    assert new != old
    out = _in_b(lan, "-m", "casemate", "servers", "--json", "--timeout", "3")
    assert {f["name"]: f for f in json.loads(out.stdout)}["Sales"]["fingerprint"] == new


def test_connect_by_publication_name_and_dot_local(lan: LanPair, published,
                                                   casemate_home: Path) -> None:
    sales, _ = published
    out = _in_b(lan, "-c", CONNECT, "Sales", "-")
    assert out.returncode == 0, out.stderr
    # First contact: the announced fingerprint was a hint, the pin rules decided.
    assert out.stdout.splitlines()[0] == f"encrypted-unverified {_key(sales)}"
    assert out.stdout.splitlines()[1:] == ["note: None", "42"]
    known = (casemate_home / "known_servers").read_text()
    assert f"{lan.addr_a}:{sales.port} encrypted {_key(sales)}" in known
    out = _in_b(lan, "-c", CONNECT, "-", "casemate://admin@sales.local")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"encrypted-verified {_key(sales)}"


ACONNECT = """
import asyncio, os, casemate.aio
async def main():
    conn = await casemate.aio.connect(publication="sales", user="admin",
                                      password=os.environ["CM_PW"])
    print(conn.security.level, (await conn.fetch("select 6 * 7"))[0][0])
    await conn.close()
asyncio.run(main())
"""


def test_asyncio_connect_by_publication(lan: LanPair, published) -> None:
    out = _in_b(lan, "-c", ACONNECT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["encrypted-unverified", "42"]


def test_unknown_publication_is_a_clear_error(lan: LanPair, published) -> None:
    out = _in_b(lan, "-c", CONNECT, "Nowhere", "-")
    assert out.returncode != 0
    assert "no server announcing the publication 'Nowhere'" in out.stderr


FAKE = """
import asyncio, sys
from casemate.lan import Publisher
async def main():
    p = Publisher("Decoy", int(sys.argv[1]), [sys.argv[2]], True, "sha256:" + "00" * 32)
    await p.start()
    print("up", flush=True)
    await asyncio.sleep(30)
asyncio.run(main())
"""


def test_announcement_differing_from_the_handshake_is_reported(lan: LanPair, published) -> None:
    sales, _ = published
    decoy = subprocess.Popen([*lan.prefix("a"), sys.executable, "-c", FAKE, str(sales.port),
                              lan.addr_a], stdout=subprocess.PIPE, text=True)
    try:
        assert decoy.stdout is not None and decoy.stdout.readline().strip() == "up"
        out = _in_b(lan, "-c", CONNECT, "Decoy", "-")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"encrypted-unverified {_key(sales)}"
        assert "named key sha256:0000" in out.stdout and _key(sales) in out.stdout
    finally:
        decoy.kill()
        decoy.wait()
        assert decoy.stdout is not None
        decoy.stdout.close()


def _mdns_sockets(pid: int, prefix: tuple[str, ...] = ()) -> list[str]:
    out = subprocess.run([*prefix, "ss", "-uanp"], capture_output=True, text=True, timeout=10)
    return [line for line in out.stdout.splitlines() if f"pid={pid}," in line and ":5353" in line]


def _wait_for_log(s: ServerProcess, line: str, timeout: float = 10) -> None:
    """The server's decision about publication is logged as it starts (in the background)."""
    deadline = time.monotonic() + timeout
    while line not in s.log():
        assert time.monotonic() < deadline, f"not logged in {timeout} s: {line}\n{s.log()}"
        time.sleep(0.05)


def test_loopback_server_publishes_nothing(make_db, server_factory) -> None:
    s = server_factory(make_db(name="Hidden"))  # on 127.0.0.1: "auto" publishes nothing
    _wait_for_log(s, "not announced on the LAN (listening on loopback only)")
    assert "announced on the LAN as" not in s.log()
    assert _mdns_sockets(s.pid) == []  # not even a multicast DNS socket on the host


def test_publication_can_be_switched_off(make_db, lan: LanPair) -> None:
    db = make_db(name="Quiet")
    set_setting(db, "publish_on_lan", '"off"')
    s = ServerProcess(db, 0, ("--host", lan.addr_a), prefix=lan.prefix("a")).start()
    try:
        _wait_for_log(s, "not announced on the LAN (publish_on_lan is off)")
        assert "announced on the LAN as" not in s.log()
        assert _mdns_sockets(s.pid, lan.prefix("a")) == []
    finally:
        s.stop()
