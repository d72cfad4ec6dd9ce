"""What a Casemate server (SQLite storage) supports, for SQLAlchemy's compliance suite.

The base class is conservative (most features closed); here the features of
SQLite that Casemate lets through are opened, and those the server refuses
(temporary tables, ATTACHed schemas, the REGEXP function) stay closed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements

_open = exclusions.open
_closed = exclusions.closed


def _is_async(config: Any) -> bool:
    return bool(config.db.dialect.is_async)


class Requirements(SuiteRequirements):  # type: ignore[misc]
    # -- refused by the Casemate server (see docs/sqlalchemy.md) ----------------
    @property
    def temporary_tables(self) -> Any:
        return _closed()  # the authorizer refuses CREATE TEMP (pooled connections)

    @property
    def temp_table_reflection(self) -> Any:
        return _closed()

    @property
    def schemas(self) -> Any:
        return _closed()  # a schema is an ATTACHed database: ATTACH is refused

    @property
    def regexp_match(self) -> Any:
        return _closed()  # the server registers no REGEXP function

    # -- as for SQLite itself ---------------------------------------------------
    @property
    def implicitly_named_constraints(self) -> Any:
        return _closed()  # SQLite does not name unnamed constraints

    @property
    def parens_in_union_contained_select_w_limit_offset(self) -> Any:
        return _closed()  # SQLite: no parenthesized SELECT in a UNION

    @property
    def parens_in_union_contained_select_wo_limit_offset(self) -> Any:
        return _closed()

    # -- SQLite features that work through Casemate -----------------------------
    @property
    def views(self) -> Any:
        return _open()

    @property
    def savepoints(self) -> Any:
        return _open()

    @property
    def isolation_level(self) -> Any:
        return _open()

    def get_isolation_levels(self, config: Any) -> dict[str, Any]:
        return {"default": "SERIALIZABLE", "supported": ["SERIALIZABLE", "AUTOCOMMIT"]}

    @property
    def autocommit(self) -> Any:
        return _open()

    @property
    def json_type(self) -> Any:
        return _open()

    @property
    def ctes(self) -> Any:
        return _open()

    @property
    def ctes_with_update_delete(self) -> Any:
        return _open()

    @property
    def ctes_with_values(self) -> Any:
        return _open()

    @property
    def window_functions(self) -> Any:
        return _open()

    @property
    def intersect(self) -> Any:
        return _open()

    @property
    def except_(self) -> Any:
        return _open()

    @property
    def tuple_in(self) -> Any:
        return _open()

    @property
    def boolean_col_expressions(self) -> Any:
        return _open()

    @property
    def nullsordering(self) -> Any:
        return _open()

    @property
    def update_from(self) -> Any:
        return _open()

    @property
    def server_defaults(self) -> Any:
        return _open()

    @property
    def expression_server_defaults(self) -> Any:
        return _open()

    @property
    def computed_columns(self) -> Any:
        return _open()

    @property
    def computed_columns_stored(self) -> Any:
        return _open()

    @property
    def computed_columns_virtual(self) -> Any:
        return _open()

    @property
    def computed_columns_reflect_persisted(self) -> Any:
        return _open()

    @property
    def check_constraint_reflection(self) -> Any:
        return _open()

    @property
    def inline_check_constraint_reflection(self) -> Any:
        return _open()

    @property
    def foreign_key_constraint_name_reflection(self) -> Any:
        return _open()

    @property
    def foreign_key_constraint_option_reflection_ondelete(self) -> Any:
        return _open()

    @property
    def fk_constraint_option_reflection_ondelete_restrict(self) -> Any:
        return _open()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self) -> Any:
        return _open()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self) -> Any:
        return _open()

    @property
    def fk_constraint_option_reflection_onupdate_restrict(self) -> Any:
        return _open()

    @property
    def reflects_pk_names(self) -> Any:
        return _open()

    @property
    def reflect_table_options(self) -> Any:
        return _open()

    @property
    def datetime_historic(self) -> Any:
        return _open()

    @property
    def date_historic(self) -> Any:
        return _open()

    @property
    def table_ddl_if_exists(self) -> Any:
        return _open()

    @property
    def index_ddl_if_exists(self) -> Any:
        return _open()

    @property
    def create_table_as(self) -> Any:
        return _open()

    @property
    def dbapi_lastrowid(self) -> Any:
        return _open()

    @property
    def unicode_ddl(self) -> Any:
        return _open()

    @property
    def order_by_label_with_expression(self) -> Any:
        return _open()

    @property
    def mod_operator_as_percent_sign(self) -> Any:
        return _open()

    @property
    def supports_bitwise_or(self) -> Any:
        return _open()

    @property
    def supports_bitwise_and(self) -> Any:
        return _open()

    @property
    def supports_bitwise_not(self) -> Any:
        return _open()

    @property
    def supports_bitwise_shift(self) -> Any:
        return _open()

    @property
    def async_dialect(self) -> Any:
        return exclusions.only_if(_is_async)
