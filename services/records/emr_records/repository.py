"""MongoDB storage of clinical resources, their immutable versions, and the change feed.

No transactions: a write is three single-document steps, each idempotent, in this order:
1. insert the version document ``<id>:<version>`` (its unique ``_id`` decides which of two racing
   writers of the same version wins);
2. note the version in ``pending_changes`` and move the current-state document to it (only from
   the version before it);
3. append the change to the feed (once per resource version), then drop the pending note.
A writer, a retry, or the outbox sweep finishes whatever a crash left undone, so every version that
exists reaches the current state and the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import types
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import datetime, timedelta
from typing import Any, Union, get_args, get_origin, get_type_hints

from pymongo.errors import DuplicateKeyError

from emr_records.domain import (
    CONTENT_TYPES,
    Change,
    ChangeKind,
    ClinicalRecord,
    ResourceType,
    TimelineQuery,
    to_plain,
)
from emr_runtime.changefeed import ChangeFeed, Filled
from emr_runtime.clock import utc_now
from emr_runtime.db import Database, Document, IndexSpec, insert_or_get
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.visibility import ALL_CATEGORIES

RESOURCES = "resources"
VERSIONS = "resource_versions"
CHANGES = "changes"
CHANGE_COUNTER = "changes"
# Versions whose change is not yet in the feed, keyed "<id>:<version>" (single-key look-ups only:
# FerretDB serves those without scanning).
PENDING = "pending_changes"
# Which facilities hold records of which patient, keyed "<patient id>:<facility code>": the access
# model's "its own records" answered by one `_id` lookup instead of a scan of the resources.
HOLDERS = "record_holders"
# Special categories of each visit (emr_records.sensitivity), one document per category keyed
# "<encounter id>:<category>" and one "<encounter id>:any" written after them: a read looks up ":any"
# (one `_id` lookup) and only for a marked visit the categories. Never removed, never updated.
VISIT_CATEGORIES = "visit_categories"
# Collections made at start rather than at first write (a database-side step, the `_id` lookup
# index of emr_devstack.ferretdb_sqlite, finds only those that exist).
COLLECTIONS = (RESOURCES, VERSIONS, PENDING, HOLDERS, VISIT_CATEGORIES)
# Holder keys this process knows are stored (they are never removed), up to this many.
KNOWN_HOLDERS_MAX = 100_000
INDEXES = (
    IndexSpec(RESOURCES, (("patient_id", 1), ("time", -1), ("_id", -1)), "resources_timeline"),
    IndexSpec(
        RESOURCES,
        (("patient_id", 1), ("resource_type", 1), ("code", 1), ("time", -1), ("_id", -1)),
        "resources_by_type_and_code",
    ),
    IndexSpec(RESOURCES, (("encounter_id", 1),), "resources_by_encounter"),
    IndexSpec(PENDING, (("since", 1),), "pending_changes_by_age"),
    IndexSpec(VERSIONS, (("resource_id", 1), ("version", 1)), "versions_by_resource"),
    IndexSpec(VERSIONS, (("resource_id", 1), ("request_id", 1)), "versions_by_request"),
    IndexSpec(
        CHANGES,
        (("resource_type", 1), ("resource_id", 1), ("resource_version", 1)),
        "changes_by_resource_version",
        unique=True,
    ),
)


# Content fields holding national identifiers, stored encrypted (emr_runtime.fieldcrypt).
ENCRYPTED_CONTENT_FIELDS = {ResourceType.ENCOUNTER: ("bhyt_number",)}
# The same inside lists: (list field, field of each item).
ENCRYPTED_ITEM_FIELDS = {ResourceType.ENCOUNTER: (("insurance_cards", "card_number"),)}

# --- content codec: dataclasses <-> BSON documents ----------------------------------------------


def _decode(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) is tuple:
        item_kind = get_args(kind)[0]
        return tuple(_decode(item_kind, item) for item in value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    if is_dataclass(kind) and isinstance(kind, type):
        hints = get_type_hints(kind)
        return kind(
            **{f.name: _decode(hints[f.name], value.get(f.name)) for f in fields(kind) if f.name in value}
        )
    return value


def _with_content_fields(
    resource_type: ResourceType, content: Document, transform: Callable[[str, str], str]
) -> Document:
    """The content with its identifier fields passed through ``transform(kind, value)``
    (``FieldCrypt.encrypt`` on the way in, ``decrypt`` on the way out)."""
    changed: Document = {
        name: transform(f"records.{resource_type.value}.{name}", content[name])
        for name in ENCRYPTED_CONTENT_FIELDS.get(resource_type, ())
        if content.get(name)
    }
    for list_name, name in ENCRYPTED_ITEM_FIELDS.get(resource_type, ()):
        if content.get(list_name):
            kind = f"records.{resource_type.value}.{list_name}.{name}"
            changed[list_name] = [
                {**item, name: transform(kind, item[name])} if item.get(name) else item
                for item in content[list_name]
            ]
    return {**content, **changed}


def _record_document(crypt: FieldCrypt, record: ClinicalRecord) -> Document:
    return {
        "_id": record.resource_id,
        "resource_type": record.resource_type.value,
        "patient_id": record.patient_id,
        "facility_code": record.facility_code,
        "encounter_id": record.encounter_id,
        "version": record.version,
        "time": record.time,
        "code": record.code,
        "status": record.status,
        "content": _with_content_fields(record.resource_type, to_plain(record.content), crypt.encrypt),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "author_id": record.author_id,
        "request_id": record.request_id,
        "request_fingerprint": record.request_fingerprint,
        "sensitivity": sorted(record.sensitivity),
    }


def _record(crypt: FieldCrypt, document: Document) -> ClinicalRecord:
    resource_type = ResourceType(document["resource_type"])
    return ClinicalRecord(
        resource_type=resource_type,
        resource_id=document["_id"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        encounter_id=document["encounter_id"],
        content=_decode(
            CONTENT_TYPES[resource_type],
            _with_content_fields(resource_type, document["content"], crypt.decrypt),
        ),
        version=document["version"],
        created_at=document["created_at"],
        updated_at=document["updated_at"],
        author_id=document["author_id"],
        request_id=document["request_id"],
        request_fingerprint=document["request_fingerprint"],
        sensitivity=frozenset(document.get("sensitivity") or ()),
    )


def _version_key(record: ClinicalRecord) -> str:
    return f"{record.resource_id}:{record.version}"


def _version_document(crypt: FieldCrypt, record: ClinicalRecord) -> Document:
    return {
        "_id": _version_key(record),
        "resource_id": record.resource_id,
        "version": record.version,
        "request_id": record.request_id,
        "content_sha256": record.content_sha256,
        "record": _record_document(crypt, record),
    }


def _change(document: Document) -> Change:
    if document.get("tombstone"):
        return Change(int(document["_id"]), None, "", "", 0, "", "", document["committed_at"], tombstone=True)
    return Change(
        sequence=int(document["_id"]),
        kind=ChangeKind(document["kind"]),
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        resource_version=document["resource_version"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        committed_at=document["committed_at"],
    )


def holder_key(patient_id: str, facility_code: str) -> str:
    return f"{patient_id}:{facility_code}"


class ResourceRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._crypt = crypt
        self._resources = db[RESOURCES]
        self._versions = db[VERSIONS]
        self._pending = db[PENDING]
        self._holders = db[HOLDERS]
        self._known_holders: set[str] = set()
        self._visit_categories = db[VISIT_CATEGORIES]
        # Visits known to be marked, with their categories as last read (marks only ever add).
        self._known_visit_categories: dict[str, frozenset[str]] = {}

    async def note_holder(self, patient_id: str, facility_code: str) -> None:
        """Notes that the facility holds records of the patient (idempotent; before the first of
        them becomes readable, so that every readable record has its holder noted)."""
        key = holder_key(patient_id, facility_code)
        if key in self._known_holders:
            return
        with contextlib.suppress(DuplicateKeyError):  # noted before
            await self._holders.insert_one(
                {"_id": key, "patient_id": patient_id, "facility_code": facility_code, "since": utc_now()}
            )
        self._remember_holder(key)

    async def holds_records(self, patient_id: str, facility_code: str) -> bool:
        """Whether the facility holds any record of the patient."""
        key = holder_key(patient_id, facility_code)
        if key in self._known_holders:
            return True
        if await self._holders.find_one({"_id": key}, {"_id": 1}) is None:
            return False
        self._remember_holder(key)
        return True

    async def mark_visit(self, encounter_id: str, categories: frozenset[str]) -> None:
        """Notes that the visit carries these categories (idempotent; before the resource that
        brings them becomes readable). Inserts only: concurrent writers never lose a category."""
        if not categories or categories <= self._known_visit_categories.get(encounter_id, frozenset()):
            return
        for key in [
            *(f"{encounter_id}:{category}" for category in sorted(categories)),
            f"{encounter_id}:any",
        ]:
            with contextlib.suppress(DuplicateKeyError):  # marked before
                await self._visit_categories.insert_one(
                    {"_id": key, "encounter_id": encounter_id, "since": utc_now()}
                )

    async def visit_categories(self, encounter_id: str) -> frozenset[str]:
        """The categories the visit carries (none for a visit never marked)."""
        if not encounter_id:
            return frozenset()
        if await self._visit_categories.find_one({"_id": f"{encounter_id}:any"}, {"_id": 1}) is None:
            return self._known_visit_categories.get(encounter_id, frozenset())
        found = await asyncio.gather(
            *(
                self._visit_categories.find_one({"_id": f"{encounter_id}:{category}"}, {"_id": 1})
                for category in ALL_CATEGORIES
            )
        )
        categories = frozenset(c for c, document in zip(ALL_CATEGORIES, found, strict=True) if document)
        if len(self._known_visit_categories) >= KNOWN_HOLDERS_MAX:
            self._known_visit_categories.clear()
        self._known_visit_categories[encounter_id] = categories
        return categories

    def _remember_holder(self, key: str) -> None:
        if len(self._known_holders) >= KNOWN_HOLDERS_MAX:
            self._known_holders.clear()
        self._known_holders.add(key)

    async def store_version(self, record: ClinicalRecord) -> tuple[ClinicalRecord, bool]:
        """Step 1: writes the immutable version; returns the stored one and whether this call wrote it."""
        stored, inserted = await insert_or_get(self._versions, _version_document(self._crypt, record))
        return _record(self._crypt, stored["record"]), inserted

    async def version_by_request(self, resource_id: str, request_id: str) -> ClinicalRecord | None:
        document = await self._versions.find_one({"resource_id": resource_id, "request_id": request_id})
        return _record(self._crypt, document["record"]) if document else None

    async def advance(self, record: ClinicalRecord) -> None:
        """Step 2: notes the version as pending for the feed, then moves the current state to it
        (from the version before it, or creates it)."""
        with contextlib.suppress(DuplicateKeyError):  # noted by an earlier attempt
            await self._pending.insert_one(
                {
                    "_id": _version_key(record),
                    "resource_id": record.resource_id,
                    "version": record.version,
                    "since": utc_now(),
                }
            )
        document = _record_document(self._crypt, record)
        if record.version == 1:
            with contextlib.suppress(DuplicateKeyError):  # already created by an earlier attempt
                await self._resources.insert_one(document)
            return
        await self._resources.replace_one(
            {"_id": record.resource_id, "version": record.version - 1}, document
        )

    async def mark_change_recorded(self, record: ClinicalRecord) -> None:
        await self._pending.delete_one({"_id": _version_key(record)})

    async def change_pending(self, record: ClinicalRecord) -> bool:
        return await self._pending.find_one({"_id": _version_key(record)}, {"_id": 1}) is not None

    async def get(self, resource_id: str) -> ClinicalRecord | None:
        document = await self._resources.find_one({"_id": resource_id})
        return _record(self._crypt, document) if document else None

    async def history(self, resource_id: str) -> list[ClinicalRecord]:
        cursor = self._versions.find({"resource_id": resource_id}).sort("version", 1)
        return [_record(self._crypt, document["record"]) async for document in cursor]

    async def with_change_pending(self, older_than: datetime, limit: int) -> list[ClinicalRecord]:
        cursor = self._pending.find({"since": {"$lt": older_than}}).limit(limit)
        keys = [(document["resource_id"], document["version"]) async for document in cursor]
        return list((await self.versions(keys)).values())

    async def versions(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], ClinicalRecord]:
        """Given (resource id, version) pairs, those versions as they were written."""
        cursor = self._versions.find(
            {"_id": {"$in": [f"{resource_id}:{version}" for resource_id, version in keys]}}
        )
        return {
            (document["resource_id"], document["version"]): _record(self._crypt, document["record"])
            async for document in cursor
        }

    async def timeline(self, query: TimelineQuery) -> list[ClinicalRecord]:
        """A page of a patient's resources, newest first; keyset paging on (time, _id)."""
        owners = list(query.owner_ids) or [query.patient_id]
        conditions: list[Document] = [{"patient_id": owners[0] if len(owners) == 1 else {"$in": owners}}]
        if query.resource_types:
            conditions.append({"resource_type": {"$in": [kind.value for kind in query.resource_types]}})
        if query.loinc_code:
            conditions.append({"code": query.loinc_code})
        if query.facility_code:
            conditions.append({"facility_code": query.facility_code})
        if query.visible_facilities is not None:
            # In the query, not after it: a page holds `limit` visible records when there are that many.
            conditions.append({"facility_code": {"$in": sorted(query.visible_facilities)}})
        if query.start is not None:
            conditions.append({"time": {"$gte": query.start}})
        if query.end is not None:
            conditions.append({"time": {"$lt": query.end}})
        if query.after is not None:
            moment, resource_id = query.after
            conditions.append(
                {"$or": [{"time": {"$lt": moment}}, {"time": moment, "_id": {"$lt": resource_id}}]}
            )
        cursor = (
            self._resources.find({"$and": conditions}).sort([("time", -1), ("_id", -1)]).limit(query.limit)
        )
        return [_record(self._crypt, document) async for document in cursor]

    async def attached_to(self, encounter_id: str) -> list[ClinicalRecord]:
        cursor = self._resources.find({"encounter_id": encounter_id}).sort([("time", 1), ("_id", 1)])
        return [_record(self._crypt, document) async for document in cursor]

    async def clinical_time_before(self, cutoff: datetime, after_id: str, limit: int) -> list[ClinicalRecord]:
        """Records whose clinical time is before ``cutoff``, by id after ``after_id`` (the disposal
        job's scan: no record can be due before its clinical time plus the shortest retention)."""
        cursor = (
            self._resources.find({"time": {"$lt": cutoff}, "_id": {"$gt": after_id}})
            .sort("_id", 1)
            .limit(limit)
        )
        return [_record(self._crypt, document) async for document in cursor]

    async def holds_any(self, patient_id: str) -> bool:
        """Whether any record of the patient is stored (the disposal job's question, not a hot path)."""
        return await self._resources.find_one({"patient_id": patient_id}, {"_id": 1}) is not None

    async def erase(self, resource_id: str) -> None:
        """Removes every version and the current state of a resource (disposal; idempotent). The
        versions first: a crash in between leaves the current state, so the resource is listed and
        erased again."""
        await self._versions.delete_many({"resource_id": resource_id})
        await self._resources.delete_one({"_id": resource_id})
        # A disposed visit's special categories go last (before, a reader could see it without
        # them); a resumed disposal erases again. Ids only: FerretDB indexes nothing else.
        for category in (*ALL_CATEGORIES, "any"):
            await self._visit_categories.delete_one({"_id": f"{resource_id}:{category}"})
        self._known_visit_categories.pop(resource_id, None)


