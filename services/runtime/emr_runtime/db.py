"""MongoDB access shared by the services: one client factory and idempotent index creation.

Only what both MongoDB and FerretDB 1.x support is used: single-document atomic writes, unique
indexes, findAndModify, $setOnInsert, $inc. No transactions, no change streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from emr_runtime.telemetry import MongoCommandTracing

Document = dict[str, Any]
Database = AsyncDatabase[Document]


def create_mongo_client(uri: str, app_name: str) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        uri,
        appname=app_name,
        event_listeners=[MongoCommandTracing()],
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


async def insert_or_get(collection: AsyncCollection[Document], document: Document) -> tuple[Document, bool]:
    """Inserts a document with a derived ``_id``; if one with that ``_id`` exists (a repeated
    request), returns the stored one instead. The bool says whether this call inserted it."""
    try:
        await collection.insert_one(document)
        return document, True
    except DuplicateKeyError:
        stored = await collection.find_one({"_id": document["_id"]})
        if stored is None:
            raise  # the duplicate is on another unique index: the caller's to handle
        return stored, False


async def next_sequence(db: Database, counter: str) -> int:
    """Allocates the next number of a named counter atomically (findAndModify with $inc)."""

    document = await db["counters"].find_one_and_update(
        {"_id": counter}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert document is not None  # upsert always returns the document
    return int(document["value"])
