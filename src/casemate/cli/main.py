"""``casemate init``, ``serve``, ``user``, ``group`` and ``trust``."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..admin import Admin, LocalAdmin, RemoteAdmin
from ..client.known import KnownServers
from ..database import (
    PRIVATE_UMASK,
    DatabaseError,
    DatabaseFolder,
    create_database,
    make_verifier,
)
from ..errors import Error
from ..protocol.core import PROTOCOL_CORE
from ..settings import Settings, SettingsError
from ..storage import StorageError
from .connect import PORT, cli_connect
from .listing import echo_groups, echo_users
from .pidfile import PID_FILE, PidFile

__all__ = ["PID_FILE", "fail", "open_folder"]


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def open_folder(path: Path) -> DatabaseFolder:
    folder = DatabaseFolder(path)
    try:
        folder.check()
    except DatabaseError as e:
        fail(str(e))
    return folder


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="Publication name (default: the folder's name).")
@click.option("--admin-password", envvar="CASEMATE_ADMIN_PASSWORD",
              help="Password of the 'admin' user (or CASEMATE_ADMIN_PASSWORD); generated and "
                   "printed once if not given.")
@click.option("--storage", type=click.Choice(["sqlite", "postgresql"]), default="sqlite",
              show_default=True, help="Storage backend.")
@click.option("--dsn", default="", help="PostgreSQL connection string (libpq) for "
              "--storage postgresql, without the password (refused): that comes from "
              "CASEMATE_PG_PASSWORD or storage.password_file.")
def init(directory: Path, name: str | None, admin_password: str | None, storage: str,
         dsn: str) -> None:
    """Create a new database folder DIRECTORY (settings, Resources/, Data/, Logs/, Methods/).

    With --storage postgresql the data, users, groups and grants live in the
    PostgreSQL database named by --dsn (its schema is created if missing), so
    several Casemate servers can serve one database.
    """
    try:
        if storage == "postgresql":  # before anything is written
            _check_pg_dsn(dsn)
        folder, generated = create_database(directory, name, admin_password, storage, dsn)
    except (DatabaseError, SettingsError) as e:
        fail(str(e))
        return
    except StorageError as e:
        fail(f"{e.message}" + (f"\nHint: {e.hint}" if e.hint else ""))
        return
    click.echo(f"Created Casemate database in {folder.path}")
    click.echo(f"  settings:    {folder.settings_path}")
    click.echo(f"  certificate: {folder.cert_path} (self-signed, unique to this database)")
    if generated:
        click.echo(f"  admin password (shown once, keep it safe): {generated}")
    click.echo(f"Start it with: casemate serve {folder.path}")


def _check_pg_dsn(dsn: str) -> None:
    """Refuse a DSN with a password (StorageError) before init writes it to casemate.toml."""
    try:
        from ..storage.postgresql import check_dsn
    except ImportError as e:
        raise StorageError(f"the postgresql storage backend is not available: {e}", "0A000",
                           "install it with: pip install 'casemate[postgresql]'") from e
    check_dsn(dsn)


def _setup_logging(folder: DatabaseFolder, settings: Settings, verbose: bool,
                   console: bool = True) -> None:
    from ..server.audit import SafeFormatter, server_log_handler
    fmt = SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("casemate")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if console:  # a detached server's stderr is Logs/console.log: server.log is enough
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(fmt)
        root.addHandler(err)
    folder.logs_dir.mkdir(exist_ok=True)
    f = server_log_handler(folder.logs_dir / "server.log", settings.limits)
    f.setFormatter(fmt)
    root.addHandler(f)


def _claim_pid(folder: DatabaseFolder) -> PidFile:
    folder.logs_dir.mkdir(exist_ok=True)
    claim = PidFile.claim(folder.logs_dir)
    if not isinstance(claim, PidFile):
        fail(f"another server (pid {claim}) is already running on {folder.path}")
        raise AssertionError("unreachable")
    return claim


def _raise_file_limit() -> None:
    """One socket per session: lift the soft open-files limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", multiple=True, help="Listen address (repeatable); overrides the settings.")
@click.option("--port", type=PORT, help="TCP port (0 to 65535); 0 picks a free one.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--detach", is_flag=True, help="Run in the background (output in "
              "Logs/console.log); return once it listens. 'casemate stop DIRECTORY' stops it.")