def _tombstone_fields(sequence: int) -> Document:
    # Resource fields unique per tombstone: they share the (resource, version) unique index.
    return {"resource_type": "", "resource_id": f"tombstone:{sequence}", "resource_version": 0}


def _change_fields(record: ClinicalRecord) -> Document:
    return {
        "kind": (ChangeKind.CREATED if record.version == 1 else ChangeKind.UPDATED).value,
        "resource_type": record.resource_type.value,
        "resource_id": record.resource_id,
        "resource_version": record.version,
        "patient_id": record.patient_id,
        "facility_code": record.facility_code,
    }


class ChangeFeedRepository:
    """The records change feed (emr_runtime.changefeed), one change per resource version."""

    def __init__(self, db: Database) -> None:
        self._changes = db[CHANGES]
        # Positions are stored as text and read one `_id` lookup each: FerretDB 1.x serves neither
        # a range of `_id`s nor a numeric `_id` from an index (with 20,000 changes, 100 changes
        # after a cursor took 593 ms as a range and 44 s as numeric lookups).
        self._feed = ChangeFeed(
            db, CHANGES, CHANGE_COUNTER, _tombstone_fields, position_id=str, lookups_only=True
        )

    async def recorded(self, record: ClinicalRecord) -> bool:
        """Whether the change of this version is in the feed (a query by resource, not by key: only
        on the recovery paths, never on the write path)."""
        query = {
            "resource_type": record.resource_type.value,
            "resource_id": record.resource_id,
            "resource_version": record.version,
        }
        return await self._changes.find_one(query, {"_id": 1}) is not None

    async def append(self, record: ClinicalRecord) -> int | None:
        """Step 3: appends the change under a fresh sequence and returns it (None: it was in the
        feed already)."""
        return await self._feed.append(_change_fields(record))

    async def reserve(self) -> int:
        """Allocates the next feed position; until ``write`` fills it, it is a hole in the feed."""
        return await self._feed.reserve()

    async def write(self, sequence: int, record: ClinicalRecord) -> bool:
        """Fills a reserved position with the change of ``record``; False if a tombstone closed the
        position first (the caller reserves another). A change already recorded counts as written."""
        return await self._feed.fill(sequence, _change_fields(record)) is not Filled.TAKEN

    async def next_run(self, after: int, limit: int, settle: timedelta) -> tuple[list[Change], int]:
        """The next run of changes without holes after ``after`` and the cursor to pass next."""
        return await self._feed.next_run(after, limit, settle, _change)
