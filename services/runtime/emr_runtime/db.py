"""MongoDB access shared by the services: one client factory and idempotent index creation.

Only what both MongoDB and FerretDB 1.x support is used: single-document atomic writes, unique
indexes, findAndModify, $setOnInsert, $inc. No transactions, no change streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

Document = dict[str, Any]
Database = AsyncDatabase[Document]


def create_mongo_client(uri: str, app_name: str) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        uri,
        appname=app_name,
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=10_000,
    )


@dataclass(frozen=True)
class IndexSpec:
    """An index a repository relies on; created at start-up if missing."""

    collection: str
    keys: Sequence[tuple[str, int]]
    name: str
    unique: bool = False


async def ensure_indexes(db: Database, specs: Iterable[IndexSpec]) -> None:
    for spec in specs:
        await db[spec.collection].create_index(list(spec.keys), name=spec.name, unique=spec.unique)


def is_duplicate_key(error: Exception) -> bool:
    return isinstance(error, DuplicateKeyError)


async def next_sequence(db: Database, counter: str) -> int:
    """Allocates the next number of a named counter atomically (findAndModify with $inc)."""

    document = await db["counters"].find_one_and_update(
        {"_id": counter}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert document is not None  # upsert always returns the document
    return int(document["value"])
