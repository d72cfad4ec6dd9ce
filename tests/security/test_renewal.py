"""A certificate the server generated itself is renewed, with the same key, before it expires."""

from casemate import tls
from casemate.database import GENERATED_MARKER, DatabaseFolder


def test_self_generated_certificate_renewed_with_same_key(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    folder = DatabaseFolder(db)
    key = tls.load_key(folder.key_path)
    short = tls.make_self_signed(key, "db-short", ["localhost", "127.0.0.1"], days=10)
    tls.write_cert(folder.cert_path, short)
    (folder.resources / GENERATED_MARKER).write_text(tls.spki_fingerprint(short) + "\n")
    before = tls.inspect_cert(short)
    assert before.days_left < 30

    server = server_factory(db)
    after = tls.inspect_cert(tls.load_chain(folder.cert_path)[0])
    assert after.days_left > 300                         # renewed at start
    assert after.spki_sha256 == before.spki_sha256       # same key: pinned clients keep trusting
    assert "renewed the self-generated certificate" in server.log()
    with server.connect() as conn:
        assert conn.security.fingerprint == before.spki_sha256


def test_user_certificate_is_never_renewed(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db(encrypted=True)
    folder = DatabaseFolder(db)
    key = tls.load_key(folder.key_path)
    short = tls.make_self_signed(key, "db-user", ["localhost", "127.0.0.1"], days=10)
    tls.write_cert(folder.cert_path, short)
    (folder.resources / GENERATED_MARKER).unlink()  # installed by the user, not generated
    before = folder.cert_path.read_bytes()
    server = server_factory(db)
    assert folder.cert_path.read_bytes() == before  # used as it is, never rewritten
    assert "certificate expires in" in server.log()  # the 30-day warning instead
