"""access.program_needs on listings: the REPLACE signature of a SQLite built without the
pre-update hook (this machine's has it, so no live statement shows that form)."""

from __future__ import annotations

from casemate.storage.access import program_needs

# INSERT OR REPLACE INTO t VALUES (1, 2), t without indexes, no pre-update hook: the rowid
# check's failure branch is empty (the Insert overwrites the row).
NO_HOOK_REPLACE = [
    (0, "Init", 0, 11, 0, None, 0, None),
    (1, "OpenWrite", 0, 2, 0, "2", 0, None),
    (7, "MustBeInt", 1, 0, 0, None, 0, None),
    (8, "NotExists", 0, 9, 1, None, 0, None),
    (9, "MakeRecord", 2, 2, 4, "D", 0, None),
    (10, "Insert", 0, 4, 1, "t", 49, None),
]
PLAIN_INSERT = [*NO_HOOK_REPLACE[:3], (8, "NotExists", 0, 10, 1, None, 0, None),
                (9, "Halt", 1555, 2, 0, "t.a", 2, None), *NO_HOOK_REPLACE[4:]]


def test_replace_without_pre_update_hook_is_read_from_the_rowid_check() -> None:
    needs = program_needs(NO_HOOK_REPLACE, preupdate_hook=False, table_of_root={2: "T"}.get)
    assert set(needs) == {("t", "UPDATE"), ("t", "DELETE")}
    assert program_needs(PLAIN_INSERT, preupdate_hook=False, table_of_root={2: "t"}.get) == {}


def test_delete_flags() -> None:
    ops = [(0, "Init", 0, 0, 0, None, 0, None), (1, "Delete", 0, 68, 0, "a", 0, None),
           (2, "Delete", 0, 1, 0, "b", 0, None), (3, "Delete", 0, 64, 0, "c", 0, None),
           (4, "Delete", 1, 0, 0, None, 0, None)]
    assert set(program_needs(ops)) == {("a", "UPDATE"), ("b", "DELETE"), ("c", "UPDATE"),
                                       ("c", "DELETE")}
