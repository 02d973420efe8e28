"""MongoDB storage of sync state: deliveries (the durable queue and its receipts) and cursors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from emr_runtime.db import Database, IndexSpec
from emr_sync.domain import Delivery, DeliveryStatus

DELIVERIES = "deliveries"
CURSORS = "cursors"
EVENTS = "sync_events"
INDEXES = (
    IndexSpec(DELIVERIES, (("status", 1), ("next_attempt_at", 1), ("created_at", 1)), "deliveries_due"),
    IndexSpec(DELIVERIES, (("facility_code", 1), ("status", 1)), "deliveries_by_facility"),
    IndexSpec(DELIVERIES, (("status", 1), ("delivered_at", -1)), "deliveries_last_delivered"),
)
_OPEN = [DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value]


def _document(delivery: Delivery) -> dict[str, Any]:
    return {
        "_id": delivery.delivery_id,
        "resource_type": delivery.resource_type,
        "resource_id": delivery.resource_id,
        "resource_version": delivery.resource_version,
        "patient_id": delivery.patient_id,
        "facility_code": delivery.facility_code,
        "payload": delivery.payload,
        "created_at": delivery.created_at,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_error": delivery.last_error,
        "delivered_at": delivery.delivered_at,
        "transaction_id": delivery.transaction_id,
    }


def _delivery(document: dict[str, Any]) -> Delivery:
    return Delivery(
        delivery_id=document["_id"],
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        resource_version=document["resource_version"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        payload=document["payload"],
        created_at=document["created_at"],
        status=DeliveryStatus(document["status"]),
        attempts=document["attempts"],
        next_attempt_at=document.get("next_attempt_at"),
        last_error=document.get("last_error", ""),
        delivered_at=document.get("delivered_at"),
        transaction_id=document.get("transaction_id", ""),
    )


class SyncRepository:
    def __init__(self, db: Database) -> None:
        self._deliveries = db[DELIVERIES]
        self._cursors = db[CURSORS]
        self._events = db[EVENTS]

    async def enqueue(self, deliveries: list[Delivery]) -> None:
        """Adds deliveries not queued before; re-reading a change after a crash adds nothing."""
        if deliveries:
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
        await self._cursors.update_one({"_id": name}, {"$set": {"after": after}}, upsert=True)

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        cursor = (
            self._deliveries.find({"status": {"$in": _OPEN}, "next_attempt_at": {"$lte": now}})
            .sort([("created_at", 1), ("_id", 1)])
            .limit(limit)
        )
        return [_delivery(document) async for document in cursor]

    async def mark_delivered(self, delivery_id: str, transaction_id: str, now: datetime) -> None:
        await self._deliveries.update_one(
            {"_id": delivery_id},
            {
                "$set": {
                    "status": DeliveryStatus.DELIVERED.value,
                    "delivered_at": now,
                    "transaction_id": transaction_id,
                },
                "$inc": {"attempts": 1},
            },
        )

    async def mark_failed(
        self, delivery_id: str, error: str, next_attempt_at: datetime, now: datetime
    ) -> None:
        await self._deliveries.update_one(
            {"_id": delivery_id},
            {
                "$set": {
                    "status": DeliveryStatus.FAILED.value,
                    "last_error": error,
                    "next_attempt_at": next_attempt_at,
                },
                "$inc": {"attempts": 1},
            },
        )
        await self._events.update_one(
            {"_id": "last_error"}, {"$set": {"error": error, "at": now}}, upsert=True
        )

    async def counts(self, facility_code: str) -> dict[str, int]:
        match: dict[str, Any] = {"facility_code": facility_code} if facility_code else {}
        cursor = await self._deliveries.aggregate(
            [{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        return {document["_id"]: int(document["n"]) async for document in cursor}

    async def last_delivered_at(self, facility_code: str) -> datetime | None:
        query: dict[str, Any] = {"status": DeliveryStatus.DELIVERED.value}
        if facility_code:
            query["facility_code"] = facility_code
        document = await self._deliveries.find_one(query, sort=[("delivered_at", -1)])
        return document["delivered_at"] if document else None

    async def last_error(self) -> str:
        document = await self._events.find_one({"_id": "last_error"})
        return str(document["error"]) if document else ""
