"""Pipelined replies come back in the order of their requests.

A request that arrived while the session's task was taking the previous one from its
queue used to be served at once in data_received, so its reply overtook the earlier
one's: the asyncio client then gave each task another task's result (seen as 4 of 6,000
replies misplaced).  Requests here arrive spread out, inside transactions, and with SQL
texts the server has not timed yet, so that some queue and some could be served at once.
"""

from __future__ import annotations

import asyncio
import random

import casemate.aio
from tests.conftest import ServerProcess


def test_pipelined_replies_keep_their_order(plain_server: ServerProcess) -> None:
    async def main() -> list[tuple[int, object]]:
        conn = await casemate.aio.connect(plain_server.url)
        rng = random.Random(7)
        wrong: list[tuple[int, object]] = []

        async def one(i: int, rnd: int) -> list[tuple[object, ...]]:
            await asyncio.sleep(rng.uniform(0, 0.01))
            return await conn.fetch(f"SELECT ? + 0 * {rnd}", (i,))
        try:
            for rnd in range(150):
                await conn.fetch("SELECT 1")  # autocommit off: a transaction is open
                results = await asyncio.gather(*(one(i, rnd) for i in range(100)))
                wrong += [(i, r) for i, r in enumerate(results) if r != [(i,)]]
                await conn.rollback()
        finally:
            await conn.close()
        return wrong
    assert asyncio.run(main()) == []
