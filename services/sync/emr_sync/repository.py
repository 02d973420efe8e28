"""MongoDB storage of sync state: the queue of deliveries waiting to be sent, the deliveries that
reached an end (delivered with their receipts, or dead-lettered), payloads, feed cursors, work
leases, the national system's reachability and operations' results.

Shaped for FerretDB 1.x on SQLite, where every update or delete is a scan of its whole collection
and a scan decodes every document: a delivery is never updated on its way out. Waiting deliveries
(with their payload, compressed) sit in ``queue``, read by one query per round; a round's outcomes
move them to ``deliveries`` in bulk, a chunk at a time (one insert_many, then one bulk of deletes by
_id). Only a failed attempt updates its queue document. Payloads are also kept in ``payloads`` for re-sends (replay, reconcile,
dead-letter retries). What a lease holder is sending is listed in ``in_flight``, one document per
partition (not in the lease document: leases are claimed often and must stay small).

No transactions: a lease is one findAndModify on one document (claimed when free or expired);
queueing inserts by delivery id (a repeat is a duplicate key, ignored); a delivery is written to
``deliveries`` before it leaves ``queue``, so a crash between the two resends it (harmlessly: the
national side deduplicates by key) and never loses it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, DeleteOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from emr_runtime.db import Database, IndexSpec, insert_or_get
from emr_runtime.fieldcrypt import FieldCrypt
from emr_sync.domain import Delivery, DeliveryKind, DeliveryStatus, Receipt

DELIVERIES = "deliveries"
QUEUE = "queue"
CURSORS = "cursors"
LEASES = "leases"
IN_FLIGHT = "in_flight"
EVENTS = "sync_events"
OPERATIONS = "operations"
# Payloads (also kept for replay, reconcile and dead-letter retries) carry CCCD and BHYT numbers:
# stored sealed (stored_body).
PAYLOADS = "payloads"
PAYLOAD_KIND = "sync.payload"
INDEXES = (
    IndexSpec(QUEUE, (("partition", 1), ("sequence", 1)), "queue_by_partition"),
    IndexSpec(QUEUE, (("next_attempt_at", 1),), "queue_next_due"),
    IndexSpec(QUEUE, (("facility_code", 1), ("created_at", 1)), "queue_oldest"),
    IndexSpec(DELIVERIES, (("facility_code", 1), ("status", 1)), "deliveries_by_facility"),
    IndexSpec(DELIVERIES, (("status", 1), ("delivered_at", -1)), "deliveries_last_delivered"),
    IndexSpec(DELIVERIES, (("status", 1), ("dead_at", -1)), "deliveries_dead"),
    IndexSpec(DELIVERIES, (("committed_at", 1),), "deliveries_by_commit_time"),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PENDING = DeliveryStatus.PENDING.value
_DUPLICATE_KEY = 11000


def stored_body(crypt: FieldCrypt, payload: bytes) -> bytes:
    """A payload as stored: compressed, because FerretDB decodes every byte of a collection it
    scans, then sealed, because it carries CCCD and BHYT numbers (emr_runtime.fieldcrypt)."""
    return crypt.seal(PAYLOAD_KIND, zlib.compress(payload, 1))


def sent_body(crypt: FieldCrypt, stored: bytes) -> bytes:
    return zlib.decompress(crypt.unseal(PAYLOAD_KIND, stored))


def _fields(delivery: Delivery) -> dict[str, Any]:
    return {
        "kind": delivery.kind.value,
        "resource_type": delivery.resource_type,
        "resource_id": delivery.resource_id,
        "resource_version": delivery.resource_version,
        "patient_id": delivery.patient_id,
        "facility_code": delivery.facility_code,
        "sequence": delivery.sequence,
        "partition": delivery.partition,
        "committed_at": delivery.committed_at,
        "created_at": delivery.created_at,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_error": delivery.last_error,
    }


def _queued(delivery: Delivery, body: bytes) -> dict[str, Any]:
    return {"_id": delivery.delivery_id, **_fields(delivery), "body": body}


def _ended(delivery: Delivery) -> dict[str, Any]:
    """A delivery's document in ``deliveries``: its end (delivered or dead) and its receipts."""
    delivered = delivery.status is DeliveryStatus.DELIVERED
    return {
        "_id": delivery.delivery_id,
        **_fields(delivery),
        "status": delivery.status.value,
        "delivered_at": delivery.delivered_at,
        "transaction_id": delivery.transaction_id,
        "dead_at": delivery.dead_at,
        # Receipts are kept: the national side forgets after weeks, this does not.
        "receipts": [{"transaction_id": delivery.transaction_id, "at": delivery.delivered_at}]
        if delivered
        else [],
    }


