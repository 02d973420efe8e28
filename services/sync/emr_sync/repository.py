"""MongoDB storage of sync state: deliveries (the durable queue, its receipts and dead letters),
feed cursors, work leases, the national system's reachability and operations' results.

No transactions: a lease is one findAndModify on one document (claimed when free or expired), a
delivery's state changes are single-document updates, and queueing is an upsert with $setOnInsert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from emr_runtime.db import Database, IndexSpec, insert_or_get
from emr_runtime.fieldcrypt import FieldCrypt
from emr_sync.domain import Delivery, DeliveryKind, DeliveryStatus

DELIVERIES = "deliveries"
CURSORS = "cursors"
LEASES = "leases"
EVENTS = "sync_events"
OPERATIONS = "operations"
# Payloads live apart from the queue, read by _id just before sending: queue scans stay small.
# They carry CCCD and BHYT numbers, so they are stored sealed (emr_runtime.fieldcrypt).
PAYLOADS = "payloads"
PAYLOAD_KIND = "sync.payload"
INDEXES = (
    IndexSpec(DELIVERIES, (("partition", 1), ("status", 1), ("sequence", 1)), "deliveries_by_partition"),
    IndexSpec(DELIVERIES, (("facility_code", 1), ("status", 1)), "deliveries_by_facility"),
    IndexSpec(DELIVERIES, (("status", 1), ("delivered_at", -1)), "deliveries_last_delivered"),
    IndexSpec(DELIVERIES, (("status", 1), ("created_at", 1)), "deliveries_oldest"),
    IndexSpec(DELIVERIES, (("status", 1), ("next_attempt_at", 1)), "deliveries_next_due"),
    IndexSpec(DELIVERIES, (("status", 1), ("dead_at", -1)), "deliveries_dead"),
    IndexSpec(DELIVERIES, (("committed_at", 1),), "deliveries_by_commit_time"),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PENDING = DeliveryStatus.PENDING.value


def _document(delivery: Delivery) -> dict[str, Any]:
    return {
        "_id": delivery.delivery_id,
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
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at,
        "transaction_id": delivery.transaction_id,
        "in_flight_until": _EPOCH,
        "dead_at": delivery.created_at if delivery.status is DeliveryStatus.DEAD else None,
    }


def _delivery(document: dict[str, Any]) -> Delivery:
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
        payload=b"",
        committed_at=document["committed_at"],
        created_at=document["created_at"],
        status=DeliveryStatus(document["status"]),
        attempts=document["attempts"],
        next_attempt_at=document.get("next_attempt_at"),
        last_error=document.get("last_error", ""),
        delivered_at=document.get("delivered_at"),
        transaction_id=document.get("transaction_id", ""),
    )


def _facility(facility_code: str) -> dict[str, Any]:
    return {"facility_code": facility_code} if facility_code else {}


class SyncRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._crypt = crypt
        self._deliveries = db[DELIVERIES]
        self._cursors = db[CURSORS]
        self._leases = db[LEASES]
        self._events = db[EVENTS]
        self._operations = db[OPERATIONS]
        self._payloads = db[PAYLOADS]

    # --- queue ----------------------------------------------------------------------------------
    async def enqueue(self, deliveries: list[Delivery]) -> None:
        """Adds deliveries not queued before; re-reading a change after a crash adds nothing."""
        if deliveries:
            # Payloads first: a queued delivery always finds its payload.
            await self._payloads.bulk_write(
                [
                    UpdateOne(
                        {"_id": d.delivery_id},
                        {"$setOnInsert": {"body": self._crypt.seal(PAYLOAD_KIND, d.payload)}},
                        upsert=True,
                    )
                    for d in deliveries
                ],
                ordered=False,
            )
            await self._deliveries.bulk_write(
                [
                    UpdateOne({"_id": d.delivery_id}, {"$setOnInsert": _document(d)}, upsert=True)
                    for d in deliveries
                ],
                ordered=True,
            )

    async def cursor(self, name: str) -> int:
        document = await self._cursors.find_one({"_id": name})
        return int(document["after"]) if document else 0

    async def save_cursor(self, name: str, after: int) -> None:
        # $max: a replica whose intake lease lapsed mid-round can never move the cursor back.
        await self._cursors.update_one({"_id": name}, {"$max": {"after": after}}, upsert=True)

    async def any_due(self, now: datetime) -> bool:
        """Whether any delivery waits and is due: an idle replica then leases nothing."""
        found = await self._deliveries.find_one(
            {"status": _PENDING, "next_attempt_at": {"$lte": now}}, {"_id": 1}
        )
        return found is not None

    async def open_in_partition(self, partition: int, limit: int) -> list[Delivery]:
        cursor = (
            self._deliveries.find({"partition": partition, "status": _PENDING})
            .sort([("sequence", 1)])
            .limit(limit)
        )
        return [_delivery(document) async for document in cursor]

    async def payload(self, delivery_id: str) -> bytes:
        document = await self._payloads.find_one({"_id": delivery_id})
        return self._crypt.unseal(PAYLOAD_KIND, bytes(document["body"])) if document else b""

    async def mark_in_flight(self, delivery_ids: list[str], owner: str, until: datetime) -> None:
        await self._deliveries.update_many(
            {"_id": {"$in": delivery_ids}, "status": _PENDING},
            {"$set": {"in_flight_until": until, "in_flight_by": owner}},
        )

    async def clear_in_flight(self, owner: str) -> None:
        await self._deliveries.update_many(
            {"in_flight_by": owner, "status": _PENDING, "in_flight_until": {"$gt": _EPOCH}},
            {"$set": {"in_flight_until": _EPOCH}},
        )

    async def mark_delivered(self, delivery_id: str, transaction_id: str, now: datetime) -> None:
        await self._deliveries.update_one(
            {"_id": delivery_id},
            {
                "$set": {
                    "status": DeliveryStatus.DELIVERED.value,
                    "delivered_at": now,
                    "transaction_id": transaction_id,
                    "in_flight_until": _EPOCH,
                    "last_error": "",
                },
                "$inc": {"attempts": 1},
                # Receipts are kept: the national side forgets after weeks, this does not.
                "$push": {"receipts": {"transaction_id": transaction_id, "at": now}},
            },
        )

    async def mark_failed(
        self, delivery_id: str, error: str, next_attempt_at: datetime, now: datetime
    ) -> None:
        await self._deliveries.update_one(
            {"_id": delivery_id, "status": _PENDING},
            {
                "$set": {"last_error": error, "next_attempt_at": next_attempt_at, "in_flight_until": _EPOCH},
                "$inc": {"attempts": 1},
            },
        )
        await self._events.update_one(
            {"_id": "last_error"}, {"$set": {"error": error, "at": now}}, upsert=True
        )

    async def mark_dead(self, delivery_id: str, reason: str, now: datetime) -> None:
        await self._deliveries.update_one(
            {"_id": delivery_id, "status": _PENDING},
            {
                "$set": {
                    "status": DeliveryStatus.DEAD.value,
                    "last_error": reason,
                    "dead_at": now,
                    "in_flight_until": _EPOCH,
                },
                "$inc": {"attempts": 1},
            },
        )

    async def requeue(self, query: dict[str, Any], now: datetime) -> int:
        """Puts matching deliveries back in the queue, due at once; returns how many."""
        result = await self._deliveries.update_many(
            query,
            {
                "$set": {
                    "status": _PENDING,
                    "next_attempt_at": now,
                    "in_flight_until": _EPOCH,
                    "requeued_at": now,
                }
            },
        )
        return int(result.modified_count)

    async def requeue_dead(self, delivery_id: str, now: datetime) -> bool:
        return (await self.requeue({"_id": delivery_id, "status": DeliveryStatus.DEAD.value}, now)) == 1

    async def exists(self, delivery_id: str) -> bool:
        return await self._deliveries.count_documents({"_id": delivery_id}, limit=1) > 0

    async def requeue_committed_since(self, since: datetime, facility_code: str, now: datetime) -> int:
        query = {
            "committed_at": {"$gte": since},
            "status": DeliveryStatus.DELIVERED.value,
            **_facility(facility_code),
        }
        return await self.requeue(query, now)

    async def delivered_between(self, start: datetime, end: datetime, limit: int) -> list[tuple[str, str]]:
        """(delivery id, transaction id) of receipts of the period, oldest first."""
        cursor = (
            self._deliveries.find(
                {"status": DeliveryStatus.DELIVERED.value, "delivered_at": {"$gte": start, "$lt": end}},
                {"_id": 1, "transaction_id": 1},
            )
            .sort([("delivered_at", 1)])
            .limit(limit)
        )
        return [(d["_id"], d.get("transaction_id", "")) async for d in cursor]

    async def requeue_ids(self, delivery_ids: list[str], now: datetime) -> int:
        if not delivery_ids:
            return 0
        return await self.requeue(
            {"_id": {"$in": delivery_ids}, "status": DeliveryStatus.DELIVERED.value}, now
        )

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
        return [_delivery(document) async for document in cursor]

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
        cursor = await self._deliveries.aggregate(
            [{"$match": _facility(facility_code)}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        return {document["_id"]: int(document["n"]) async for document in cursor}

    async def counts_by_facility(self) -> dict[tuple[str, str], int]:
        """(facility code, status) -> number of deliveries."""
        cursor = await self._deliveries.aggregate(
            [{"$group": {"_id": {"facility": "$facility_code", "status": "$status"}, "n": {"$sum": 1}}}]
        )
        return {
            (document["_id"]["facility"], document["_id"]["status"]): int(document["n"])
            async for document in cursor
        }

    async def count_in_flight(self, facility_code: str, now: datetime) -> int:
        return await self._deliveries.count_documents(
            {"status": _PENDING, "in_flight_until": {"$gt": now}, **_facility(facility_code)}
        )

    async def count_failed(self, facility_code: str) -> int:
        return await self._deliveries.count_documents(
            {"status": _PENDING, "attempts": {"$gt": 0}, **_facility(facility_code)}
        )

    async def oldest_pending_at(self, facility_code: str) -> datetime | None:
        document = await self._deliveries.find_one(
            {"status": _PENDING, **_facility(facility_code)}, {"created_at": 1}, sort=[("created_at", 1)]
        )
        return document["created_at"] if document else None

    async def last_delivered_at(self, facility_code: str) -> datetime | None:
        document = await self._deliveries.find_one(
            {"status": DeliveryStatus.DELIVERED.value, **_facility(facility_code)},
            {"delivered_at": 1},
            sort=[("delivered_at", -1)],
        )
        return document["delivered_at"] if document else None

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
