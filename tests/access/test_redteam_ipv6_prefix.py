"""Red-team: one IPv6 host picks any address of its /64, so per-address caps count /64s.

A namespace of its own holds a server listening on ``::`` and extra addresses of one
/64 on its loopback; a stranger opens connections that never log in from several of
those addresses.  Counted per exact address, they fill the server's total cap of
connections not logged in, and an administrator from elsewhere is refused ("server
busy"); counted per /64, the stranger meets its per-address cap and the others get in.
Skipped, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from casemate.settings_file import set_toml_value
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import set_setting

PORT = 19813
PREFIX = "2001:db8:77::"

FLOOD = """
import json, socket, sys, time, casemate
port, password, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
held = []
for host in range(2, 7):  # 5 addresses of one /64, the server's per-address cap each
    for _ in range(64):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind((f"{prefix}{host}", 0))
        s.connect((prefix + "1", port))
        held.append(s)
time.sleep(0.5)
try:
    casemate.connect(host="::1", port=port, user="admin", password=password).close()
    print(json.dumps("ok"))
except casemate.Error as e:
    print(json.dumps(str(e)))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (tools/install-test-deps.sh)")
    ns = f"cm{os.getpid() % 1000000}-v6"
    try:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        for host in range(1, 7):
            _ip("-n", ns, "addr", "add", f"{PREFIX}{host}/64", "dev", "lo", "nodad")
    except subprocess.CalledProcessError as e:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"cannot make a network namespace here: {e.stderr.decode().strip()}")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_address_keys() -> None:
    from casemate.server.admission import address_key

    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:2") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:192.0.2.7") == address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::1") == "::1"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("?") == "?"


def test_many_addresses_of_one_prefix_do_not_lock_others_out(make_db, netns: str) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    toml = db / "casemate.toml"
    toml.write_text(set_toml_value(toml.read_text(), "network", "listen", ["::"]))
    set_setting(db, "login_timeout_seconds", "20")
    server = ServerProcess(db, PORT, prefix=("ip", "netns", "exec", netns)).start()
    try:
        p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", FLOOD,
                            str(PORT), ADMIN_PASSWORD, PREFIX], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == "ok"
    finally:
        server.stop()
