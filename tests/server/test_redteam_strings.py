"""Red-team: client text reaching an administrator's screen through the audit log.

A refused statement's message names what it tried (``PRAGMA "<name>"``), and the audit
line records that message.  JSON escapes C0 controls, but a bidi override (U+202E)
or a C1 control (U+009B, a CSI on many terminals) would be written as it is and obeyed
by the terminal of an administrator reading ``Logs/audit.jsonl``.
"""

from __future__ import annotations

import pytest

import casemate
from casemate.database import make_verifier
from casemate.testing import ServerProcess

NASTY = "\u202eevil\x9b2J\x1b[31m"


def test_refused_statement_text_is_escaped_in_the_audit_log(plain_server: ServerProcess) -> None:
    with plain_server.connect() as admin:
        rec = make_verifier("ro", "ro-password-1", "readonly")
        admin.admin("user_add", name="ro", group="readonly",
                    verifier=[rec.salt, rec.stored_key, rec.server_key, rec.iterations])
    ro = casemate.connect(host="127.0.0.1", port=plain_server.port, user="ro",
                          password="ro-password-1")
    with pytest.raises(casemate.ProgrammingError, match="42501"):
        ro.execute(f'PRAGMA "{NASTY}" = 1')
    ro.close()
    text = (plain_server.db / "Logs" / "audit.jsonl").read_text(encoding="utf-8")
    assert "permission_refused" in text
    assert not any(c in text for c in "\u202e\x9b\x1b"), "raw control characters in the audit log"
