"""MongoDB access shared by the services: one client factory and idempotent index creation.

Only what both MongoDB and FerretDB 1.x support is used: single-document atomic writes, unique
indexes, findAndModify, $setOnInsert, $inc. No transactions, no change streams.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from emr_runtime.telemetry import MongoCommandTracing

Document = dict[str, Any]
T = TypeVar("T")
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


def is_transient(error: BaseException) -> bool:
    """A database error that a retry of the same operation may not meet: a lost connection, or a
    write that lost a lock race (FerretDB's SQLite backend answers SQLITE_BUSY under concurrent
    writes even with its busy timeout)."""
    if isinstance(error, ConnectionFailure):
        return True
    if isinstance(error, OperationFailure):
        return (
            "SQLITE_BUSY" in str(error)
            or error.has_error_label("RetryableWriteError")
            or error.has_error_label("TransientTransactionError")
        )
    return False


async def retry_transient(operation: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Runs an idempotent database operation, retrying transient errors with jittered backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except PyMongoError as error:
            if attempt == attempts or not is_transient(error):
                raise
            await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311 - jitter only
    raise AssertionError("unreachable")


async def next_sequence(db: Database, counter: str) -> int:
    """Allocates the next number of a named counter atomically (findAndModify with $inc). The
    counter is every writer's hot spot, so lock races on it are retried here."""

    async def increment() -> Document | None:
        update = {"$inc": {"value": 1}}
        try:
            return await db["counters"].find_one_and_update(
                {"_id": counter}, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            # Two first increments raced to create the counter; it exists now.
            return await db["counters"].find_one_and_update(
                {"_id": counter}, update, return_document=ReturnDocument.AFTER
            )

    document = await retry_transient(increment)
    assert document is not None  # upsert always returns the document
    return int(document["value"])
