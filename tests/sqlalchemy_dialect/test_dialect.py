"""SQLAlchemy, pandas and Alembic against real Casemate servers through casemate:// URLs."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import sqlite3
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    exc,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import casemate
from casemate.sqlalchemy import CasemateAsyncDialect, CasemateDialect
from tests.conftest import ADMIN_PASSWORD, set_setting


def url_for(server, scheme: str = "casemate") -> str:  # type: ignore[no-untyped-def]
    return f"{scheme}://admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}"


def engine_for(server, **kw):  # type: ignore[no-untyped-def]
    return create_engine(url_for(server), **kw)


def test_entry_points_and_url_options() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="sqlalchemy.dialects")}
    assert names["casemate"] == "casemate.sqlalchemy:CasemateDialect"
    assert names["casemate.async"] == "casemate.sqlalchemy:CasemateAsyncDialect"
    engine = create_engine(
        "casemate://clerk:p%40ss@db.example.com:4000?tls_ca=/etc/ca.pem&encryption=required"
        "&connect_timeout=2.5&reconnect_attempts=0&tls_cert=/c.pem&tls_key=/k.pem&program=etl")
    assert isinstance(engine.dialect, CasemateDialect)
    assert isinstance(engine.pool, sa.pool.QueuePool)
    args, kw = engine.dialect.create_connect_args(engine.url)
    assert args == [] and kw == {
        "host": "db.example.com", "port": 4000, "user": "clerk", "password": "p@ss",
        "tls_ca": "/etc/ca.pem", "encryption": "required", "connect_timeout": 2.5,
        "reconnect_attempts": 0, "tls_cert": "/c.pem", "tls_key": "/k.pem", "program": "etl"}
    engine.dispose()
    for bad, why in [("casemate://a:b@h?sslmode=require", "unknown casemate URL option"),
                     ("casemate://a:b@h/sales", "serves one database"),
                     ("casemate://a:b@h?connect_timeout=soon", "connect_timeout")]:
        with pytest.raises(exc.ArgumentError, match=why):
            e = create_engine(bad)
            e.dialect.create_connect_args(e.url)
    from sqlalchemy.ext.asyncio import create_async_engine
    aengine = create_async_engine("casemate+async://a:b@h")
    assert isinstance(aengine.sync_engine.dialect, CasemateAsyncDialect)
    assert isinstance(aengine.sync_engine.pool, sa.pool.AsyncAdaptedQueuePool)
    asyncio.run(aengine.dispose())


@pytest.mark.parametrize("fixture", ["plain_server", "tls_server"])
def test_core_crud_and_reflection(request: pytest.FixtureRequest, fixture: str) -> None:
    server = request.getfixturevalue(fixture)
    engine = engine_for(server)
    md = MetaData()
    people = Table("people", md, Column("id", Integer, primary_key=True),
                   Column("name", String(50), nullable=False, index=True),
                   Column("born", DateTime), Column("joined", Date),
                   Column("salary", Numeric(10, 2)),
                   Column("score", Numeric(6, 3, asdecimal=False)))
    Table("pets", md, Column("id", Integer, primary_key=True),
          Column("owner_id", ForeignKey("people.id"), nullable=False),
          Column("kind", String(10), server_default="cat"))
    md.create_all(engine)
    with engine.begin() as conn:
        ids = conn.execute(people.insert().returning(people.c.id), [
            {"name": "Ada", "born": dt.datetime(1815, 12, 10, 8, 30, 0, 250),
             "joined": dt.date(1833, 6, 5), "salary": decimal.Decimal("100.25"), "score": 1.5},
            {"name": "Alan", "born": dt.datetime(1912, 6, 23), "joined": None, "salary": None,
             "score": None}]).scalars().all()
        assert ids == [1, 2]
        conn.execute(text("CREATE VIEW adults AS SELECT name FROM people"))
    with engine.connect() as conn:
        rows = conn.execute(select(people.c.name, people.c.born)
                            .where(people.c.born > dt.datetime(1900, 1, 1))).fetchall()
        assert rows == [("Alan", dt.datetime(1912, 6, 23))]
        ada = conn.execute(select(people).where(people.c.name == "Ada")).one()
        assert ada.born == dt.datetime(1815, 12, 10, 8, 30, 0, 250)
        assert ada.joined == dt.date(1833, 6, 5)
        assert ada.salary == decimal.Decimal("100.25") and ada.score == 1.5
        assert type(ada.score) is float
        assert conn.execute(people.update().where(people.c.id > 0).values(name=people.c.name + "!")
                            ).rowcount == 2
        assert conn.scalar(select(func.count()).select_from(people)) == 2
        conn.rollback()
        assert conn.scalar(select(people.c.name).where(people.c.id == 1)) == "Ada"
    # SQL features come from the server's SQLite, asked at the first connection
    assert engine.dialect.server_version_info == sqlite3.sqlite_version_info
    insp = inspect(engine)
    assert insp.get_table_names() == ["people", "pets"]
    assert insp.get_view_names() == ["adults"]
    assert insp.get_temp_table_names() == []  # temp tables are refused, listing them is not
    assert insp.get_schema_names() == ["main"]
    assert insp.has_table("pets") and not insp.has_table("nothing")
    cols = {c["name"]: c for c in insp.get_columns("people")}
    assert list(cols) == ["id", "name", "born", "joined", "salary", "score"]
    assert cols["name"]["nullable"] is False
    assert isinstance(cols["salary"]["type"], sa.NUMERIC)
    assert insp.get_pk_constraint("people")["constrained_columns"] == ["id"]
    assert [i["column_names"] for i in insp.get_indexes("people")] == [["name"]]
    fk = insp.get_foreign_keys("pets")[0]
    assert (fk["constrained_columns"], fk["referred_table"]) == (["owner_id"], "people")
    assert insp.get_columns("pets")[2]["default"] == "'cat'"
    reflected = Table("pets", MetaData(), autoload_with=engine)
    assert [c.name for c in reflected.columns] == ["id", "owner_id", "kind"]
    engine.dispose()


def test_transactions_savepoints_autocommit_and_errors(plain_server) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(plain_server)
    md = MetaData()
    t = Table("t", md, Column("id", Integer, primary_key=True), Column("v", String(10)))
    md.create_all(engine)
    other = engine_for(plain_server, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.execute(t.insert(), {"id": 1, "v": "kept"})
        sp = conn.begin_nested()
        conn.execute(t.insert(), {"id": 2, "v": "undone"})
        sp.rollback()
        with conn.begin_nested():
            conn.execute(t.insert(), {"id": 3, "v": "released"})
        with pytest.raises(exc.IntegrityError), conn.begin_nested():
            conn.execute(t.insert(), {"id": 1, "v": "duplicate"})
        with other.connect() as o:  # not committed yet: invisible to another session
            assert o.scalar(select(func.count()).select_from(t)) == 0
        conn.commit()
    with other.connect() as o:
        assert o.execute(select(t.c.id).order_by(t.c.id)).scalars().all() == [1, 3]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.get_isolation_level() == "AUTOCOMMIT"
        conn.execute(t.insert(), {"id": 4, "v": "at once"})
        with other.connect() as o:
            assert o.scalar(select(t.c.v).where(t.c.id == 4)) == "at once"
    with engine.connect() as conn:  # the pooled connection is back to SERIALIZABLE
        assert conn.get_isolation_level() == "SERIALIZABLE"
        with pytest.raises(exc.ProgrammingError, match="42P01"):
            conn.execute(text("SELECT * FROM missing"))
        conn.rollback()
        with pytest.raises(exc.ProgrammingError, match="temporary tables"):
            conn.execute(text("CREATE TEMP TABLE scratch (x)"))
        conn.rollback()
        assert conn.scalar(select(func.count()).select_from(t)) == 3  # still usable
    other.dispose()
    engine.dispose()


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    since: Mapped[dt.date | None]
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id",
                                               cascade="all, delete-orphan")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    amount: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")


def test_orm_with_relationship(tls_server) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(tls_server)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Customer(name="Grace", since=dt.date(2020, 1, 2),
                            orders=[Order(amount=10), Order(amount=32)]),
                   Customer(name="Linus", orders=[Order(amount=5)])])
        s.commit()
    with Session(engine) as s:
        grace = s.scalars(select(Customer).where(Customer.name == "Grace")).one()
        assert grace.since == dt.date(2020, 1, 2)
        assert [o.amount for o in grace.orders] == [10, 32]
        grace.orders.pop()  # delete-orphan: the order row goes
        s.commit()
        assert s.scalars(select(Order.amount).where(Order.customer_id == grace.id)).all() == [10]
        with s.begin_nested():  # a savepoint inside the session's transaction
            s.add(Order(amount=99, customer=grace))
        with pytest.raises(exc.IntegrityError), s.begin_nested():
            s.add(Order(id=1, amount=1, customer=grace))  # duplicate key: savepoint undone
            s.flush()
        s.commit()
        totals = s.execute(select(Customer.name, func.sum(Order.amount)).join(Order)
                           .group_by(Customer.name).order_by(Customer.name)).all()
        assert totals == [("Grace", 109), ("Linus", 5)]
        s.delete(grace)
        s.commit()
        assert s.scalar(select(func.count()).select_from(Order)) == 1  # orphans deleted
    engine.dispose()


def test_pandas_read_sql_and_to_sql(plain_server) -> None:  # type: ignore[no-untyped-def]
    pd = pytest.importorskip("pandas")
    engine = engine_for(plain_server)
    df = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"],
                       "population": [709_000, 9_750_000, 3_124_000],
                       "founded": pd.to_datetime(["2001-01-01", "2002-02-02", "2003-03-03"]),
                       "area": [454.0, 2672.3, 331.3]})
    assert df.to_sql("cities", engine, index=False) == 3
    more = pd.DataFrame({"city": [f"c{i}" for i in range(2500)], "population": range(2500)})
    more.to_sql("cities", engine, index=False, if_exists="append", method="multi",
                chunksize=500)
    back = pd.read_sql("SELECT city, population, founded FROM cities WHERE area IS NOT NULL "
                       "ORDER BY population", engine)
    assert back["city"].tolist() == ["Oslo", "Pune", "Lima"]
    assert back["founded"].tolist() == [pd.Timestamp(2001, 1, 1), pd.Timestamp(2003, 3, 3),
                                        pd.Timestamp(2002, 2, 2)]
    whole = pd.read_sql_table("cities", engine)  # through reflection
    assert len(whole) == 2503 and list(whole.columns) == ["city", "population", "founded", "area"]
    assert whole["population"].sum() == df["population"].sum() + sum(range(2500))
    chunks = list(pd.read_sql(text("SELECT * FROM cities WHERE population < :n"), engine,
                              params={"n": 1000}, chunksize=400))
    assert sum(len(c) for c in chunks) == 1000 and len(chunks) == 3
    engine.dispose()


def _write_migrations(scripts: Path) -> None:
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(
        "from alembic import context\n"
        "from sqlalchemy import engine_from_config, pool\n"
        "cfg = context.config\n"
        "engine = engine_from_config(cfg.get_section(cfg.config_ini_section), "
        "prefix='sqlalchemy.', poolclass=pool.NullPool)\n"
        "with engine.connect() as conn:\n"
        "    context.configure(connection=conn, target_metadata=None, render_as_batch=True)\n"
        "    with context.begin_transaction():\n"
        "        context.run_migrations()\n"
        "engine.dispose()\n")
    (scripts / "script.py.mako").write_text("")
    head = "from alembic import op\nimport sqlalchemy as sa\n"
    (scripts / "versions" / "0001_accounts.py").write_text(
        "revision = '0001'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        + head +
        "def upgrade():\n"
        "    op.create_table('accounts', sa.Column('id', sa.Integer, primary_key=True),"
        " sa.Column('owner', sa.String(50)))\n"
        "    op.bulk_insert(sa.table('accounts', sa.column('owner')), [{'owner': 'ada'}])\n"
        "def downgrade():\n"
        "    op.drop_table('accounts')\n")
    # SQLite cannot ALTER a column: Alembic's batch mode copies the table (move and copy)
    (scripts / "versions" / "0002_balance.py").write_text(
        "revision = '0002'\ndown_revision = '0001'\nbranch_labels = None\ndepends_on = None\n"
        + head +
        "def upgrade():\n"
        "    with op.batch_alter_table('accounts') as b:\n"
        "        b.add_column(sa.Column('balance', sa.Numeric(12, 2), nullable=False,"
        " server_default='0'))\n"
        "        b.alter_column('owner', existing_type=sa.String(50), nullable=False)\n"
        "        b.create_index('ix_accounts_owner', ['owner'], unique=True)\n"
        "def downgrade():\n"
        "    with op.batch_alter_table('accounts') as b:\n"
        "        b.drop_index('ix_accounts_owner')\n"
        "        b.alter_column('owner', existing_type=sa.String(50), nullable=True)\n"
        "        b.drop_column('balance')\n")


def test_alembic_upgrade_and_downgrade(plain_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config
    _write_migrations(tmp_path / "migrations")
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url_for(plain_server).replace("%", "%%"))
    engine = engine_for(plain_server)

    def state() -> tuple[str | None, list[str], dict[str, bool]]:
        insp = inspect(engine)
        with engine.connect() as conn:
            version = (conn.scalar(text("SELECT version_num FROM alembic_version"))
                       if insp.has_table("alembic_version") else None)
        if not insp.has_table("accounts"):
            return version, [], {}
        return (version, [i["name"] for i in insp.get_indexes("accounts")],
                {c["name"]: c["nullable"] for c in insp.get_columns("accounts")})

    command.upgrade(cfg, "0001")
    assert state() == ("0001", [], {"id": False, "owner": True})
    command.upgrade(cfg, "head")
    assert state() == ("0002", ["ix_accounts_owner"],
                       {"id": False, "owner": False, "balance": False})
    with engine.connect() as conn:  # the data survived the table copy
        assert conn.execute(text("SELECT owner, balance FROM accounts")).one() == ("ada", 0)
    command.downgrade(cfg, "0001")
    assert state() == ("0001", [], {"id": False, "owner": True})
    command.downgrade(cfg, "base")
    assert state()[1:] == ([], {})
    engine.dispose()


def test_pool_pre_ping_across_a_server_restart(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    no_retry = {"reconnect_attempts": 0}  # so the pool, not the driver, must recover
    engine = engine_for(server, pool_pre_ping=True, pool_size=2, connect_args=no_retry)
    naive = engine_for(server, connect_args=no_retry)  # no pre-ping
    for e in (engine, naive):
        with e.connect() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            conn.commit()
    port = server.port
    server.stop()
    set_setting(db, "encrypt_client_server_connections", "true")  # and come back encrypted
    server2 = server_factory(db, port=port)
    assert server2.port == port
    with engine.connect() as conn:  # the pooled connection is dead: pre-ping replaces it
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
        assert conn.connection.dbapi_connection.security.encrypted  # type: ignore[union-attr]
    with naive.connect() as conn:  # without pre-ping: a disconnect error, the pool is reset
        with pytest.raises(exc.OperationalError) as info:
            conn.execute(text("SELECT count(*) FROM t"))
        assert info.value.connection_invalidated
        assert "08006" in str(info.value)
    with naive.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    engine.dispose()
    naive.dispose()


def test_a_server_with_other_storage_is_refused_clearly(plain_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(plain_server)
    monkeypatch.setattr(casemate.Connection, "backend", property(lambda self: "postgresql"))
    with pytest.raises(exc.NotSupportedError, match="stores its data in 'postgresql'"):
        engine.connect()
    assert engine.pool.checkedout() == 0
    monkeypatch.undo()
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
    engine.dispose()


def test_async_engine(tls_server) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import selectinload
    ca = tls_server.db / "Resources" / "cert.pem"
    url = url_for(tls_server, "casemate+async") + f"?tls_ca={ca}&encryption=required"

    async def main() -> None:
        engine = create_async_engine(url, pool_pre_ping=True)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
            await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"),
                               [{"b": f"note {i}"} for i in range(5000)])
            result = await conn.execute(text("UPDATE notes SET body = upper(body) WHERE id <= 2"))
            assert result.rowcount == 2
            await conn.execute(text("DELETE FROM notes WHERE id > 4000"))
            await conn.run_sync(Base.metadata.create_all)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT body FROM notes ORDER BY id LIMIT 3"))).all()
            assert [r[0] for r in rows] == ["NOTE 0", "NOTE 1", "note 2"]
            n = 0  # a server-side cursor: rows arrive in batches while we iterate
            stream = await conn.stream(text("SELECT id FROM notes ORDER BY id"))
            async for _row in stream:
                n += 1
            assert n == 4000
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.security.verified_by == "CA"  # type: ignore[union-attr]
        async with AsyncSession(engine, expire_on_commit=False) as s:
            s.add(Customer(name="Ada", orders=[Order(amount=3), Order(amount=4)]))
            await s.commit()
            c = (await s.scalars(select(Customer).options(selectinload(Customer.orders)))).one()
            assert sorted(o.amount for o in c.orders) == [3, 4]
        async with engine.connect() as conn:
            with pytest.raises(exc.IntegrityError):
                await conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'dup')"))
            await conn.rollback()
            conn2 = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn2.execute(text("INSERT INTO notes (body) VALUES ('auto')"))
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM notes")) == 4001
        await engine.dispose()
    asyncio.run(main())
