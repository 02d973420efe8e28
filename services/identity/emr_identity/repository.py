"""MongoDB storage of persons, facility records, blocks, review tasks and the link log.

Every read is a lookup by ``_id`` (through ``_get``), so no RPC scans a collection: candidate
retrieval reads one block document per blocking key (``_id`` = the key) listing record ids, then the
records and persons by id. On MongoDB these are IDHACK/index lookups; FerretDB pushes them down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import date

from pymongo.errors import DuplicateKeyError

from emr_identity.domain import (
    EventKind,
    Identifier,
    IdentifierSystem,
    LinkEvent,
    Outcome,
    Person,
    PersonStatus,
    Sex,
)
from emr_identity.linkage import FacilityRecord, ReviewTask
from emr_identity.matching import Candidate, Contribution, MatchRecord, MatchScore, NameFrequencies
from emr_identity.vietnamese import NameParts
from emr_runtime.db import Database, Document, IndexSpec, insert_or_get, next_sequence
from emr_runtime.fieldcrypt import FieldCrypt

PERSONS = "persons"
CLAIMS = "identifier_claims"
RECORDS = "facility_records"
BLOCKS = "blocks"
REVIEW_TASKS = "review_tasks"
EVENTS = "link_events"
NAME_COUNTS = "name_counts"
COLLECTIONS = (PERSONS, CLAIMS, RECORDS, BLOCKS, REVIEW_TASKS, EVENTS, NAME_COUNTS)
REVIEW_SEQUENCE = "identity_review_tasks"
# Open review tasks, kept by $inc on open and close: counting them would scan the collection. A
# crash between a task's write and its $inc leaves the count off by one (it feeds a gauge only).
OPEN_REVIEW_TASKS = "identity_open_review_tasks"

INDEXES = (IndexSpec(CLAIMS, (("person_id", 1),), "claims_by_person"),)
# National identifiers and phone numbers are stored encrypted (emr_runtime.fieldcrypt); MRNs, a
# facility's own numbers, stay readable.
ENCRYPTED_SYSTEMS = frozenset({IdentifierSystem.CCCD, IdentifierSystem.BHYT, IdentifierSystem.PASSPORT})
# Claim and block keys "<prefix>:<value>" whose value is an identifier or a phone number: stored as
# "<prefix>#<blind index>", so that exact look-ups work without the value in the database.
INDEXED_KEY_PREFIXES = frozenset({"CCCD", "cccd", "bhyt", "pp", "ph"})


def stored_key(crypt: FieldCrypt, key: str) -> str:
    """The ``_id`` under which a claim or block key is stored (idempotent: a stored key maps to itself)."""
    prefix, separator, value = key.partition(":")
    if separator and prefix in INDEXED_KEY_PREFIXES:
        return f"{prefix}#{crypt.blind_index(prefix.lower(), value)}"
    return key


def _identifier_kind(system: IdentifierSystem) -> str:
    return f"identity.identifier.{system.value}"


def _identifier_document(crypt: FieldCrypt, identifier: Identifier) -> Document:
    value = identifier.value
    if identifier.system in ENCRYPTED_SYSTEMS:
        value = crypt.encrypt(_identifier_kind(identifier.system), value)
    return {"system": identifier.system.value, "value": value, "facility_code": identifier.facility_code}


def _identifier(crypt: FieldCrypt, document: Document) -> Identifier:
    system = IdentifierSystem(document["system"])
    value = document["value"]
    if system in ENCRYPTED_SYSTEMS:
        value = crypt.decrypt(_identifier_kind(system), value)
    return Identifier(system, value, document.get("facility_code", ""))


def _person_document(crypt: FieldCrypt, person: Person) -> Document:
    return {
        "_id": person.person_id,
        "identifiers": [_identifier_document(crypt, i) for i in person.identifiers],
        "full_name": person.full_name,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "registering_facility_code": person.registering_facility_code,
        "created_at": person.created_at,
        "status": person.status.value,
        "request_fingerprint": person.request_fingerprint,
        "superseded_by": person.superseded_by,
        "claim_keys": [stored_key(crypt, key) for key in person.claim_keys],
        "phone": crypt.encrypt("identity.phone", person.phone),
        "province_code": person.province_code,
        "record_ids": list(person.record_ids),
        "merged_into": person.merged_into,
        "merged_person_ids": list(person.merged_person_ids),
        "rejected_person_ids": list(person.rejected_person_ids),
        "event_ids": list(person.event_ids),
        "version": person.version,
    }


def _person(crypt: FieldCrypt, document: Document) -> Person:
    """A stored person; its ``claim_keys`` are in stored form (``stored_key``)."""
    return Person(
        person_id=document["_id"],
        identifiers=tuple(_identifier(crypt, i) for i in document["identifiers"]),
        full_name=document["full_name"],
        birth_date=date.fromisoformat(document["birth_date"]),
        sex=Sex(document["sex"]),
        registering_facility_code=document["registering_facility_code"],
        created_at=document["created_at"],
        status=PersonStatus(document["status"]),
        request_fingerprint=document["request_fingerprint"],
        superseded_by=document.get("superseded_by", ""),
        claim_keys=tuple(document.get("claim_keys", ())),
        phone=crypt.decrypt("identity.phone", document.get("phone", "")),
        province_code=document.get("province_code", ""),
        record_ids=tuple(document.get("record_ids", ())),
        merged_into=document.get("merged_into", ""),
        merged_person_ids=tuple(document.get("merged_person_ids", ())),
        rejected_person_ids=tuple(document.get("rejected_person_ids", ())),
        event_ids=tuple(document.get("event_ids", ())),
        version=int(document.get("version", 1)),
    )


def _match_document(crypt: FieldCrypt, match: MatchRecord) -> Document:
    return {
        "family": match.names.family,
        "middle": match.names.middle,
        "given": match.names.given,
        "birth_date": match.birth_date.isoformat(),
        "sex": match.sex,
        "phone": crypt.encrypt("identity.phone", match.phone),
        "province_code": match.province_code,
        "cccd": crypt.encrypt(_identifier_kind(IdentifierSystem.CCCD), match.cccd),
        "bhyt_code": crypt.encrypt(_identifier_kind(IdentifierSystem.BHYT), match.bhyt_code),
        "passport": crypt.encrypt(_identifier_kind(IdentifierSystem.PASSPORT), match.passport),
    }


def _match(crypt: FieldCrypt, record_id: str, document: Document) -> MatchRecord:
    return MatchRecord(
        record_id=record_id,
        names=NameParts(document["family"], document["middle"], document["given"]),
        birth_date=date.fromisoformat(document["birth_date"]),
        sex=document["sex"],
        phone=crypt.decrypt("identity.phone", document["phone"]),
        province_code=document["province_code"],
        cccd=crypt.decrypt(_identifier_kind(IdentifierSystem.CCCD), document["cccd"]),
        bhyt_code=crypt.decrypt(_identifier_kind(IdentifierSystem.BHYT), document["bhyt_code"]),
        passport=crypt.decrypt(_identifier_kind(IdentifierSystem.PASSPORT), document["passport"]),
    )


def _candidates_document(candidates: Iterable[Candidate]) -> list[Document]:
    return [
        {
            "person_id": c.person_id,
            "total": c.score.total,
            "deterministic": c.score.deterministic,
            "corroborated": c.score.corroborated,
            # Documents, not nested arrays: FerretDB 1.x stores no arrays of arrays.
            "contributions": [
                {"field": p.field, "level": p.level, "weight": p.weight} for p in c.score.contributions
            ],
        }
        for c in candidates
    ]


def _candidates(documents: Iterable[Document]) -> tuple[Candidate, ...]:
    return tuple(
        Candidate(
            d["person_id"],
            MatchScore(
                total=d["total"],
                contributions=tuple(
                    Contribution(p["field"], p["level"], p["weight"]) for p in d["contributions"]
                ),
                deterministic=d["deterministic"],
                corroborated=d["corroborated"],
            ),
        )
        for d in documents
    )


def _record_document(crypt: FieldCrypt, record: FacilityRecord) -> Document:
    return {
        "_id": record.record_id,
        "person_id": record.person_id,
        "facility_code": record.facility_code,
        "match": _match_document(crypt, record.match),
        "request_fingerprint": record.request_fingerprint,
        "created_at": record.created_at,
        "outcome": record.outcome.value if record.outcome else None,
        "candidates": _candidates_document(record.candidates),
        "review_task_id": record.review_task_id,
    }


def _record(crypt: FieldCrypt, document: Document) -> FacilityRecord:
    outcome = document.get("outcome")
    return FacilityRecord(
        record_id=document["_id"],
        person_id=document["person_id"],
        facility_code=document["facility_code"],
        match=_match(crypt, document["_id"], document["match"]),
        request_fingerprint=document["request_fingerprint"],
        created_at=document["created_at"],
        outcome=Outcome(outcome) if outcome else None,
        candidates=_candidates(document.get("candidates", ())),
        review_task_id=document.get("review_task_id", ""),
    )


def _task(document: Document) -> ReviewTask:
    return ReviewTask(
        task_id=document["_id"],
        person_id=document["person_id"],
        record_id=document["record_id"],
        candidates=_candidates(document["candidates"]),
        created_at=document["created_at"],
        open=document["open"],
        resolution=document.get("resolution", ""),
    )


def _event(document: Document) -> LinkEvent:
    return LinkEvent(
        event_id=document["_id"],
        kind=EventKind(document["kind"]),
        person_id=document["person_id"],
        at=document["at"],
        actor_id=document["actor_id"],
        other_person_id=document.get("other_person_id", ""),
        record_id=document.get("record_id", ""),
        reason=document.get("reason", ""),
        version=int(document.get("version", 0)),
        review_task_id=document.get("review_task_id", ""),
        request_fingerprint=document.get("request_fingerprint", ""),
    )


class PersonRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._db = db
        self._crypt = crypt
        self._persons = db[PERSONS]
        self._claims = db[CLAIMS]
        self._records = db[RECORDS]
        self._blocks = db[BLOCKS]
        self._tasks = db[REVIEW_TASKS]
        self._events = db[EVENTS]
        self._name_counts = db[NAME_COUNTS]

    async def _get(self, collection: str, document_id: str) -> Document | None:
        """The one read primitive: a lookup by ``_id``."""
        return await self._db[collection].find_one({"_id": document_id})

    async def _upsert(self, collection: str, document_id: str, update: Document) -> None:
        """An update that creates the document if missing. Two concurrent upserts of a new ``_id``
        may both try the insert; the loser's retry then finds the document and updates it."""
        try:
            await self._db[collection].update_one({"_id": document_id}, update, upsert=True)
        except DuplicateKeyError:
            await self._db[collection].update_one({"_id": document_id}, update, upsert=True)

    async def _get_many(self, collection: str, document_ids: Iterable[str]) -> list[Document]:
        found = await asyncio.gather(*(self._get(collection, i) for i in document_ids))
        return [d for d in found if d is not None]

    # --- persons ----------------------------------------------------------------------------------

    async def insert_or_get(self, person: Person) -> Person:
        """Inserts the person; if one with its id exists already (a repeated request), returns that."""
        stored, _ = await insert_or_get(self._persons, _person_document(self._crypt, person))
        return _person(self._crypt, stored)

    async def get(self, person_id: str) -> Person | None:
        document = await self._get(PERSONS, person_id)
        return _person(self._crypt, document) if document else None

    async def get_many(self, person_ids: Iterable[str]) -> list[Person]:
        return [_person(self._crypt, d) for d in await self._get_many(PERSONS, person_ids)]

    async def claim(self, claim_key: str, person_id: str) -> str:
        """Claims a unique identifier for a person; returns the id of the person that owns it."""
        claim_key = stored_key(self._crypt, claim_key)
        try:
            await self._claims.insert_one({"_id": claim_key, "person_id": person_id})
            return person_id
        except DuplicateKeyError:
            owner = await self._get(CLAIMS, claim_key)
            assert owner is not None  # claims are never deleted once another person owns them
            return str(owner["person_id"])

    async def release_claims(self, person_id: str, claim_keys: Iterable[str]) -> None:
        for key in claim_keys:
            await self._claims.delete_one({"_id": stored_key(self._crypt, key), "person_id": person_id})

    async def transfer_claims(self, claim_keys: Iterable[str], from_person: str, to_person: str) -> None:
        for key in claim_keys:
            await self._claims.update_one(
                {"_id": stored_key(self._crypt, key), "person_id": from_person},
                {"$set": {"person_id": to_person}},
            )

    async def activate(self, person_id: str) -> None:
        await self._persons.update_one(
            {"_id": person_id, "status": PersonStatus.PROVISIONAL.value},
            {"$set": {"status": PersonStatus.ACTIVE.value}},
        )

    async def supersede(self, person_id: str, owner_id: str) -> bool:
        """Marks a provisional person as resolved to another; False if it was activated meanwhile."""
        result = await self._persons.update_one(
            {"_id": person_id, "status": PersonStatus.PROVISIONAL.value},
            {"$set": {"status": PersonStatus.SUPERSEDED.value, "superseded_by": owner_id}},
        )
        return result.modified_count == 1

    async def add_record(self, person_id: str, record_id: str) -> None:
        await self._persons.update_one({"_id": person_id}, {"$addToSet": {"record_ids": record_id}})

    async def merge(self, survivor_id: str, merged_id: str) -> bool:
        """Marks an active person merged into the survivor; False if it was not active."""
        result = await self._persons.update_one(
            {"_id": merged_id, "status": PersonStatus.ACTIVE.value},
            {"$set": {"status": PersonStatus.MERGED.value, "merged_into": survivor_id}},
        )
        if result.modified_count == 1:
            await self._persons.update_one(
                {"_id": survivor_id}, {"$addToSet": {"merged_person_ids": merged_id}}
            )
        return result.modified_count == 1

    async def unmerge(self, merged_id: str, survivor_id: str) -> bool:
        result = await self._persons.update_one(
            {"_id": merged_id, "status": PersonStatus.MERGED.value, "merged_into": survivor_id},
            {"$set": {"status": PersonStatus.ACTIVE.value, "merged_into": ""}},
        )
        await self._persons.update_one({"_id": survivor_id}, {"$pull": {"merged_person_ids": merged_id}})
        return result.modified_count == 1

    async def update_demographics(self, person: Person, expected_version: int) -> bool:
        """Replaces the demographics if the stored version is ``expected_version``; False if not."""
        result = await self._persons.update_one(
            {"_id": person.person_id, "version": expected_version, "status": PersonStatus.ACTIVE.value},
            {
                "$set": {
                    "full_name": person.full_name,
                    "birth_date": person.birth_date.isoformat(),
                    "sex": person.sex.value,
                    "phone": self._crypt.encrypt("identity.phone", person.phone),
                    "province_code": person.province_code,
                    "version": expected_version + 1,
                }
            },
        )
        return result.modified_count == 1

    async def reject_pair(self, person_id: str, other_id: str) -> None:
        await self._persons.update_one({"_id": person_id}, {"$addToSet": {"rejected_person_ids": other_id}})
        await self._persons.update_one({"_id": other_id}, {"$addToSet": {"rejected_person_ids": person_id}})

    # --- facility records and blocks ----------------------------------------------------------------

    async def insert_or_get_record(self, record: FacilityRecord) -> FacilityRecord:
        stored, _ = await insert_or_get(self._records, _record_document(self._crypt, record))
        return _record(self._crypt, stored)

    async def finish_record(self, record: FacilityRecord) -> FacilityRecord:
        """Records the outcome once; a concurrent twin of the request that finished first wins."""
        await self._records.update_one(
            {"_id": record.record_id, "outcome": None},
            {
                "$set": {
                    "person_id": record.person_id,
                    "outcome": record.outcome.value if record.outcome else None,
                    "candidates": _candidates_document(record.candidates),
                    "review_task_id": record.review_task_id,
                }
            },
        )
        stored = await self._get(RECORDS, record.record_id)
        assert stored is not None
        return _record(self._crypt, stored)

    async def records(self, record_ids: Iterable[str]) -> list[FacilityRecord]:
        return [_record(self._crypt, d) for d in await self._get_many(RECORDS, record_ids)]

    async def file_in_blocks(self, keys: Iterable[str], record_id: str) -> None:
        for key in keys:
            await self._upsert(BLOCKS, stored_key(self._crypt, key), {"$addToSet": {"record_ids": record_id}})

    async def block_members(self, keys: Iterable[str]) -> set[str]:
        members: set[str] = set()
        for block in await self._get_many(BLOCKS, (stored_key(self._crypt, key) for key in keys)):
            members.update(block["record_ids"])
        return members

    # --- name frequencies ---------------------------------------------------------------------------

    async def count_names(self, names: NameParts) -> None:
        for kind, folded in (
            ("family", names.folded_family),
            ("middle", names.folded_middle),
            ("given", names.folded_given),
        ):
            if folded:  # a one-word name has no middle (and no given) part
                await self._upsert(NAME_COUNTS, kind, {"$inc": {f"counts.{folded.replace('.', ' ')}": 1}})
        await self._upsert(NAME_COUNTS, "total", {"$inc": {"value": 1}})

    async def name_frequencies(self) -> NameFrequencies:
        frequencies = NameFrequencies()
        for kind in ("family", "middle", "given"):
            document = await self._get(NAME_COUNTS, kind)
            getattr(frequencies, kind).update(document["counts"] if document else {})
        total = await self._get(NAME_COUNTS, "total")
        frequencies.total = int(total["value"]) if total else 0
        return frequencies

    # --- review tasks -------------------------------------------------------------------------------

    async def next_review_sequence(self) -> int:
        return await next_sequence(self._db, REVIEW_SEQUENCE)

    async def last_review_sequence(self) -> int:
        counter = await self._get("counters", REVIEW_SEQUENCE)
        return int(counter["value"]) if counter else 0

    async def insert_task(self, task: ReviewTask) -> None:
        _, inserted = await insert_or_get(
            self._tasks,
            {
                "_id": task.task_id,
                "person_id": task.person_id,
                "record_id": task.record_id,
                "candidates": _candidates_document(task.candidates),
                "created_at": task.created_at,
                "open": task.open,
                "resolution": "",
            },
        )
        if inserted and task.open:
            await self._upsert("counters", OPEN_REVIEW_TASKS, {"$inc": {"value": 1}})

    async def get_task(self, task_id: str) -> ReviewTask | None:
        document = await self._get(REVIEW_TASKS, task_id)
        return _task(document) if document else None

    async def tasks(self, task_ids: Iterable[str]) -> list[ReviewTask]:
        return [_task(d) for d in await self._get_many(REVIEW_TASKS, task_ids)]

    async def open_task_count(self) -> int:
        counter = await self._get("counters", OPEN_REVIEW_TASKS)
        return int(counter["value"]) if counter else 0

    async def close_task(self, task_id: str, resolution: str) -> bool:
        result = await self._tasks.update_one(
            {"_id": task_id, "open": True}, {"$set": {"open": False, "resolution": resolution}}
        )
        if result.modified_count != 1:
            return False
        await self._upsert("counters", OPEN_REVIEW_TASKS, {"$inc": {"value": -1}})
        return True

    # --- link log -----------------------------------------------------------------------------------

    async def append_event(self, event: LinkEvent) -> None:
        """Writes the event once (its id is derived from the request) and lists it on the person."""
        await insert_or_get(
            self._events,
            {
                "_id": event.event_id,
                "kind": event.kind.value,
                "person_id": event.person_id,
                "at": event.at,
                "actor_id": event.actor_id,
                "other_person_id": event.other_person_id,
                "record_id": event.record_id,
                "reason": event.reason,
                "version": event.version,
                "review_task_id": event.review_task_id,
                "request_fingerprint": event.request_fingerprint,
            },
        )
        await self._persons.update_one({"_id": event.person_id}, {"$addToSet": {"event_ids": event.event_id}})

    async def events(self, event_ids: Iterable[str]) -> list[LinkEvent]:
        return [_event(d) for d in await self._get_many(EVENTS, event_ids)]

    async def get_event(self, event_id: str) -> LinkEvent | None:
        document = await self._get(EVENTS, event_id)
        return _event(document) if document else None

    # --- bulk loading (migrations, benches) -------------------------------------------------------

    async def bulk_load(
        self, entries: Iterable[tuple[Person, FacilityRecord]], block_keys: dict[str, list[str]]
    ) -> None:
        """Writes active persons with their finished records, and the blocks (key -> record ids),
        in batches, into an empty index: for loading an existing population, not for traffic."""
        persons: list[Document] = []
        records: list[Document] = []
        frequencies = NameFrequencies()
        for person, record in entries:
            persons.append(_person_document(self._crypt, person))
            records.append(_record_document(self._crypt, record))
            frequencies.add(record.match.names)
        blocks = [{"_id": stored_key(self._crypt, key), "record_ids": ids} for key, ids in block_keys.items()]
        for collection, documents in ((PERSONS, persons), (RECORDS, records), (BLOCKS, blocks)):
            for start in range(0, len(documents), 5_000):
                await self._db[collection].insert_many(documents[start : start + 5_000], ordered=False)
        for kind in ("family", "middle", "given"):
            counts = {name: n for name, n in getattr(frequencies, kind).items() if name}
            await self._upsert(NAME_COUNTS, kind, {"$set": {"counts": counts}})
        await self._upsert(NAME_COUNTS, "total", {"$set": {"value": frequencies.total}})