@click.option("--detached-child", "detached", is_flag=True, hidden=True)
def serve(directory: Path, host: tuple[str, ...], port: int | None, verbose: bool,
          detach: bool, detached: bool) -> None:
    """Run the server on database folder DIRECTORY until SIGINT/SIGTERM (or
    'casemate stop DIRECTORY').

    Prints the address it listens on and its mode (plain or encrypted).
    SIGHUP reloads the certificate files.
    """
    from ..server import Server, ServerStartError
    if detach:
        from .control import detach as run_detached
        run_detached(directory, [*(a for h in host for a in ("--host", h)),
                                 *(["--port", str(port)] if port is not None else []),
                                 *(["-v"] if verbose else [])])
    folder = open_folder(directory)
    try:
        file_settings = folder.settings()
    except SettingsError as e:
        fail(f"{e}\nThe server did not start.", 2)
        return
    settings = file_settings
    if host:
        settings = settings.replace_network(listen=tuple(host))
    if port is not None:
        settings = settings.replace_network(port=port)
    os.umask(PRIVATE_UMASK)  # logs, audit, pid, WAL: private to the server's user
    _setup_logging(folder, settings, verbose, console=not detached)
    for w in folder.loose_permissions():
        logging.getLogger("casemate.server").warning("%s", w)
    _raise_file_limit()
    pid_path = _claim_pid(folder)
    server = Server(folder, settings, file_settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.network.event_loop)) as runner:
            runner.run(_run(server))
    except ServerStartError as e:
        fail(f"{e}\nThe server did not start.", 2)
    finally:
        pid_path.release()


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """network.event_loop: uvloop when asked (it must be installed) or, for "auto", when
    installed; otherwise the standard library's loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            fail("network.event_loop is \"uvloop\" but uvloop is not installed; install it "
                 "with: pip install uvloop (or set event_loop = \"auto\")\n"
                 "The server did not start.", 2)
        return None
    return uvloop.new_event_loop


async def _run(server: object) -> None:
    from ..server import Server
    assert isinstance(server, Server)
    server.prepare()
    await server.start()
    loop = asyncio.get_running_loop()
    logging.getLogger("casemate.server").info(
        "event loop: %s; row path: %s; protocol core: %s", server.event_loop,
        server.backend.row_path, PROTOCOL_CORE)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    for h, p in server.addresses:
        shown = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        click.echo(f"Casemate server listening on {shown}, {server.mode}")
    if server.web is not None:
        click.echo(f"Web administration on {server.web.url}")
    if server.tls is not None:
        click.echo(f"Certificate SHA-256 fingerprint: {server.tls.info.sha256}")
        click.echo(f"Key fingerprint (pinned by clients): {server.tls.info.spki_sha256}")
    sys.stdout.flush()
    await server.wait_stopped()
    click.echo("Shutting down: rolling back open transactions and telling clients.")
    await server.shutdown()


@click.group()
def user() -> None:
    """Manage users.  TARGET is a database folder, or casemate://admin@host:port for a
    running server (as an admin user; the password never crosses the wire)."""


@click.group()
def group() -> None:
    """Manage custom groups and their per-table grants (TARGET: folder or casemate:// URL).

    Built-in groups: admin (everything), readwrite (read and write all tables),
    readonly (read all tables).  Custom groups get SELECT/INSERT/UPDATE/DELETE per table.
    """


def _admin(target: str) -> Admin:
    if target.startswith("casemate://"):
        return RemoteAdmin(cli_connect(target, program="casemate admin"))
    folder = open_folder(Path(target))
    try:
        return LocalAdmin(folder.backend())
    except SettingsError as e:
        fail(str(e), 2)
    except StorageError as e:
        fail(e.message + (f"\nHint: {e.hint}" if e.hint else ""), 2)
    raise AssertionError("unreachable")


def _admin_run(target: str, command: str, **args: Any) -> list[tuple[Any, ...]]:
    admin = _admin(target)
    try:
        return admin.run(command, **args)
    except Error as e:
        fail(e.message)
        return []
    except StorageError as e:
        fail(e.message + (f"\nHint: {e.hint}" if e.hint else ""))
        return []
    finally:
        admin.close()


def _ask_password(password: str | None) -> str:
    if password:
        return password
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            fail("no password given (use --password or write it on standard input)")
        return line
    pw = getpass.getpass("Password: ")
    if pw != getpass.getpass("Again: "):
        fail("the two passwords differ")
    return pw


def _check_secure(target: str) -> None:
    """A password verifier lets its holder impersonate the server: never send it in clear."""
    if target.startswith("casemate://"):
        conn = cli_connect(target, program="casemate admin", reconnect_attempts=0)
        encrypted = conn.security.encrypted
        conn.close()
        if not encrypted:
            fail("refusing to send a password verifier over an unencrypted connection; run "
                 "the command on the database folder, or switch encryption on")


def _verifier(name: str, password: str | None) -> list[Any]:
    try:
        rec = make_verifier(name, _ask_password(password), "-")
    except DatabaseError as e:
        fail(str(e))
        raise
    return [rec.salt, rec.stored_key, rec.server_key, rec.iterations]


@user.command("add")
@click.argument("target")
@click.argument("name")
@click.option("--group", "group_name", default="readwrite", show_default=True,
              help="admin, readwrite, readonly, or a custom group.")
@click.option("--password", help="The password (else asked, or read from standard input).")
def user_add(target: str, name: str, group_name: str, password: str | None) -> None:
    """Add user NAME."""
    _check_secure(target)
    _admin_run(target, "user_add", name=name, group=group_name, verifier=_verifier(name, password))
    click.echo(f"User {name!r} added to group {group_name!r}.")


@user.command("passwd")
@click.argument("target")
@click.argument("name")
@click.option("--password", help="The new password (else asked, or read from standard input).")
def user_passwd(target: str, name: str, password: str | None) -> None:
    """Change the password of user NAME."""
    _check_secure(target)
    _admin_run(target, "user_passwd", name=name, verifier=_verifier(name, password))
    click.echo(f"Password of {name!r} changed.")


@user.command("group")
@click.argument("target")
@click.argument("name")
@click.argument("group_name")
def user_group(target: str, name: str, group_name: str) -> None:
    """Move user NAME into GROUP_NAME."""
    _admin_run(target, "user_group", name=name, group=group_name)
    click.echo(f"User {name!r} is now in group {group_name!r}.")


@user.command("list")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def user_list(target: str, as_json: bool) -> None:
    """List users, their groups and when they were created."""
    echo_users(_admin_run(target, "user_list"), as_json)


@user.command("remove")
@click.argument("target")
@click.argument("name")
def user_remove(target: str, name: str) -> None:
    """Remove user NAME."""
    _admin_run(target, "user_remove", name=name)
    click.echo(f"User {name!r} removed.")


@group.command("add")
@click.argument("target")
@click.argument("name")
def group_add(target: str, name: str) -> None:
    """Create custom group NAME (no rights until granted)."""
    _admin_run(target, "group_add", name=name)
    click.echo(f"Group {name!r} created.")


@group.command("remove")
@click.argument("target")
@click.argument("name")
def group_remove(target: str, name: str) -> None:
    """Remove custom group NAME (it must have no users)."""
    _admin_run(target, "group_remove", name=name)
    click.echo(f"Group {name!r} removed.")


@group.command("list")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def group_list(target: str, as_json: bool) -> None:
    """List groups and their grants (one row per table)."""
    echo_groups(_admin_run(target, "group_list"), as_json)


@group.command("grant")
@click.argument("target")
@click.argument("group_name")
@click.argument("table")
@click.argument("privileges", nargs=-1, required=True)
def group_grant(target: str, group_name: str, table: str, privileges: tuple[str, ...]) -> None:
    """Grant PRIVILEGES (SELECT INSERT UPDATE DELETE, or ALL) on TABLE to GROUP_NAME."""
    _admin_run(target, "grant", group=group_name, table=table, privileges=list(privileges))
    click.echo(f"Granted {' '.join(privileges).upper()} on {table} to {group_name!r}.")


@group.command("revoke")
@click.argument("target")
@click.argument("group_name")
@click.argument("table")
@click.argument("privileges", nargs=-1, required=True)
def group_revoke(target: str, group_name: str, table: str, privileges: tuple[str, ...]) -> None:
    """Revoke PRIVILEGES on TABLE from GROUP_NAME."""
    _admin_run(target, "revoke", group=group_name, table=table, privileges=list(privileges))
    click.echo(f"Revoked {' '.join(privileges).upper()} on {table} from {group_name!r}.")


@click.group()
def trust() -> None:
    """Servers this client has met ($CASEMATE_HOME/known_servers)."""


@trust.command("list")
def trust_list() -> None:
    """Show known servers, their mode and pinned key."""
    for e in KnownServers().all():
        click.echo(f"{e.key:<32} {e.mode:<10} {e.fingerprint or '-'}")


@trust.command("forget")
@click.argument("servers", nargs=-1, required=True)
def trust_forget(servers: tuple[str, ...]) -> None:
    """Forget SERVERS (host:port, or lan:NAME for a server found by its publication
    name), to accept a new key or mode at the next connect."""
    known = KnownServers()
    forgot = [s for s in servers if known.forget(s)]
    for s in servers:
        if s not in forgot:
            click.echo(f"{s} is not in {known.path}", err=True)
    if not forgot:
        fail("nothing forgotten")
    click.echo(f"Forgot {', '.join(forgot)}; the next connection records it afresh (after a "
               "successful login).")


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
def methods(directory: Path) -> None:
    """List the server methods in DIRECTORY/Methods with their signatures and docs."""
    from ..methods import MethodLoadError, load_methods
    folder = open_folder(directory)
    try:
        found = load_methods(folder.path / "Methods")
    except MethodLoadError as e:
        fail(str(e), 2)
        return
    if not found:
        click.echo(f"No server methods in {folder.path / 'Methods'} (see docs/methods.md).")
    for m in sorted(found.values(), key=lambda m: m.name):
        click.echo(f"{m.describe()}    [{m.source}]")
        for line in (m.doc or "(no docstring)").splitlines():
            click.echo(f"    {line}")