def _delivery(crypt: FieldCrypt, document: Mapping[str, Any], status: str | None = None) -> Delivery:
    body = document.get("body")
    return Delivery(
        delivery_id=document["_id"],
        kind=DeliveryKind(document["kind"]),
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        resource_version=document["resource_version"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        sequence=document["sequence"],
        partition=document["partition"],
        payload=sent_body(crypt, bytes(body)) if body is not None else b"",
        committed_at=document["committed_at"],
        created_at=document["created_at"],
        status=DeliveryStatus(status or document["status"]),
        attempts=document["attempts"],
        next_attempt_at=document.get("next_attempt_at"),
        last_error=document.get("last_error", ""),
        delivered_at=document.get("delivered_at"),
        transaction_id=document.get("transaction_id", ""),
        dead_at=document.get("dead_at"),
    )


_RECEIPT_FIELDS = {"kind": 1, "facility_code": 1, "transaction_id": 1, "delivered_at": 1, "status": 1}


def _receipt(document: Mapping[str, Any]) -> Receipt:
    return Receipt(
        delivery_id=document["_id"],
        kind=DeliveryKind(document["kind"]),
        facility_code=document.get("facility_code", ""),
        transaction_id=document.get("transaction_id", ""),
        delivered_at=document["delivered_at"],
    )


def _by_ids(ids: list[str]) -> dict[str, Any]:
    # FerretDB finds one _id without a scan only when the filter is exactly {_id: value}.
    return {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}}


