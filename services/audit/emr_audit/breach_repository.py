"""MongoDB storage of breach incidents: insert-only.

An incident is one document under its ``_id`` (derived from the request_id that recorded it), never
updated. Its status changes are separate documents under ``_id`` ``<incident_id>/<position>``
(1, 2, ...): a change is a compare-and-set by insert, so two officers changing the same incident at
once cannot both win (FerretDB applies updates non-atomically; an insert under a unique ``_id`` is
atomic). The history is read with ``_id`` lookups only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from emr_audit.breach import Category, Incident, Scope, Status, StatusChange
from emr_audit.domain import AuditEvent, EventFilter
from emr_audit.repository import EVENTS, event_from_document, filter_query
from emr_runtime.db import Database
from emr_runtime.fieldcrypt import FieldCrypt

INCIDENTS = "breach_incidents"
STATUS_CHANGES = "breach_status_changes"
COLLECTIONS = (INCIDENTS, STATUS_CHANGES)
# An incident's history never grows long (open, notified, closed); the bound stops a runaway loop.
MAX_HISTORY = 100


def _change_id(incident_id: str, position: int) -> str:
    return f"{incident_id}/{position}"


# Incident texts may describe what leaked (patients, numbers): stored encrypted like identifiers.
TEXT_KIND = "audit.breach_text"


def _incident_document(crypt: FieldCrypt, incident: Incident) -> dict[str, Any]:
    assert incident.category is not None
    scope = incident.scope
    return {
        "_id": incident.incident_id,
        "category": incident.category.value,
        "description": crypt.encrypt(TEXT_KIND, incident.description),
        "occurred_at": incident.occurred_at,
        "discovered_at": incident.discovered_at,
        "reported_by": incident.reported_by,
        "recorded_by": incident.recorded_by,
        "recorded_at": incident.recorded_at,
        "scope": {
            "actor_id": scope.actor_id,
            "facility_code": scope.facility_code,
            "start": scope.start,
            "end": scope.end,
        },
        "contact_point": incident.contact_point,
        "likely_consequences": crypt.encrypt(TEXT_KIND, incident.likely_consequences),
        "measures_taken": crypt.encrypt(TEXT_KIND, incident.measures_taken),
    }


def _incident_from(crypt: FieldCrypt, document: dict[str, Any]) -> Incident:
    scope = document.get("scope") or {}
    return Incident(
        incident_id=str(document["_id"]),
        category=Category(document["category"]),
        description=crypt.decrypt(TEXT_KIND, str(document.get("description", ""))),
        occurred_at=document.get("occurred_at"),
        discovered_at=document.get("discovered_at"),
        reported_by=str(document.get("reported_by", "")),
        recorded_by=str(document.get("recorded_by", "")),
        recorded_at=document.get("recorded_at"),
        scope=Scope(
            actor_id=str(scope.get("actor_id", "")),
            facility_code=str(scope.get("facility_code", "")),
            start=scope.get("start"),
            end=scope.get("end"),
        ),
        contact_point=str(document.get("contact_point", "")),
        likely_consequences=crypt.decrypt(TEXT_KIND, str(document.get("likely_consequences", ""))),
        measures_taken=crypt.decrypt(TEXT_KIND, str(document.get("measures_taken", ""))),
    )


def _change_document(crypt: FieldCrypt, incident_id: str, change: StatusChange) -> dict[str, Any]:
    return {
        "_id": _change_id(incident_id, change.position),
        "incident_id": incident_id,
        "position": change.position,
        "status": change.status.value,
        "changed_at": change.changed_at,
        "changed_by": change.changed_by,
        "notified_at": change.notified_at,
        "authority_reference": change.authority_reference,
        "delay_reason": crypt.encrypt(TEXT_KIND, change.delay_reason),
        "note": crypt.encrypt(TEXT_KIND, change.note),
    }


def _change_from(crypt: FieldCrypt, document: dict[str, Any]) -> StatusChange:
    return StatusChange(
        position=int(document["position"]),
        status=Status(document["status"]),
        changed_at=document["changed_at"],
        changed_by=str(document.get("changed_by", "")),
        notified_at=document.get("notified_at"),
        authority_reference=str(document.get("authority_reference", "")),
        delay_reason=crypt.decrypt(TEXT_KIND, str(document.get("delay_reason", ""))),
        note=crypt.decrypt(TEXT_KIND, str(document.get("note", ""))),
    )


class BreachRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._crypt = crypt
        self._incidents = db[INCIDENTS]
        self._changes = db[STATUS_CHANGES]
        self._events = db[EVENTS]

    async def insert_incident(self, incident: Incident) -> bool:
        """False when an incident with that id is already stored."""
        try:
            await self._incidents.insert_one(_incident_document(self._crypt, incident))
        except DuplicateKeyError:
            return False
        return True

    async def incident(self, incident_id: str) -> Incident | None:
        document = await self._incidents.find_one({"_id": incident_id})
        return _incident_from(self._crypt, document) if document else None

    async def incident_ids(self) -> list[str]:
        """Every incident's id (a small collection: incidents are rare)."""
        return [str(document["_id"]) async for document in self._incidents.find({}, {"_id": 1})]

    async def incidents(self) -> list[Incident]:
        """Every incident (a small collection: incidents are rare)."""
        return [_incident_from(self._crypt, document) async for document in self._incidents.find({})]

    async def history(self, incident_id: str) -> list[StatusChange]:
        """The status changes of an incident in order: ``_id`` lookups until a position is empty."""
        changes: list[StatusChange] = []
        for position in range(1, MAX_HISTORY + 1):
            document = await self._changes.find_one({"_id": _change_id(incident_id, position)})
            if document is None:
                break
            changes.append(_change_from(self._crypt, document))
        return changes

    async def insert_change(self, incident_id: str, change: StatusChange) -> bool:
        """False when another change took that position first."""
        try:
            await self._changes.insert_one(_change_document(self._crypt, incident_id, change))
        except DuplicateKeyError:
            return False
        return True

    async def events_in(self, selection: EventFilter) -> AsyncIterator[AuditEvent]:
        """Every stored event the selection matches, in log order, through one cursor."""
        cursor = self._events.find(filter_query(selection)).sort("_id", ASCENDING)
        async for document in cursor:
            yield event_from_document(document)
