"""A server found by its publication name is pinned under that name too: a stranger who
announces the same name from another address (copying the enc flag and the fingerprint,
which cost nothing to copy) meets the pin, not a first contact (found by an attacker
helper: the pin was keyed by the announced address alone).  Loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

import casemate
from casemate import lan, tls
from casemate.client.known import KnownServers
from casemate.errors import Codes, SecurityError
from casemate.testing import ADMIN_PASSWORD, ServerProcess
from tests.conftest import set_setting


def _announce(monkeypatch: pytest.MonkeyPatch, server: ServerProcess, fp: str | None) -> None:
    """What the LAN answers for "Sales" from now on (lan.find stands for the multicast
    lookup, which tests/lan/test_discovery.py exercises for real)."""
    found = lan.Found("Sales", ("127.0.0.1",), server.port, True, fp)
    monkeypatch.setattr(lan, "find", lambda name, timeout=3.0: found)


@pytest.fixture
def servers(make_db, server_factory):  # type: ignore[no-untyped-def]
    real_db: Path = make_db(name="Sales")
    set_setting(real_db, "encrypt_client_server_connections", "true")
    real: ServerProcess = server_factory(real_db)
    fp = tls.spki_fingerprint(tls.load_chain(real_db / "Resources" / "cert.pem")[0])
    return real, fp, make_db, server_factory


def _connect() -> casemate.Connection:
    return casemate.connect(publication="Sales", user="admin", password=ADMIN_PASSWORD)


def test_a_plaintext_impostor_of_a_pinned_publication_is_refused(servers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real, fp, make_db, server_factory = servers
    _announce(monkeypatch, real, fp)
    with _connect() as c:
        assert c.security.encrypted
    assert KnownServers().get("lan:sales") is not None
    impostor: ServerProcess = server_factory(make_db(name="Sales"))  # plaintext, elsewhere
    _announce(monkeypatch, impostor, fp)  # copies the name, enc=1 and the fingerprint
    with pytest.raises(SecurityError) as err:
        _connect()
    assert err.value.code == Codes.NOT_ENCRYPTED and "downgrade" in str(err.value)
    assert "casemate trust forget lan:sales" in str(err.value)
    assert "logged in" not in impostor.log() and "authentication" not in impostor.log()


def test_an_encrypted_impostor_of_a_pinned_publication_is_refused(servers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real, fp, make_db, server_factory = servers
    _announce(monkeypatch, real, fp)
    _connect().close()
    other_db: Path = make_db(name="Sales")
    set_setting(other_db, "encrypt_client_server_connections", "true")
    impostor: ServerProcess = server_factory(other_db)  # its own key
    _announce(monkeypatch, impostor, fp)
    with pytest.raises(SecurityError) as err:
        _connect()
    assert "presented a different key" in str(err.value)


def test_forget_takes_the_names_the_hint_gives(servers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from casemate.cli.main import trust_forget
    real, fp, _, _ = servers
    _announce(monkeypatch, real, fp)
    _connect().close()
    keys = ["lan:sales", f"127.0.0.1:{real.port}"]
    assert all(KnownServers().get(k) for k in keys)
    r = CliRunner().invoke(trust_forget, keys)
    assert r.exit_code == 0, r.output
    assert not any(KnownServers().get(k) for k in keys)
    assert CliRunner().invoke(trust_forget, ["lan:sales"]).exit_code == 1
