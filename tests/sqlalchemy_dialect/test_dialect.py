"""SQLAlchemy, pandas and Alembic against real Casemate servers through casemate:// URLs."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
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
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.conftest import ADMIN_PASSWORD, set_setting


def engine_for(server, **kw):  # type: ignore[no-untyped-def]
    return create_engine(f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{server.port}", **kw)


@pytest.mark.parametrize("fixture", ["plain_server", "tls_server"])
def test_core_crud_and_reflection(request: pytest.FixtureRequest, fixture: str) -> None:
    server = request.getfixturevalue(fixture)
    engine = engine_for(server)
    md = MetaData()
    people = Table("people", md, Column("id", Integer, primary_key=True),
                   Column("name", String(50), nullable=False), Column("born", DateTime),
                   Column("joined", Date), Column("salary", Numeric(10, 2)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [
            {"name": "Ada", "born": dt.datetime(1815, 12, 10, 8, 30), "joined": dt.date(1833, 6, 5),
             "salary": 100},
            {"name": "Alan", "born": dt.datetime(1912, 6, 23), "joined": None, "salary": None}])
    with engine.connect() as conn:
        rows = conn.execute(select(people.c.name, people.c.born)
                            .where(people.c.born > dt.datetime(1900, 1, 1))).fetchall()
        assert rows == [("Alan", dt.datetime(1912, 6, 23))]
        assert conn.execute(select(people.c.joined).where(people.c.name == "Ada")
                            ).scalar() == dt.date(1833, 6, 5)
        assert conn.execute(text("SELECT count(*) FROM people")).scalar() == 2
    insp = inspect(engine)
    assert "people" in insp.get_table_names()
    cols = {c["name"]: c for c in insp.get_columns("people")}
    assert set(cols) == {"id", "name", "born", "joined", "salary"}
    assert cols["name"]["nullable"] is False
    assert insp.get_pk_constraint("people")["constrained_columns"] == ["id"]
    engine.dispose()


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    orders: Mapped[list[Order]] = relationship(back_populates="customer",
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
        s.add(Customer(name="Grace", orders=[Order(amount=10), Order(amount=32)]))
        s.commit()
    with Session(engine) as s:
        grace = s.scalars(select(Customer).where(Customer.name == "Grace")).one()
        assert sorted(o.amount for o in grace.orders) == [10, 32]
        grace.orders.pop()
        s.commit()
        assert s.scalar(select(Order.id).where(Order.customer_id == grace.id)) is not None
        assert len(s.scalars(select(Order)).all()) == 1
        s.rollback()
    engine.dispose()


def test_pandas_read_sql_and_to_sql(plain_server) -> None:  # type: ignore[no-untyped-def]
    pd = pytest.importorskip("pandas")
    engine = engine_for(plain_server)
    df = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "population": [709_000, 9_750_000,
                                                                         3_124_000]})
    df.to_sql("cities", engine, index=False)
    back = pd.read_sql("SELECT city, population FROM cities ORDER BY population", engine)
    assert back["city"].tolist() == ["Oslo", "Pune", "Lima"]
    assert back["population"].sum() == df["population"].sum()
    engine.dispose()


def test_alembic_upgrade_and_downgrade(plain_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("alembic")
    from alembic import command
    from alembic.config import Config
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(
        "from alembic import context\n"
        "from sqlalchemy import engine_from_config, pool\n"
        "cfg = context.config\n"
        "engine = engine_from_config(cfg.get_section(cfg.config_ini_section), "
        "prefix='sqlalchemy.', poolclass=pool.NullPool)\n"
        "with engine.connect() as conn:\n"
        "    context.configure(connection=conn, target_metadata=None)\n"
        "    with context.begin_transaction():\n"
        "        context.run_migrations()\n")
    (scripts / "script.py.mako").write_text("")
    (scripts / "versions" / "0001_accounts.py").write_text(
        "revision = '0001'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        "from alembic import op\nimport sqlalchemy as sa\n"
        "def upgrade():\n"
        "    op.create_table('accounts', sa.Column('id', sa.Integer, primary_key=True),"
        " sa.Column('owner', sa.String(50)))\n"
        "def downgrade():\n"
        "    op.drop_table('accounts')\n")
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("sqlalchemy.url",
                        f"casemate://admin:{ADMIN_PASSWORD}@127.0.0.1:{plain_server.port}")
    command.upgrade(cfg, "head")
    engine = engine_for(plain_server)
    assert "accounts" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    command.downgrade(cfg, "base")
    assert "accounts" not in inspect(engine).get_table_names()
    engine.dispose()


def test_pool_pre_ping_across_a_server_restart(make_db, server_factory) -> None:  # type: ignore[no-untyped-def]
    db = make_db()
    server = server_factory(db)
    engine = engine_for(server, pool_pre_ping=True, pool_size=2,
                        connect_args={"reconnect_attempts": 0})
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (x)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.commit()
    port = server.port
    server.stop()
    set_setting(db, "encrypt_client_server_connections", "true")  # and come back encrypted
    server2 = server_factory(db, port=port)
    with engine.connect() as conn:  # the pooled connection is dead: pre-ping replaces it
        assert conn.execute(text("SELECT x FROM t")).scalar() == 1
        assert conn.connection.dbapi_connection.security.encrypted  # type: ignore[union-attr]
    engine.dispose()
    assert server2.port == port


def test_url_options_and_async_engine(tls_server) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.ext.asyncio import create_async_engine
    ca = tls_server.db / "Resources" / "cert.pem"
    url = (f"casemate+async://admin:{ADMIN_PASSWORD}@127.0.0.1:{tls_server.port}"
           f"?tls_ca={ca}&encryption=required&connect_timeout=5")

    async def main() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
            await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), [{"b": "one"},
                                                                          {"b": "two"}])
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).fetchall()
            assert [r[0] for r in rows] == ["one", "two"]
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.security.verified_by == "CA"  # type: ignore[union-attr]
        await engine.dispose()
    asyncio.run(main())