def _in_flight(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """A partition's in-flight list: what status counts (ids, per facility), no payloads."""
    return [{"_id": d.delivery_id, "facility_code": d.facility_code} for d in deliveries]


def _facility(facility_code: str) -> dict[str, Any]:
    return {"facility_code": facility_code} if facility_code else {}


async def _insert_new(
    collection: AsyncCollection[dict[str, Any]], documents: list[dict[str, Any]]
) -> set[str]:
    """Inserts documents by _id; returns the ids that were already there (left unchanged)."""
    if not documents:
        return set()
    try:
        await collection.insert_many(documents, ordered=False)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        if any(e.get("code") != _DUPLICATE_KEY for e in errors):
            raise
        return {documents[e["index"]]["_id"] for e in errors}
    return set()


class SyncRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._crypt = crypt
        self._queue = db[QUEUE]
        self._deliveries = db[DELIVERIES]
        self._cursors = db[CURSORS]
        self._leases = db[LEASES]
        self._in_flight = db[IN_FLIGHT]
        self._events = db[EVENTS]
        self._operations = db[OPERATIONS]
        self._payloads = db[PAYLOADS]

    # --- queue ----------------------------------------------------------------------------------
    async def enqueue(self, deliveries: list[Delivery]) -> None:
        """Adds deliveries not queued before (a payload that could not be built goes straight to
        the dead letters); re-reading a change after a crash adds nothing it has not sent."""
        waiting = [d for d in deliveries if d.status is DeliveryStatus.PENDING]
        # A change read again after a crash may have been sent and settled meanwhile (by this
        # replica's own delivery round): queued again, it would be sent twice. Settling writes the
        # ended delivery before it leaves the queue, so one of the two is always found here.
        ended = await self.ended_ids([d.delivery_id for d in waiting])
        waiting = [d for d in waiting if d.delivery_id not in ended]
        bodies = {d.delivery_id: stored_body(self._crypt, bytes(d.payload)) for d in waiting}
        # Payloads first: a queued delivery can always be sent again later.
        await _insert_new(self._payloads, [{"_id": key, "body": body} for key, body in bodies.items()])
        await _insert_new(self._queue, [_queued(d, bodies[d.delivery_id]) for d in waiting])
        await _insert_new(
            self._deliveries, [_ended(d) for d in deliveries if d.status is not DeliveryStatus.PENDING]
        )

    async def cursor(self, name: str) -> int:
        document = await self._cursors.find_one({"_id": name})
        return int(document["after"]) if document else 0

    async def save_cursor(self, name: str, after: int) -> None:
        # $max: a replica whose intake lease lapsed mid-round can never move the cursor back.
        await self._cursors.update_one({"_id": name}, {"$max": {"after": after}}, upsert=True)

    async def any_due(self, now: datetime) -> bool:
        """Whether any delivery waits and is due: an idle replica then leases nothing."""
        found = await self._queue.find_one({"next_attempt_at": {"$lte": now}}, {"_id": 1})
        return found is not None

    async def open_in_partitions(self, partitions: list[int], limit: int) -> list[Delivery]:
        """The oldest ``limit`` queued deliveries of these partitions, with their payloads: one
        query (a scan on FerretDB) per round, however many are sent."""
        cursor = self._queue.find({"partition": {"$in": partitions}}).sort([("sequence", 1)]).limit(limit)
        return [_delivery(self._crypt, document, _PENDING) async for document in cursor]

    async def mark_in_flight(self, lease: str, owner: str, deliveries: list[Delivery]) -> None:
        """Lists what the holder of the partition ``lease`` is about to send."""
        await self._in_flight.update_one(
            {"_id": lease}, {"$set": {"owner": owner, "deliveries": _in_flight(deliveries)}}, upsert=True
        )

    async def narrow_in_flight(self, lease: str, owner: str, deliveries: list[Delivery]) -> None:
        """Shortens the list of the holder of ``lease`` to what it is still sending (empty: clears
        it); a list another replica took over is left alone."""
        await self._in_flight.update_one(
            {"_id": lease, "owner": owner}, {"$set": {"deliveries": _in_flight(deliveries)}}
        )

    async def mark_failed(
        self, delivery_id: str, error: str, next_attempt_at: datetime, now: datetime
    ) -> None:
        await self._queue.update_one(
            {"_id": delivery_id},
            {"$set": {"last_error": error, "next_attempt_at": next_attempt_at}, "$inc": {"attempts": 1}},
        )
        await self._events.update_one(
            {"_id": "last_error"}, {"$set": {"error": error, "at": now}}, upsert=True
        )

    async def ended_ids(self, delivery_ids: list[str]) -> set[str]:
        """Which of these deliveries reached an end: one _id lookup each (FerretDB indexes only those)."""
        found = await asyncio.gather(
            *(self._deliveries.find_one({"_id": i}, projection={"_id": 1}) for i in delivery_ids)
        )
        return {str(document["_id"]) for document in found if document is not None}

    async def settle(self, ended: list[Delivery]) -> None:
        """Moves deliveries that reached an end (delivered, dead) out of the queue, in bulk."""
        if not ended:
            return
        again = await _insert_new(self._deliveries, [_ended(d) for d in ended])
        for delivery in ended:
            # Sent again (replay, reconcile, retry, a resend after a crash): one more receipt.
            if delivery.delivery_id in again:
                await self._deliveries.update_one({"_id": delivery.delivery_id}, _ended_again(delivery))
        # One delete per _id in one round trip: each is a filter FerretDB hands to its index, where
        # one delete of {_id: {$in: [...]}} decodes the whole queue (measured on 20,000 queued,
        # 5,000 deleted: 1.85 s against 2.62 s).
        await self._queue.bulk_write([DeleteOne({"_id": d.delivery_id}) for d in ended], ordered=False)

    async def requeue(self, query: dict[str, Any], now: datetime) -> int:
        """Puts matching ended deliveries back in the queue, due at once; returns how many."""
        ended = [_delivery(self._crypt, document) async for document in self._deliveries.find(query)]
        if not ended:
            return 0
        ids = [d.delivery_id for d in ended]
        bodies = {
            document["_id"]: bytes(document["body"]) async for document in self._payloads.find(_by_ids(ids))
        }
        # A payload that could never be built was dead-lettered without one: it is sent empty, and
        # refused again with the national side's reason.
        await _insert_new(
            self._queue,
            [
                {
                    **_queued(d, bodies.get(d.delivery_id) or stored_body(self._crypt, b"")),
                    "next_attempt_at": now,
                }
                for d in ended
            ],
        )
        result = await self._deliveries.update_many(
            _by_ids(ids),
            {"$set": {"status": _PENDING, "requeued_at": now}},
        )
        return int(result.modified_count)

    async def requeue_dead(self, delivery_id: str, now: datetime) -> bool:
        return (await self.requeue({"_id": delivery_id, "status": DeliveryStatus.DEAD.value}, now)) == 1

    async def exists(self, delivery_id: str) -> bool:
        for collection in (self._deliveries, self._queue):
            if await collection.count_documents({"_id": delivery_id}, limit=1):
                return True
        return False

    async def requeue_committed_since(self, since: datetime, facility_code: str, now: datetime) -> int:
        query = {
            "committed_at": {"$gte": since},
            "status": DeliveryStatus.DELIVERED.value,
            **_facility(facility_code),
        }
        return await self.requeue(query, now)

    async def delivered_between(
        self, start: datetime, end: datetime, limit: int
    ) -> list[tuple[str, str, str]]:
        """(delivery id, transaction id, facility code) of receipts of the period, oldest first."""
        cursor = (
            self._deliveries.find(
                {"status": DeliveryStatus.DELIVERED.value, "delivered_at": {"$gte": start, "$lt": end}},
                {"_id": 1, "transaction_id": 1, "facility_code": 1},
            )
            .sort([("delivered_at", 1)])
            .limit(limit)
        )
        return [(d["_id"], d.get("transaction_id", ""), d.get("facility_code", "")) async for d in cursor]

    async def receipts(self, delivery_ids: list[str], facility_code: str) -> list[Receipt]:
        """Receipts of these deliveries (one _id lookup each: FerretDB indexes no other filter);
        those not delivered, unknown or of another facility are left out."""
        found = []
        for delivery_id in delivery_ids:
            document = await self._deliveries.find_one({"_id": delivery_id}, _RECEIPT_FIELDS)
            if (
                document is not None
                and document.get("status") == DeliveryStatus.DELIVERED.value
                and (not facility_code or document.get("facility_code") == facility_code)
            ):
                found.append(_receipt(document))
        return found

    async def last_receipt(self, facility_code: str) -> Receipt | None:
        document = await self._deliveries.find_one(
            {"status": DeliveryStatus.DELIVERED.value, **_facility(facility_code)},
            _RECEIPT_FIELDS,
            sort=[("delivered_at", -1)],
        )
        return _receipt(document) if document else None

    async def requeue_ids(self, delivery_ids: list[str], now: datetime) -> int:
        if not delivery_ids:
            return 0
        return await self.requeue({**_by_ids(delivery_ids), "status": DeliveryStatus.DELIVERED.value}, now)

    async def dead_letters(
        self, facility_code: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Delivery]:
        query: dict[str, Any] = {"status": DeliveryStatus.DEAD.value, **_facility(facility_code)}
        if after is not None:
            query["$or"] = [
                {"dead_at": {"$lt": after[0]}},
                {"dead_at": after[0], "_id": {"$lt": after[1]}},
            ]
        cursor = (
            self._deliveries.find(query).sort([("dead_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        )
        return [_delivery(self._crypt, document) async for document in cursor]

    async def dead_at(self, delivery_id: str) -> datetime | None:
        document = await self._deliveries.find_one({"_id": delivery_id}, {"dead_at": 1})
        return document.get("dead_at") if document else None

    # --- leases ---------------------------------------------------------------------------------
    async def claim_lease(self, name: str, owner: str, until: datetime, now: datetime) -> bool:
        """Takes (or extends) the lease ``name`` if it is free, expired or already ours."""
        try:
            document = await self._leases.find_one_and_update(
                {"_id": name, "$or": [{"expires_at": {"$lte": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "expires_at": until}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # held by another replica: the upsert collided with its document
        return document is not None and document.get("owner") == owner

    async def create_leases(self, names: list[str]) -> None:
        """Creates the lease documents, free, once: claims then only update them."""
        await self._leases.bulk_write(
            [
                UpdateOne({"_id": name}, {"$setOnInsert": {"owner": "", "expires_at": _EPOCH}}, upsert=True)
                for name in names
            ],
            ordered=False,
        )

    async def release_lease(self, name: str, owner: str) -> None:
        await self._leases.update_one({"_id": name, "owner": owner}, {"$set": {"expires_at": _EPOCH}})

    # --- status ---------------------------------------------------------------------------------
    async def counts(self, facility_code: str) -> dict[str, int]:
        """Deliveries by status: pending from the queue, the others from ``deliveries``."""
        cursor = await self._deliveries.aggregate(
            [
                {"$match": {**_facility(facility_code), "status": {"$ne": _PENDING}}},
                {"$group": {"_id": "$status", "n": {"$sum": 1}}},
            ]
        )
        counts = {document["_id"]: int(document["n"]) async for document in cursor}
        counts[_PENDING] = await self._queue.count_documents(_facility(facility_code))
        return counts

    async def backlog_by_facility(self) -> dict[str, tuple[int, int, datetime | None]]:
        """Facility code -> (pending, dead-lettered, oldest pending time)."""
        # FerretDB 1.x groups with $sum and $count only ($min is not there): the oldest is a query.
        pending = await self._queue.aggregate([{"$group": {"_id": "$facility_code", "n": {"$sum": 1}}}])
        pending_counts = {document["_id"]: int(document["n"]) async for document in pending}
        ended = await self._deliveries.aggregate(
            [{"$group": {"_id": {"facility": "$facility_code", "status": "$status"}, "n": {"$sum": 1}}}]
        )
        dead_counts: dict[str, int] = {}
        async for document in ended:
            # Every facility that ever had a delivery is reported, at 0 when caught up.
            dead = document["_id"]["status"] == DeliveryStatus.DEAD.value
            facility = document["_id"]["facility"]
            dead_counts[facility] = dead_counts.get(facility, 0) + (int(document["n"]) if dead else 0)
        return {
            facility: (
                pending_counts.get(facility, 0),
                dead_counts.get(facility, 0),
                await self.oldest_pending_at(facility) if facility in pending_counts else None,
            )
            for facility in pending_counts.keys() | dead_counts.keys()
        }

    async def count_in_flight(self, facility_code: str, now: datetime) -> int:
        """Deliveries listed in flight by the live holder of their partition's lease."""
        live = {
            (lease["_id"], lease["owner"])
            async for lease in self._leases.find({"expires_at": {"$gt": now}}, {"owner": 1})
        }
        total = 0
        async for listed in self._in_flight.find({}):
            if (listed["_id"], listed.get("owner")) in live:
                total += sum(
                    1
                    for entry in listed.get("deliveries", [])
                    if not facility_code or entry["facility_code"] == facility_code
                )
        return total

    async def count_failed(self, facility_code: str) -> int:
        return await self._queue.count_documents({"attempts": {"$gt": 0}, **_facility(facility_code)})

    async def oldest_pending_at(self, facility_code: str) -> datetime | None:
        document = await self._queue.find_one(
            _facility(facility_code), {"created_at": 1}, sort=[("created_at", 1)]
        )
        return document["created_at"] if document else None

    async def last_error(self) -> str:
        document = await self._events.find_one({"_id": "last_error"})
        return str(document["error"]) if document else ""

    async def save_reachability(self, reachable: bool, now: datetime) -> None:
        await self._events.update_one(
            {"_id": "national"}, {"$set": {"reachable": reachable, "at": now}}, upsert=True
        )

    async def reachability(self) -> tuple[bool, datetime | None]:
        document = await self._events.find_one({"_id": "national"})
        if document is None:
            return True, None
        return bool(document["reachable"]), document["at"]

    # --- operations (idempotent by request_id) --------------------------------------------------
    async def begin_operation(self, operation_id: str, fingerprint: str) -> dict[str, Any]:
        stored, _ = await insert_or_get(self._operations, {"_id": operation_id, "fingerprint": fingerprint})
        return stored

    async def finish_operation(self, operation_id: str, result: dict[str, Any]) -> None:
        await self._operations.update_one({"_id": operation_id}, {"$set": {"result": result}})


def _ended_again(delivery: Delivery) -> dict[str, Any]:
    """The update of a delivery that had ended before and ended again: its new end, one more receipt."""
    document = _ended(delivery)
    receipts = document.pop("receipts")
    del document["_id"]
    update: dict[str, Any] = {"$set": document}
    if receipts:
        update["$push"] = {"receipts": receipts[0]}
    return update
