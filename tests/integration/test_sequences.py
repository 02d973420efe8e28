"""Counters on the real database: FerretDB 1.x loses concurrent updates of one document, so a
number handed out must never depend on one (emr_runtime.db.next_sequence)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from emr_runtime.db import last_sequence, next_sequence


async def test_concurrent_allocations_never_share_a_number(mongo: Any) -> None:
    db = mongo[f"emr_sequences_{uuid.uuid4().hex[:8]}"]
    numbers = await asyncio.gather(*(next_sequence(db, "widgets") for _ in range(64)))
    assert sorted(numbers) == list(range(1, 65))
    assert await last_sequence(db, "widgets") == 64
    assert await next_sequence(db, "widgets") == 65
    assert await next_sequence(db, "gadgets") == 1  # counters are independent
    await mongo.drop_database(db.name)


async def test_a_lagging_hint_never_hands_out_a_number_twice(mongo: Any) -> None:
    db = mongo[f"emr_sequences_{uuid.uuid4().hex[:8]}"]
    first = [await next_sequence(db, "widgets") for _ in range(5)]
    await db["counters"].update_one({"_id": "widgets"}, {"$set": {"value": 2}})  # a lost update
    assert await last_sequence(db, "widgets") == 5
    assert await next_sequence(db, "widgets") == 6
    assert first == [1, 2, 3, 4, 5]
    await mongo.drop_database(db.name)
