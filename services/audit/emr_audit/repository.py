"""MongoDB storage of the audit log: append-only, numbered by a counter, deduplicated by event_id."""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from emr_audit.domain import Action, AuditEvent, Outcome
from emr_runtime.db import Database, IndexSpec, next_sequence

EVENTS = "events"
INDEXES = (
    IndexSpec(EVENTS, (("event_id", 1),), "events_event_id", unique=True),
    IndexSpec(EVENTS, (("patient_id", 1), ("_id", 1)), "events_by_patient"),
)


def _to_document(event: AuditEvent, sequence: int) -> dict[str, Any]:
    assert event.action is not None and event.outcome is not None  # validated before storing
    return {
        "_id": sequence,
        "event_id": event.event_id,
        "action": event.action.value,
        "outcome": event.outcome.value,
        "occurred_at": event.occurred_at,
        "recorded_at": event.recorded_at,
        "actor_id": event.actor_id,
        "actor_facility_code": event.actor_facility_code,
        "source_service": event.source_service,
        "operation": event.operation,
        "patient_id": event.patient_id,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "purpose_of_use": event.purpose_of_use,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
    }


def _from_document(document: dict[str, Any]) -> AuditEvent:
    return AuditEvent(
        event_id=document["event_id"],
        action=Action(document["action"]),
        outcome=Outcome(document["outcome"]),
        occurred_at=document["occurred_at"],
        actor_id=document["actor_id"],
        actor_facility_code=document["actor_facility_code"],
        source_service=document["source_service"],
        operation=document["operation"],
        patient_id=document["patient_id"],
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        purpose_of_use=document["purpose_of_use"],
        request_id=document["request_id"],
        trace_id=document["trace_id"],
        sequence=document["_id"],
        recorded_at=document["recorded_at"],
    )


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._events = db[EVENTS]

    async def find_sequence(self, event_id: str) -> int | None:
        document = await self._events.find_one({"event_id": event_id}, {"_id": 1})
        return int(document["_id"]) if document else None

    async def append(self, event: AuditEvent) -> int:
        """Stores the event under the next sequence; an event_id already stored keeps its sequence."""
        existing = await self.find_sequence(event.event_id)
        if existing is not None:
            return existing
        sequence = await next_sequence(self._db, EVENTS)
        try:
            await self._events.insert_one(_to_document(event, sequence))
        except DuplicateKeyError:
            raced = await self.find_sequence(event.event_id)
            assert raced is not None  # the duplicate is on event_id: a concurrent append stored it
            return raced
        return sequence

    async def by_patient(self, patient_id: str, after_sequence: int, limit: int) -> list[AuditEvent]:
        cursor = (
            self._events.find({"patient_id": patient_id, "_id": {"$gt": after_sequence}})
            .sort("_id", 1)
            .limit(limit)
        )
        return [_from_document(document) async for document in cursor]
