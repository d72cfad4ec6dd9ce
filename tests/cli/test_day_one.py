"""The command line as psql and pg_ctl users expect it (issue 17, items 3, 4, 5, 9):
the password asked on a terminal, connection variables and the passwords file,
range-checked numbers, ``serve --detach`` / ``stop``, and a default install without
SQLAlchemy.  Commands run as real processes; prompts through a pseudo-terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pexpect
import pytest

import casemate
from casemate.client.params import parse_params
from casemate.errors import PasswordsFileWarning
from casemate.testing import ADMIN_PASSWORD, ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def _casemate(*args: str, env: dict[str, str] | None = None,
              stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "casemate", *args], input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "casemate", *args], encoding="utf-8",
                         timeout=30, env={**os.environ, "COLUMNS": "100"})


# -- item 4: the password is asked on a terminal ------------------------------------

@pytest.mark.parametrize("command", [["status"], ["sessions"], ["shell", "-c", "SELECT 41 + 1"],
                                     ["user", "list"]])
def test_admin_commands_ask_for_the_password_on_a_terminal(plain_server: ServerProcess,
                                                          command: list[str]) -> None:
    url = f"casemate://admin@127.0.0.1:{plain_server.port}"
    child = _spawn(command[0], *command[1:2], url, *command[2:]) if command[0] == "user" \
        else _spawn(command[0], url, *command[1:])
    child.expect("Password for user admin: ")
    child.sendline(ADMIN_PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "pass password=" not in out
    expected = {"status": "Uptime:", "sessions": "session", "shell": "42", "user": "admin"}
    assert expected[command[0]] in out


def test_wrong_password_at_the_prompt(plain_server: ServerProcess) -> None:
    child = _spawn("status", f"casemate://admin@127.0.0.1:{plain_server.port}")
    child.expect("Password for user admin: ")
    child.sendline("wrong")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and "28P01" in child.before


def test_without_a_terminal_the_error_speaks_cli(plain_server: ServerProcess) -> None:
    r = _casemate("status", f"casemate://admin@127.0.0.1:{plain_server.port}")
    assert r.returncode == 2
    assert "no password for user 'admin'" in r.stderr
    assert "password=" not in r.stderr and "CASEMATE_PASSWORD" in r.stderr
    assert "casemate://USER:PASSWORD@HOST" in r.stderr and "Traceback" not in r.stderr


# -- item 3: connection variables, passwords file, URL strictness -------------------

def test_environment_variables_fill_the_url(plain_server: ServerProcess,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEMATE_HOST", "127.0.0.1")
    monkeypatch.setenv("CASEMATE_PORT", str(plain_server.port))
    monkeypatch.setenv("CASEMATE_USER", "admin")
    monkeypatch.setenv("CASEMATE_PASSWORD", ADMIN_PASSWORD)
    with casemate.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    r = _casemate("shell", "casemate://", "-c", "SELECT 2")
    assert r.returncode == 0 and "2" in r.stdout, r.stderr
    monkeypatch.setenv("CASEMATE_PORT", "1")  # the URL wins over the environment
    with casemate.connect(f"casemate://127.0.0.1:{plain_server.port}") as conn:
        assert conn.params.user == "admin"
    monkeypatch.setenv("CASEMATE_PORT", "70000")
    with pytest.raises(casemate.InterfaceError, match="CASEMATE_PORT '70000' is out of range"):
        casemate.connect()
    monkeypatch.setenv("CASEMATE_PORT", "db")
    with pytest.raises(casemate.InterfaceError, match="CASEMATE_PORT 'db' is not a number"):
        casemate.connect()


def _passwords(home: Path, text: str, mode: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "passwords"
    path.write_text(text)
    path.chmod(mode)


def test_passwords_file_like_pgpass(plain_server: ServerProcess, casemate_home: Path) -> None:
    port = plain_server.port
    # \: and \\ are a colon and a backslash inside a field; the first matching line wins
    pw = ADMIN_PASSWORD
    _passwords(casemate_home, f"# comment\nother\\:host:{port}:admin:nope\n"
                              f"127.0.0.1:{port}:admin:{pw}\n*:*:*:x\\:y\\\\z\n", 0o600)
    with casemate.connect(f"casemate://admin@127.0.0.1:{port}") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert parse_params("casemate://bob@elsewhere").password == "x:y\\z"
    assert parse_params(host="other:host", port=port, user="admin").password == "nope"
    # readable by group or others: ignored, with a warning, as libpq does with .pgpass
    (casemate_home / "passwords").chmod(0o640)
    with pytest.warns(PasswordsFileWarning, match="chmod 600"), \
            pytest.raises(casemate.InterfaceError) as e:
        casemate.connect(f"casemate://admin@127.0.0.1:{port}")
    assert e.value.code == "28P02"
    r = _casemate("status", f"casemate://admin@127.0.0.1:{port}")
    assert r.returncode == 2 and "warning:" in r.stderr and "is ignored" in r.stderr


@pytest.mark.parametrize(("url", "message"), [
    ("casemate://admin:pw@localhost/mydb", "URL path '/mydb' is not understood"),
    ("casemate://admin:pw@localhost?sslmode=require", "unknown connection option(s): sslmode"),
    ("casemate://admin:pw@localhost?encryption=", "'encryption' has no value"),
    ("casemate://admin:pw@localhost?tls_ca=a&tls_ca=b", "'tls_ca' is given twice"),
    ("casemate://admin:pw@localhost#frag", "fragment"),
    ("casemate://admin:pw@localhost:99999", "bad port"),
    ("casemate://admin:pw@localhost?connect_timeout=soon", "connect_timeout 'soon' is not a"),
    ("casemate://admin:pw@localhost?reconnect_attempts=-1", "out of range"),
])
def test_url_parts_not_understood_are_errors(url: str, message: str) -> None:
    with pytest.raises(casemate.InterfaceError) as e:
        casemate.connect(url)
    assert message in str(e.value)


# -- item 5: numbers range-checked; serve --detach and stop --------------------------

@pytest.mark.parametrize("args", [["serve", "{db}", "--port", "70000"],
                                  ["serve", "{db}", "--port", "-1"],
                                  ["demo", "{db}", "--port", "65536"],
                                  ["drop", "casemate://admin:pw@localhost", "0"],
                                  ["message", "casemate://admin:pw@localhost", "hi",
                                   "--session", "-3"],
                                  ["cert", "{db}", "generate", "--days", "0"],
                                  ["stop", "{db}", "--timeout", "0"]])
def test_numeric_options_are_range_checked(make_db, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    r = _casemate(*[a.format(db=db) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not in the range" in r.stderr
    assert not (db / "Logs" / "server.pid").exists()


def test_serve_detach_and_stop(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    r = _casemate("serve", str(db), "--port", "0", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "listening on 127.0.0.1:" in r.stdout and f"casemate stop {db}" in r.stdout
    port = int(r.stdout.split("listening on 127.0.0.1:")[1].split(",")[0])
    pid = int((db / "Logs" / "server.pid").read_text())
    try:
        with casemate.connect(f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        again = _casemate("serve", str(db), "--port", "0", "--detach")
        assert again.returncode == 2 and f"pid {pid}" in again.stdout + again.stderr
        stopped = _casemate("stop", str(db))
        assert stopped.returncode == 0 and "Server stopped." in stopped.stdout, stopped.stderr
        assert not (db / "Logs" / "server.pid").exists()
        with pytest.raises(casemate.OperationalError):
            casemate.connect(f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}",
                             connect_timeout=2)
        assert "Shutting down" in (db / "Logs" / "console.log").read_text()
    finally:
        try:
            os.kill(pid, 15)  # only if the test failed before stop: it is our child
        except ProcessLookupError:
            pass
    none = _casemate("stop", str(db))
    assert none.returncode == 1 and "no server is running" in none.stderr


def test_stop_never_signals_a_process_that_is_not_our_server(make_db) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (db / "Logs").mkdir(exist_ok=True)
        (db / "Logs" / "server.pid").write_text(f"{bystander.pid}\n")  # a stale file
        r = _casemate("stop", str(db))
        assert r.returncode == 1 and "no server is running" in r.stderr
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_waits_for_a_server_run_in_the_foreground(make_db) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(make_db()).start()
    try:
        r = _casemate("stop", str(server.db))
        assert r.returncode == 0 and "Server stopped." in r.stdout, r.stderr
        assert server.proc is not None and server.proc.wait(10) == 0
    finally:
        server.stop()


# -- item 9: what the default install brings ----------------------------------------

def test_sqlalchemy_is_an_extra() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    default = " ".join(meta["dependencies"]).lower()
    assert "sqlalchemy" not in default and "greenlet" not in default
    extra = " ".join(meta["optional-dependencies"]["sqlalchemy"]).lower()
    assert "sqlalchemy" in extra and "greenlet" in extra
    assert "sqlalchemy" in " ".join(meta["optional-dependencies"]["test"]).lower()
    readme = (ROOT / "README.md").read_text()
    for dep in meta["dependencies"]:
        name = dep.split(">")[0].split("[")[0]
        assert f"`{name}`" in readme, f"README does not justify {name}"


def test_server_and_clients_run_without_sqlalchemy(make_db, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "blocker"
    for name in ("sqlalchemy", "greenlet"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), *sys.path]))
    server = ServerProcess(make_db()).start()
    try:
        script = ("import sys, asyncio, casemate, casemate.aio, casemate.pool\n"
                  f"c = casemate.connect({server.url!r}); c.execute('SELECT 1'); c.close()\n"
                  "loaded = sorted(m for m in ('sqlalchemy', 'aiohttp', 'click', 'greenlet')"
                  " if m in sys.modules)\n"
                  "assert not loaded, loaded\n")
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        r = _casemate("shell", server.url, "-c", "SELECT 7 * 6")
        assert r.returncode == 0 and "42" in r.stdout, r.stderr
    finally:
        server.stop()


def test_shell_script_leaving_changes_says_so_in_cli_words(plain_server: ServerProcess) -> None:
    r = _casemate("shell", plain_server.url, "--no-autocommit", "-c",
                  "CREATE TABLE x (a INTEGER); INSERT INTO x VALUES (1); SELEC 2")
    assert r.returncode == 1, r.stderr  # stopped at the error, before its final commit
    assert "Uncommitted changes were rolled back" in r.stderr
    assert "warning:" not in r.stderr and "commit()" not in r.stderr
    r = _casemate("shell", plain_server.url, "--no-autocommit", "-c", "SELECT 1; SELEC 2")
    assert r.returncode == 1 and "rolled back" not in r.stderr  # read-only: nothing lost
