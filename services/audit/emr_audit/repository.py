"""MongoDB storage of the audit log: append-only, one hash chain, numbered gap-free by ``_id``.

Without transactions the chain stays one chain because the event document *is* the chain link:
event n+1 is inserted under ``_id`` n+1 only by a writer that has seen event n (it inserted n
itself, or found it). The unique ``_id`` lets exactly one writer take each position; a loser finds
the new tip and links after the winner. The unique ``event_id`` refuses a repeated event without
taking a position. A crashed writer leaves nothing half done: one insert is one link. Links go in
one at a time, each only after the one before it was acknowledged, so a write stopped anywhere (a
crash, a timeout, a refusal) leaves a prefix of what it meant to link, never a later link without
an earlier one (a batch insert's count of what went in is not trusted for that).

``event_ids`` finds an event's sequence by its event_id with one ``_id`` lookup (an event_id filter
on the event documents scans on FerretDB). A writer indexes its links after inserting them and
before it advances the tip hint, and whoever steps past the hint indexes what it steps over, so
every event at or before the hint is indexed; one after it may not be yet (its writer stopped), and
a writer finds it by stepping from the hint.

The ``chain`` document holds a hint of the tip (sequence and hash), advanced after each write, so
that a writer finds the tip without scanning the log; the hint may lag behind, never run ahead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from emr_audit.domain import (
    Action,
    Agent,
    AgentType,
    AuditEvent,
    Checkpoint,
    Entity,
    EntityRole,
    EventFilter,
    EventType,
    Outcome,
    RetentionClass,
    Subtype,
    event_fields,
)
from emr_runtime.db import Database, IndexSpec

EVENTS = "events"
CHECKPOINTS = "checkpoints"
CHAIN = "chain"
EVENT_IDS = "event_ids"
# Collections no index creates, made at start-up (see emr_runtime.db.create_collections).
COLLECTIONS = (EVENT_IDS,)
_DUPLICATE_KEY = 11000
_HEAD = "head"
INDEXES = (
    IndexSpec(EVENTS, (("event_id", 1),), "events_event_id", unique=True),
    IndexSpec(EVENTS, (("patient_id", 1), ("_id", 1)), "events_by_patient"),
    IndexSpec(EVENTS, (("actor_id", 1), ("_id", 1)), "events_by_actor"),
    IndexSpec(EVENTS, (("actor_facility_code", 1), ("_id", 1)), "events_by_facility"),
    IndexSpec(EVENTS, (("subtype", 1), ("_id", 1)), "events_by_subtype"),
    IndexSpec(EVENTS, (("occurred_at", 1),), "events_by_time"),
    IndexSpec(CHECKPOINTS, (("last_sequence", 1),), "checkpoints_by_last_sequence", unique=True),
)


def event_document(event: AuditEvent) -> dict[str, Any]:
    fields = event_fields(event)
    return {
        "_id": fields.pop("sequence"),
        **fields,
        "previous_hash": Binary(event.previous_hash),
        "hash": Binary(event.hash),
    }


def _enum_or_none(kind: Any, value: Any) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None  # an edited document: the chain check reports it, reading must not crash


def event_from_document(document: dict[str, Any]) -> AuditEvent:
    """Tolerant of edited documents: whatever is stored is read, so that verification can judge it."""
    get = document.get
    return AuditEvent(
        event_id=str(get("event_id", "")),
        action=_enum_or_none(Action, get("action")),
        outcome=_enum_or_none(Outcome, get("outcome")),
        occurred_at=get("occurred_at"),
        actor_id=str(get("actor_id", "")),
        actor_facility_code=str(get("actor_facility_code", "")),
        source_service=str(get("source_service", "")),
        operation=str(get("operation", "")),
        patient_id=str(get("patient_id", "")),
        resource_type=str(get("resource_type", "")),
        resource_id=str(get("resource_id", "")),
        purpose_of_use=str(get("purpose_of_use", "")),
        request_id=str(get("request_id", "")),
        trace_id=str(get("trace_id", "")),
        sequence=int(document["_id"]),
        recorded_at=get("recorded_at"),
        event_type=_enum_or_none(EventType, get("type")),
        subtype=_enum_or_none(Subtype, get("subtype")),
        agents=tuple(
            Agent(
                type=_enum_or_none(AgentType, agent.get("type")),
                who=str(agent.get("who", "")),
                role=str(agent.get("role", "")),
                facility_code=str(agent.get("facility_code", "")),
                client_application=str(agent.get("client_application", "")),
                network_address=str(agent.get("network_address", "")),
                requestor=bool(agent.get("requestor", False)),
            )
            for agent in get("agents") or ()
        ),
        entities=tuple(
            Entity(
                role=_enum_or_none(EntityRole, entity.get("role")),
                patient_id=str(entity.get("patient_id", "")),
                resource_type=str(entity.get("resource_type", "")),
                resource_id=str(entity.get("resource_id", "")),
            )
            for entity in get("entities") or ()
        ),
        retention_class=_enum_or_none(RetentionClass, get("retention_class")) or RetentionClass.STANDARD,
        break_glass_reason=str(get("break_glass_reason", "")),
        emergency_access_id=str(get("emergency_access_id", "")),
        previous_hash=bytes(get("previous_hash") or b""),
        hash=bytes(get("hash") or b""),
    )


def _checkpoint_document(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "_id": checkpoint.index,
        "first_sequence": checkpoint.first_sequence,
        "last_sequence": checkpoint.last_sequence,
        "merkle_root": Binary(checkpoint.merkle_root),
        "chain_head_hash": Binary(checkpoint.chain_head_hash),
        "created_at": checkpoint.created_at,
        "key_id": checkpoint.key_id,
        "signature": Binary(checkpoint.signature),
    }


def _checkpoint_from(document: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        index=int(document["_id"]),
        first_sequence=int(document["first_sequence"]),
        last_sequence=int(document["last_sequence"]),
        merkle_root=bytes(document["merkle_root"]),
        chain_head_hash=bytes(document["chain_head_hash"]),
        created_at=document["created_at"],
        key_id=str(document["key_id"]),
        signature=bytes(document["signature"]),
    )


def filter_query(selection: EventFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if selection.patient_id:
        query["patient_id"] = selection.patient_id
    if selection.actor_id:
        query["actor_id"] = selection.actor_id
    if selection.facility_code:
        query["actor_facility_code"] = selection.facility_code
    if selection.subtype is not None:
        query["subtype"] = selection.subtype.value
    occurred: dict[str, datetime] = {}
    if selection.start is not None:
        occurred["$gte"] = selection.start
    if selection.end is not None:
        occurred["$lt"] = selection.end
    if occurred:
        query["occurred_at"] = occurred
    return query


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._events = db[EVENTS]
        self._checkpoints = db[CHECKPOINTS]
        self._chain = db[CHAIN]
        self._event_ids = db[EVENT_IDS]

    # --- the chain ---------------------------------------------------------------------------------
    async def tip_hint(self) -> tuple[int, bytes] | None:
        """A recent (sequence, hash) of the chain; the true tip is there or after it."""
        document = await self._chain.find_one({"_id": _HEAD})
        return (int(document["sequence"]), bytes(document["hash"])) if document else None

    async def advance_tip_hint(self, sequence: int, digest: bytes) -> None:
        """Moves the hint forward (never back): a single-document conditional update."""
        # A DuplicateKeyError means the hint is already at or past ``sequence``: the upsert's insert lost.
        with contextlib.suppress(DuplicateKeyError):
            await self._chain.update_one(
                {"_id": _HEAD, "sequence": {"$lt": sequence}},
                {"$set": {"sequence": sequence, "hash": Binary(digest)}},
                upsert=True,
            )

    async def insert_link(self, event: AuditEvent) -> bool:
        """Inserts one chained event; False when its position or its event_id is already taken."""
        try:
            await self._events.insert_one(event_document(event))
        except DuplicateKeyError:
            return False
        return True

    async def event_id_at(self, sequence: int) -> str | None:
        """The event_id of the link at ``sequence`` (None: nothing there): one ``_id`` lookup."""
        document = await self._events.find_one({"_id": sequence}, {"event_id": 1})
        return str(document.get("event_id", "")) if document else None

    async def link_at(self, sequence: int) -> tuple[str, bytes] | None:
        """(event_id, hash) of the link at ``sequence``; None: nothing there."""
        document = await self._events.find_one({"_id": sequence}, {"event_id": 1, "hash": 1})
        return (str(document.get("event_id", "")), bytes(document.get("hash") or b"")) if document else None

    async def indexed_sequence(self, event_id: str) -> int | None:
        """The sequence ``event_ids`` holds for ``event_id``: one ``_id`` lookup."""
        document = await self._event_ids.find_one({"_id": event_id})
        return int(document["sequence"]) if document else None

    async def index_event_ids(self, links: Sequence[tuple[str, int]]) -> None:
        """Records (event_id, sequence) of stored links; one already recorded is left as it is (an
        event_id has one link, so a second writer records the same pair)."""
        if not links:
            return
        try:
            await self._event_ids.insert_many(
                [{"_id": event_id, "sequence": sequence} for event_id, sequence in links], ordered=False
            )
        except BulkWriteError as error:
            if any(e.get("code") != _DUPLICATE_KEY for e in error.details.get("writeErrors", ())):
                raise

    async def scan_sequence_of(self, event_id: str) -> int | None:
        """Scans the log for ``event_id``: only for events stored before ``event_ids`` existed."""
        document = await self._events.find_one({"event_id": event_id}, {"_id": 1})
        return int(document["_id"]) if document else None

    async def event_hash(self, sequence: int) -> bytes | None:
        document = await self._events.find_one({"_id": sequence}, {"hash": 1})
        return bytes(document["hash"]) if document else None

    async def hashes(self, first: int, last: int) -> list[tuple[int, bytes]]:
        cursor = self._events.find({"_id": {"$gte": first, "$lte": last}}, {"hash": 1}).sort("_id", ASCENDING)
        return [(int(document["_id"]), bytes(document.get("hash") or b"")) async for document in cursor]

    async def scan(self, first: int, last: int | None) -> AsyncIterator[AuditEvent]:
        """Every stored event from ``first`` to ``last`` (inclusive; None: to the end), in order."""
        bounds: dict[str, int] = {"$gte": first}
        if last is not None:
            bounds["$lte"] = last
        async for document in self._events.find({"_id": bounds}).sort("_id", ASCENDING):
            yield event_from_document(document)

    async def get(self, sequence: int) -> AuditEvent | None:
        document = await self._events.find_one({"_id": sequence})
        return event_from_document(document) if document else None

    # --- checkpoints -------------------------------------------------------------------------------
    async def latest_checkpoint(self) -> Checkpoint | None:
        document = await self._checkpoints.find_one({}, sort=[("_id", DESCENDING)])
        return _checkpoint_from(document) if document else None

    async def checkpoint(self, index: int) -> Checkpoint | None:
        document = await self._checkpoints.find_one({"_id": index})
        return _checkpoint_from(document) if document else None

    async def checkpoint_covering(self, sequence: int) -> Checkpoint | None:
        document = await self._checkpoints.find_one(
            {"last_sequence": {"$gte": sequence}}, sort=[("last_sequence", ASCENDING)]
        )
        if document is None:
            return None
        found = _checkpoint_from(document)
        return found if found.covers(sequence) else None

    async def checkpoints_overlapping(self, first: int, last: int | None) -> list[Checkpoint]:
        query: dict[str, Any] = {"last_sequence": {"$gte": first}}
        if last is not None:
            query["first_sequence"] = {"$lte": last}
        cursor = self._checkpoints.find(query).sort("_id", ASCENDING)
        return [_checkpoint_from(document) async for document in cursor]

    async def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Stores a checkpoint; False when another replica stored that index first."""
        try:
            await self._checkpoints.insert_one(_checkpoint_document(checkpoint))
        except DuplicateKeyError:
            return False
        return True

    # --- queries -----------------------------------------------------------------------------------
    async def find(self, selection: EventFilter, after_sequence: int, limit: int) -> list[AuditEvent]:
        query = {**filter_query(selection), "_id": {"$gt": after_sequence}}
        cursor = self._events.find(query).sort("_id", ASCENDING).limit(limit)
        return [event_from_document(document) async for document in cursor]
