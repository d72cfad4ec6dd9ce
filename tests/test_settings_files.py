"""casemate.toml files as real servers read them: older files, and keys added to them."""

from __future__ import annotations

import http.client
import re
from pathlib import Path
from typing import Any

from casemate.settings import load_settings, parse_settings
from casemate.settings_file import set_toml_value
from tests.web import free_port, web_url

# casemate.toml as the first version of `casemate init` wrote it: three sections, and none
# of the keys (or the [admin_web], [access], [methods] sections) added since.
FIRST_VERSION_TOML = '''\
# Casemate database settings. Read once at server start:
# restart the server after changing them.

[network]
# Name under which the server publishes this database (also the certificate subject).
publication_name = "Old"
# Addresses to listen on; use ["0.0.0.0", "::"] to accept remote workstations.
listen = ["127.0.0.1"]
# TCP port (Casemate's default is 19812; 0 picks a free port).
port = 19812
# Encrypt all client/server connections with TLS (takes effect at the next start).
encrypt_client_server_connections = false
# Lowest TLS version accepted when encryption is on: "1.2" or "1.3".
min_tls_version = "1.2"
# When encrypted, also require a client certificate signed by Resources/client-ca.pem.
require_client_certificate = false

[storage]
# Storage engine: "sqlite" (embedded, data in Data/).
backend = "sqlite"
# How long a writer waits for another session's write lock before "database is busy".
busy_timeout_seconds = 5.0
# Threads that run storage calls, so no session stalls the others.
worker_threads = 16

[limits]
# Most sessions connected at once.
max_sessions = 1000
# Largest protocol message accepted (statement plus parameters).
max_message_bytes = 16777216
# A client must finish TLS, handshake and login within this time.
login_timeout_seconds = 10.0
'''


def old_db(make_db: Any) -> Path:
    db: Path = make_db(name="Old")
    (db / "casemate.toml").write_text(FIRST_VERSION_TOML, encoding="utf-8")
    return db


def test_a_first_version_file_still_serves(make_db: Any, server_factory: Any) -> None:
    db = old_db(make_db)
    s = load_settings(db / "casemate.toml")
    assert s == parse_settings({"network": {"publication_name": "Old"}})  # the rest: defaults
    server = server_factory(db)
    with server.connect() as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 + 1")
        assert cur.fetchone() == (2,)


def test_keys_a_file_lacks_are_added_with_their_comment(make_db: Any,
                                                        server_factory: Any) -> None:
    # The web page of an old database: [admin_web] is not in its file. Setting its keys
    # used to fail ("not in the settings file"); they are now added, commented.
    db = old_db(make_db)
    path = db / "casemate.toml"
    text = path.read_text(encoding="utf-8")
    text = set_toml_value(text, "admin_web", "enabled", True)
    text = set_toml_value(text, "admin_web", "port", free_port())
    text = set_toml_value(text, "limits", "statement_timeout_seconds", 2.5)  # section exists
    path.write_text(text, encoding="utf-8")
    assert "# Serve the web administration page (admin users only).\nenabled = true" in text
    assert text.startswith(FIRST_VERSION_TOML.rstrip("\n"))  # nothing before was changed
    s = load_settings(path)
    assert s.admin_web.enabled and s.limits.statement_timeout_seconds == 2.5
    assert s.network == parse_settings({"network": {"publication_name": "Old"}}).network
    server = server_factory(db)
    url = web_url(server)
    host, port = re.match(r"https?://\[?([^\]/]+?)\]?:(\d+)", url).groups()  # type: ignore[union-attr]
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/login")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
