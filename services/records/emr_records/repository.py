"""MongoDB storage of encounters and of the change feed.

An encounter and its change are two documents (no transactions): the encounter is written with
``change_pending`` set, the change is appended, then the flag is cleared. A repeated request or the
outbox sweep finishes what a crash left half done, so every stored encounter reaches the feed.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from emr_records.domain import Change, ChangeKind, Encounter, EncounterClass, EncounterStatus
from emr_runtime.clock import utc_now
from emr_runtime.db import Database, IndexSpec, insert_or_get, next_sequence

ENCOUNTERS = "encounters"
CHANGES = "changes"
CHANGE_COUNTER = "changes"
INDEXES = (
    IndexSpec(ENCOUNTERS, (("patient_id", 1), ("start_time", -1), ("_id", -1)), "encounters_by_patient"),
    IndexSpec(ENCOUNTERS, (("change_pending", 1),), "encounters_change_pending"),
    IndexSpec(
        CHANGES,
        (("resource_type", 1), ("resource_id", 1), ("resource_version", 1)),
        "changes_by_resource_version",
        unique=True,
    ),
)


def _encounter_document(encounter: Encounter) -> dict[str, Any]:
    return {
        "_id": encounter.encounter_id,
        "patient_id": encounter.patient_id,
        "facility_code": encounter.facility_code,
        "encounter_class": encounter.encounter_class.value,
        "status": encounter.status.value,
        "start_time": encounter.start_time,
        "end_time": encounter.end_time,
        "reason": encounter.reason,
        "version": encounter.version,
        "created_at": encounter.created_at,
        "request_fingerprint": encounter.request_fingerprint,
        "change_pending": True,
    }


def _encounter(document: dict[str, Any]) -> Encounter:
    return Encounter(
        encounter_id=document["_id"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        encounter_class=EncounterClass(document["encounter_class"]),
        status=EncounterStatus(document["status"]),
        start_time=document["start_time"],
        end_time=document.get("end_time"),
        reason=document["reason"],
        version=document["version"],
        created_at=document["created_at"],
        request_fingerprint=document["request_fingerprint"],
    )


def _change(document: dict[str, Any]) -> Change:
    if document.get("tombstone"):
        return Change(document["_id"], None, "", "", 0, "", "", document["committed_at"], tombstone=True)
    return Change(
        sequence=document["_id"],
        kind=ChangeKind(document["kind"]),
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        resource_version=document["resource_version"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        committed_at=document["committed_at"],
    )


class EncounterRepository:
    def __init__(self, db: Database) -> None:
        self._encounters = db[ENCOUNTERS]

    async def insert_or_get(self, encounter: Encounter) -> tuple[Encounter, bool]:
        """Inserts the encounter (or finds it, for a repeated request); returns it and whether its
        change is still to be recorded."""
        stored, _ = await insert_or_get(self._encounters, _encounter_document(encounter))
        return _encounter(stored), bool(stored.get("change_pending"))

    async def mark_change_recorded(self, encounter_id: str) -> None:
        await self._encounters.update_one({"_id": encounter_id}, {"$unset": {"change_pending": ""}})

    async def with_change_pending(self, older_than: datetime, limit: int) -> list[Encounter]:
        cursor = self._encounters.find({"change_pending": True, "created_at": {"$lt": older_than}}).limit(
            limit
        )
        return [_encounter(document) async for document in cursor]

    async def get(self, encounter_id: str) -> Encounter | None:
        document = await self._encounters.find_one({"_id": encounter_id})
        return _encounter(document) if document else None

    async def get_many(self, encounter_ids: list[str]) -> dict[str, Encounter]:
        cursor = self._encounters.find({"_id": {"$in": encounter_ids}})
        return {document["_id"]: _encounter(document) async for document in cursor}

    async def by_patient(
        self, patient_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Encounter]:
        query: dict[str, Any] = {"patient_id": patient_id}
        if before is not None:
            start, encounter_id = before
            query["$or"] = [
                {"start_time": {"$lt": start}},
                {"start_time": start, "_id": {"$lt": encounter_id}},
            ]
        cursor = self._encounters.find(query).sort([("start_time", -1), ("_id", -1)]).limit(limit)
        return [_encounter(document) async for document in cursor]


class ChangeFeedRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._changes = db[CHANGES]

    async def _recorded(self, resource_type: str, resource_id: str, version: int) -> bool:
        query = {"resource_type": resource_type, "resource_id": resource_id, "resource_version": version}
        return await self._changes.find_one(query, {"_id": 1}) is not None

    async def append(self, encounter: Encounter, kind: ChangeKind) -> None:
        """Appends the change once per (resource, version), under a fresh sequence."""
        if await self._recorded("Encounter", encounter.encounter_id, encounter.version):
            return
        while True:
            sequence = await next_sequence(self._db, CHANGE_COUNTER)
            try:
                await self._changes.insert_one(
                    {
                        "_id": sequence,
                        "kind": kind.value,
                        "resource_type": "Encounter",
                        "resource_id": encounter.encounter_id,
                        "resource_version": encounter.version,
                        "patient_id": encounter.patient_id,
                        "facility_code": encounter.facility_code,
                        # Taken after the sequence: the feed's hole timeout relies on it.
                        "committed_at": utc_now(),
                    }
                )
                return
            except DuplicateKeyError:
                if await self._recorded("Encounter", encounter.encounter_id, encounter.version):
                    return  # a concurrent retry of the same write recorded it
                # Our sequence was closed by a tombstone while we were slow: take the next one.

    async def after(self, sequence: int, limit: int) -> list[Change]:
        cursor = self._changes.find({"_id": {"$gt": sequence}}).sort("_id", 1).limit(limit)
        return [_change(document) async for document in cursor]

    async def close_hole(self, sequence: int, now: datetime) -> None:
        """Fills an abandoned sequence with a tombstone; a no-op if the real change got there first."""
        with contextlib.suppress(DuplicateKeyError):
            # Resource fields unique per tombstone: they share the (resource, version) unique index.
            await self._changes.insert_one(
                {
                    "_id": sequence,
                    "tombstone": True,
                    "resource_type": "",
                    "resource_id": f"tombstone:{sequence}",
                    "resource_version": 0,
                    "committed_at": now,
                }
            )
