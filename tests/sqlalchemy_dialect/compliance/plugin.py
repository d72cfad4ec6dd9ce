"""pytest plugin for the compliance run: SQLAlchemy's test plugin plus Casemate provisioning."""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing import provision  # noqa: E402
from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402,F401,F403


@provision.generate_driver_url.for_db("casemate")
def _generate_driver_url(url: Any, driver: str, query_str: str) -> Any:
    # casemate:// and casemate+async:// are complete URLs: no "casemate+casemate"
    return url if url.get_driver_name() == driver else None


@provision.temp_table_keyword_args.for_db("casemate")
def _temp_table_keyword_args(cfg: Any, eng: Any) -> dict[str, Any]:
    return {"prefixes": ["TEMPORARY"]}  # refused by the server; the requirements skip them


@provision.upsert.for_db("casemate")
def _upsert(cfg: Any, table: Any, returning: Any, *, set_lambda: Any = None,
            sort_by_parameter_order: bool = False, index_elements: Any = None) -> Any:
    from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    if set_lambda:
        stmt = stmt.on_conflict_do_update(set_=set_lambda(stmt.excluded))
    else:
        stmt = stmt.on_conflict_do_nothing()
    return stmt.returning(*returning, sort_by_parameter_order=sort_by_parameter_order)


@provision.stop_test_class_outside_fixtures.for_db("casemate")
def _stop_test_class(config: Any, db: Any, cls: Any) -> None:
    db.dispose()
