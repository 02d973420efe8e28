"""MongoDB access shared by the services: one client factory and idempotent index creation.

Only what both MongoDB and FerretDB 1.x support is used: single-document atomic writes, unique
indexes, findAndModify, $setOnInsert, $inc. No transactions, no change streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    CollectionInvalid,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

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


NAMESPACE_EXISTS = 48  # the server's error code when a concurrent create won


async def create_collections(db: Database, names: Iterable[str]) -> None:
    """Creates the collections that do not exist yet, at start-up rather than at first write, so
    that a database-side step (the `_id` lookup index of emr_devstack.ferretdb_sqlite) finds them."""
    existing = set(await db.list_collection_names())
    for name in names:
        if name in existing:
            continue
        try:
            await db.create_collection(name)
        except CollectionInvalid:
            pass  # another replica created it meanwhile
        except OperationFailure as error:
            if error.code != NAMESPACE_EXISTS:
                raise


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


SEQUENCE_CLAIMS = "sequence_claims"


async def next_sequence(db: Database, counter: str) -> int:
    """Allocates the next number of a named counter; no two callers ever get the same number.

    A number is taken by inserting ``<counter>:<n>`` (a unique ``_id``), not by ``$inc``: FerretDB
    1.x on SQLite reads and writes an update in separate steps, so concurrent increments of one
    document are lost (measured: 64 concurrent ``$inc`` counted 3) and handed out duplicates. The
    counter document is only a hint where to start looking; a hint that fell behind costs a few
    refused inserts, never a duplicate. A retry after a lost answer may skip a number."""
    hint = await retry_transient(lambda: db["counters"].find_one({"_id": counter}))
    number = int(hint["value"]) + 1 if hint else 1
    claims = db[SEQUENCE_CLAIMS]
    while True:
        try:
            await retry_transient(partial(claims.insert_one, {"_id": f"{counter}:{number}"}))
            break
        except DuplicateKeyError:
            number += 1
    # Two first allocations may race to create the hint: it exists then, which is all it needs.
    with contextlib.suppress(DuplicateKeyError):
        await retry_transient(
            partial(db["counters"].update_one, {"_id": counter}, {"$max": {"value": number}}, upsert=True)
        )
    return number


async def last_sequence(db: Database, counter: str) -> int:
    """The highest number ``next_sequence`` has handed out for ``counter`` (0: none): the hint,
    then forward over numbers already claimed (the hint may lag behind by a few)."""
    hint = await db["counters"].find_one({"_id": counter})
    number = int(hint["value"]) if hint else 0
    while await db[SEQUENCE_CLAIMS].find_one({"_id": f"{counter}:{number + 1}"}, {"_id": 1}) is not None:
        number += 1
    return number
