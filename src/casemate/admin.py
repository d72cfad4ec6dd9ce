"""User, group and grant administration, the same whether run on the folder or over the wire.

:class:`Admin` is what the ``casemate user``/``group`` commands talk to.
:class:`LocalAdmin` works on a database folder's backend directly;
:class:`RemoteAdmin` sends ADMIN messages to a running server as an admin
user.  Passwords never cross the wire: the client computes the SCRAM
verifier and sends only that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import Codes, Error
from .storage import BUILTIN_GROUPS, Backend, UserRecord
from .storage.access import METHOD_PREFIX, PRIVILEGES

__all__ = ["Admin", "LocalAdmin", "RemoteAdmin", "run_admin_command", "parse_privileges"]


def parse_privileges(words: Iterable[str], method: bool = False) -> frozenset[str]:
    """``["select", "insert"]`` or ``["ALL"]`` -> privileges (``EXECUTE`` for a
    ``method:NAME`` target); raises Error for others."""
    out: set[str] = set()
    for w in words:
        for p in w.upper().replace(",", " ").split():
            if method:
                if p not in ("EXECUTE", "ALL"):
                    raise Error(f"a server method takes the EXECUTE right, not {p!r}",
                                Codes.PROGRAMMING)
                out.add("EXECUTE")
            elif p == "ALL":
                out.update(PRIVILEGES)
            elif p in PRIVILEGES:
                out.add(p)
            else:
                raise Error(f"unknown privilege {p!r}; use {', '.join(PRIVILEGES)} or ALL",
                            Codes.PROGRAMMING)
    return frozenset(out)


def _record(args: dict[str, Any]) -> UserRecord:
    salt, stored, server, iters = args["verifier"]
    return UserRecord(str(args["name"]), str(args.get("group", "")), bytes(salt), bytes(stored),
                      bytes(server), int(iters))


def _need_group(backend: Backend, group: str) -> None:
    if group not in backend.list_groups():
        raise Error(f"no group {group!r}; create it with 'casemate group add'", Codes.PROGRAMMING)


def run_admin_command(backend: Backend, command: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run one admin command on ``backend`` (blocking); return result rows. Raises Error."""
    try:
        rows: list[tuple[Any, ...]] = _COMMANDS[command](backend, args)
        return rows
    except KeyError as e:
        if command not in _COMMANDS:
            raise Error(f"unknown admin command {command!r}", Codes.PROGRAMMING) from e
        raise Error(f"no such user or group: {e.args[0]!r}", Codes.PROGRAMMING) from e
    except ValueError as e:
        raise Error(str(e), Codes.PROGRAMMING) from e


def _user_add(b: Backend, a: dict[str, Any]) -> list[tuple[Any, ...]]:
    rec = _record(a)
    _need_group(b, rec.group)
    try:
        b.add_user(rec)
    except KeyError:
        raise Error(f"user {rec.name!r} already exists", Codes.INTEGRITY) from None
    return []


def _user_passwd(b: Backend, a: dict[str, Any]) -> list[tuple[Any, ...]]:
    old = b.get_user(str(a["name"]))
    if old is None:
        raise KeyError(a["name"])
    b.update_user(_record({**a, "group": old.group}))
    return []


def _user_group(b: Backend, a: dict[str, Any]) -> list[tuple[Any, ...]]:
    old = b.get_user(str(a["name"]))
    if old is None:
        raise KeyError(a["name"])
    _need_group(b, str(a["group"]))
    b.update_user(UserRecord(old.name, str(a["group"]), old.salt, old.stored_key,
                             old.server_key, old.iterations))
    return []


def _grant(b: Backend, a: dict[str, Any], add: bool) -> list[tuple[Any, ...]]:
    group, table = str(a["group"]), str(a["table"]).lower()
    is_method = table.startswith(METHOD_PREFIX)
    if group in BUILTIN_GROUPS and not is_method:
        raise Error(f"built-in group {group!r} has fixed rights on tables; grant to a custom "
                    "group", Codes.PROGRAMMING)
    privs = parse_privileges(a["privileges"], is_method)
    current = b.grants_for(group).get(table, frozenset())
    b.set_grants(group, table, current | privs if add else current - privs)
    return []


_COMMANDS: dict[str, Any] = {
    "user_list": lambda b, a: [(u.name, u.group, u.created) for u in b.list_users()],
    "user_add": _user_add,
    "user_passwd": _user_passwd,
    "user_group": _user_group,
    "user_remove": lambda b, a: b.remove_user(str(a["name"])) or [],
    "group_list": lambda b, a: [(g, t, ",".join(sorted(p))) for g, grants in
                                b.list_groups().items() for t, p in
                                (sorted(grants.items()) or [("", frozenset())])],
    "group_add": lambda b, a: b.add_group(str(a["name"])) or [],
    "group_remove": lambda b, a: b.remove_group(str(a["name"])) or [],
    "grant": lambda b, a: _grant(b, a, True),
    "revoke": lambda b, a: _grant(b, a, False),
}


class Admin:
    """Runs admin commands somewhere; subclasses say where."""

    def run(self, command: str, **args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalAdmin(Admin):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def run(self, command: str, **args: Any) -> list[tuple[Any, ...]]:
        return run_admin_command(self.backend, command, args)

    def close(self) -> None:
        self.backend.close()


class RemoteAdmin(Admin):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def run(self, command: str, **args: Any) -> list[tuple[Any, ...]]:
        return self.conn.admin(command, **args)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.close()
