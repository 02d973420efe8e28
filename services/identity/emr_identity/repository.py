"""MongoDB storage of persons, facility records, blocks, review tasks and the link log.

Every read, update and delete names exactly one document by ``_id`` and nothing else (the filter is
``{"_id": value}``), so no RPC scans a collection: candidate retrieval reads one block document per
blocking key (``_id`` = the key) listing its members with what the matcher compares of them, then
only the records and persons worth proposing, by id. On MongoDB
these are IDHACK lookups. FerretDB 1.x hands SQL only a filter that is exactly ``{_id: value}``
(any other filter reads the whole table into FerretDB), and serves it with an index once
emr_devstack.ferretdb_sqlite has added one. Conditional state changes therefore do not filter on
the state: they first claim the change by inserting a document with a derived ``_id`` into
``state_transitions`` (the unique ``_id`` lets one writer win, as a compare-and-set), then apply it
by ``_id``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from datetime import date, timedelta

from pymongo.errors import BulkWriteError, DuplicateKeyError

from emr_identity.birth_dates import BirthDate
from emr_identity.claim_profile import NO_CLAIM_PROFILE, ClaimProfile
from emr_identity.domain import (
    BhytCard,
    EventKind,
    Identifier,
    IdentifierSystem,
    LinkEvent,
    Outcome,
    PatientChange,
    PatientChangeKind,
    Person,
    PersonStatus,
    Sex,
)
from emr_identity.linkage import (
    FacilityRecord,
    ProposedDemographics,
    RecordDemographics,
    ReviewKind,
    ReviewTask,
)
from emr_identity.matching import (
    Candidate,
    Contribution,
    MatchRecord,
    MatchScore,
    NameFrequencies,
    blocking_keys,
)
from emr_identity.vietnamese import NameParts
from emr_runtime.changefeed import ChangeFeed, Filled
from emr_runtime.db import (
    SEQUENCE_CLAIMS,
    Database,
    Document,
    IndexSpec,
    create_collections,
    insert_or_get,
    last_sequence,
    next_sequence,
)
from emr_runtime.fieldcrypt import FieldCrypt

PERSONS = "persons"
CLAIMS = "identifier_claims"
RECORDS = "facility_records"
BLOCKS = "blocks"
REVIEW_TASKS = "review_tasks"
EVENTS = "link_events"
NAME_COUNTS = "name_counts"
TRANSITIONS = "state_transitions"
COUNTERS = "counters"
# Turns of registrations on a blocking key (see PersonRepository.take_turn): one document per key
# while a registration holds it, deleted when it is done, so the collection stays small.
REGISTRATION_TURNS = "registration_turns"
# The patient change feed (emr_runtime.changefeed): positions "<sequence>" (string ids: the one
# filter FerretDB hands to its index is {_id: <string>}), read one position at a time.
PATIENT_CHANGES = "patient_changes"
PATIENT_CHANGE_COUNTER = "identity_patient_changes"
COLLECTIONS = (
    PERSONS,
    CLAIMS,
    RECORDS,
    BLOCKS,
    REVIEW_TASKS,
    EVENTS,
    NAME_COUNTS,
    TRANSITIONS,
    COUNTERS,
    REGISTRATION_TURNS,
    SEQUENCE_CLAIMS,
    PATIENT_CHANGES,
)
# The server's code of a duplicate key error (a unique _id taken).
DUPLICATE_KEY = 11000
# Name counts live in one document (one $inc per registration).
NAME_COUNTS_ID = "names"
NAME_KINDS = ("family", "middle", "given")
REVIEW_SEQUENCE = "identity_review_tasks"
# Open review tasks, kept by $inc on open and close: counting them would scan the collection. A
# crash between a task's write and its $inc leaves the count off by one (it feeds a gauge only).
OPEN_REVIEW_TASKS = "identity_open_review_tasks"

# Locks that updates of one document take turns on (see PersonRepository._update), shared by
# documents whose (collection, _id) hash alike: bounded memory, rare needless waits.
UPDATE_TURN_STRIPES = 1024

INDEXES = (
    IndexSpec(CLAIMS, (("person_id", 1),), "claims_by_person"),
    # A change is in the feed once, however often its request is retried (an insert, never a query).
    IndexSpec(PATIENT_CHANGES, (("key", 1),), "patient_changes_by_key", unique=True),
)
# National identifiers and phone numbers are stored encrypted (emr_runtime.fieldcrypt); MRNs, a
# facility's own numbers, stay readable.
ENCRYPTED_SYSTEMS = frozenset({IdentifierSystem.CCCD, IdentifierSystem.BHYT, IdentifierSystem.PASSPORT})
# Claim and block keys "<prefix>:<value>" whose value is an identifier or a phone number: stored as
# "<prefix>#<blind index>", so that exact look-ups work without the value in the database.
INDEXED_KEY_PREFIXES = frozenset({"cccd", "bhyt", "pp", "ph"})


def stored_key(crypt: FieldCrypt, key: str) -> str:
    """The ``_id`` under which a claim or block key is stored (idempotent: a stored key maps to itself)."""
    prefix, separator, value = key.partition(":")
    if separator and prefix in INDEXED_KEY_PREFIXES:
        return f"{prefix}#{crypt.blind_index(prefix.lower(), value)}"
    return key


# A name part is a field name of the counts document: escaped (%XX) where it would otherwise be a
# path ("."), an operator ("$"), an invalid key (NUL) or ambiguous ("%" itself).
_COUNT_KEY_ESCAPES = {"%": "%25", ".": "%2E", "$": "%24", "\x00": "%00"}
_ESCAPED_IN_COUNT_KEY = re.compile("[%.$\x00]")
_COUNT_KEY_ESCAPE = re.compile("%(25|2E|24|00)")


def name_count_key(name: str) -> str:
    """The field name under which a folded name part is counted; any name, never a path or operator."""
    return _ESCAPED_IN_COUNT_KEY.sub(lambda m: _COUNT_KEY_ESCAPES[m.group()], name)


def name_of_count_key(key: str) -> str:
    """The name part counted under ``key`` (the inverse of ``name_count_key``)."""
    return _COUNT_KEY_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key)


def _identifier_kind(system: IdentifierSystem) -> str:
    return f"identity.identifier.{system.value}"


def _identifier_document(crypt: FieldCrypt, identifier: Identifier) -> Document:
    value = identifier.value
    if identifier.system in ENCRYPTED_SYSTEMS:
        value = crypt.encrypt(_identifier_kind(identifier.system), value)
    document: Document = {
        "system": identifier.system.value,
        "value": value,
        "facility_code": identifier.facility_code,
    }
    card = identifier.bhyt_card
    if card is not None:
        document["bhyt_card"] = {
            "valid_from": card.valid_from.isoformat() if card.valid_from else "",
            "valid_to": card.valid_to.isoformat() if card.valid_to else "",
            "primary_care_facility_code": card.primary_care_facility_code,
        }
    return document


def _bhyt_card(document: Document | None) -> BhytCard | None:
    if not document:
        return None
    return BhytCard(
        date.fromisoformat(document["valid_from"]) if document["valid_from"] else None,
        date.fromisoformat(document["valid_to"]) if document["valid_to"] else None,
        document["primary_care_facility_code"],
    )


def _identifier(crypt: FieldCrypt, document: Document) -> Identifier:
    system = IdentifierSystem(document["system"])
    value = document["value"]
    if system in ENCRYPTED_SYSTEMS:
        value = crypt.decrypt(_identifier_kind(system), value)
    return Identifier(
        system, value, document.get("facility_code", ""), bhyt_card=_bhyt_card(document.get("bhyt_card"))
    )


CLAIM_PROFILE_KIND = "identity.claim_profile"


def _claim_profile_text(crypt: FieldCrypt, profile: ClaimProfile) -> str:
    """The profile encrypted as one value (address and ethnic group are personal data); empty when
    nothing is known."""
    if profile.is_empty():
        return ""
    return crypt.encrypt(CLAIM_PROFILE_KIND, json.dumps(asdict(profile), ensure_ascii=False))


def _claim_profile(crypt: FieldCrypt, stored: str) -> ClaimProfile:
    if not stored:
        return NO_CLAIM_PROFILE
    return ClaimProfile(**json.loads(crypt.decrypt(CLAIM_PROFILE_KIND, stored)))


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
        "claim_profile": _claim_profile_text(crypt, person.claim_profile),
    }


def _status(document: Document) -> PersonStatus:
    """A new person's document stays ``provisional`` in ``status``; its one-time resolution is kept
    apart (``resolution``), so that re-applying it can never undo a later merge written to ``status``."""
    status = PersonStatus(document["status"])
    if status is PersonStatus.PROVISIONAL and document.get("resolution"):
        return PersonStatus(document["resolution"])
    return status


def _person(crypt: FieldCrypt, document: Document) -> Person:
    """A stored person; its ``claim_keys`` are in stored form (``stored_key``)."""
    return Person(
        person_id=document["_id"],
        identifiers=tuple(_identifier(crypt, i) for i in document["identifiers"]),
        full_name=document["full_name"],
        birth_date=BirthDate.parse(document["birth_date"]),
        sex=Sex(document["sex"]),
        registering_facility_code=document["registering_facility_code"],
        created_at=document["created_at"],
        status=_status(document),
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
        claim_profile=_claim_profile(crypt, document.get("claim_profile", "")),
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
        birth_date=BirthDate.parse(document["birth_date"]),
        sex=document["sex"],
        phone=crypt.decrypt("identity.phone", document["phone"]),
        province_code=document["province_code"],
        cccd=crypt.decrypt(_identifier_kind(IdentifierSystem.CCCD), document["cccd"]),
        bhyt_code=crypt.decrypt(_identifier_kind(IdentifierSystem.BHYT), document["bhyt_code"]),
        passport=crypt.decrypt(_identifier_kind(IdentifierSystem.PASSPORT), document["passport"]),
    )


def _block_member(crypt: FieldCrypt, match: MatchRecord) -> Document:
    return {"record_id": match.record_id, **_match_document(crypt, match)}


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


def _demographics_document(crypt: FieldCrypt, demographics: RecordDemographics) -> Document:
    return {
        "full_name": demographics.full_name,
        "birth_date": demographics.birth_date.isoformat(),
        "sex": demographics.sex.value,
        "phone": crypt.encrypt("identity.phone", demographics.phone),
        "province_code": demographics.province_code,
        "version": demographics.version,
        "claim_profile": _claim_profile_text(crypt, demographics.claim_profile),
    }


def _demographics(crypt: FieldCrypt, document: Document) -> RecordDemographics:
    return RecordDemographics(
        full_name=document["full_name"],
        birth_date=BirthDate.parse(document["birth_date"]),
        sex=Sex(document["sex"]),
        phone=crypt.decrypt("identity.phone", document.get("phone", "")),
        province_code=document.get("province_code", ""),
        version=int(document.get("version", 1)),
        claim_profile=_claim_profile(crypt, document.get("claim_profile", "")),
    )


def _record_document(crypt: FieldCrypt, record: FacilityRecord) -> Document:
    document: Document = {
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
    if record.identifiers is not None:
        document["identifiers"] = [_identifier_document(crypt, i) for i in record.identifiers]
    if record.demographics is not None:
        document["demographics"] = _demographics_document(crypt, record.demographics)
    return document


def _record(crypt: FieldCrypt, document: Document) -> FacilityRecord:
    outcome = document.get("outcome")
    demographics = document.get("demographics")
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
        identifiers=tuple(_identifier(crypt, i) for i in document["identifiers"])
        if "identifiers" in document
        else None,
        demographics=_demographics(crypt, demographics) if demographics else None,
    )


def _task(document: Document) -> ReviewTask:
    proposed = document.get("proposed")
    return ReviewTask(
        task_id=document["_id"],
        person_id=document["person_id"],
        record_id=document["record_id"],
        candidates=_candidates(document["candidates"]),
        created_at=document["created_at"],
        open=document["open"],
        resolution=document.get("resolution", ""),
        kind=ReviewKind(document.get("kind", ReviewKind.DUPLICATE.value)),
        proposed=ProposedDemographics(
            proposed["full_name"], BirthDate.parse(proposed["birth_date"]), Sex(proposed["sex"])
        )
        if proposed
        else None,
        facility_code=document.get("facility_code", ""),
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
        self._transitions = db[TRANSITIONS]
        self._registration_turns = db[REGISTRATION_TURNS]
        self._update_turns = [asyncio.Lock() for _ in range(UPDATE_TURN_STRIPES)]

    async def create_collections(self) -> None:
        await create_collections(self._db, COLLECTIONS)

    async def _get(self, collection: str, document_id: str) -> Document | None:
        """The one read primitive: a lookup by ``_id``."""
        return await self._db[collection].find_one({"_id": document_id})

    async def _update(
        self, collection: str, document_id: str, update: Document, upsert: bool = False
    ) -> None:
        """The one write primitive for an existing document: an update by ``_id``. FerretDB 1.x
        applies an update by reading the document and writing it back in separate steps, so two
        concurrent updates of one document can lose one; this process's updates of a document
        therefore take turns (replicas can still race each other; MongoDB needs none of it)."""
        turn = self._update_turns[hash((collection, document_id)) % UPDATE_TURN_STRIPES]
        async with turn:
            try:
                await self._db[collection].update_one({"_id": document_id}, update, upsert=upsert)
            except DuplicateKeyError:
                if not upsert:
                    raise
                # Another replica's upsert of the new ``_id`` won the insert: now it updates.
                await self._db[collection].update_one({"_id": document_id}, update, upsert=True)

    async def _upsert(self, collection: str, document_id: str, update: Document) -> None:
        """An update that creates the document if missing."""
        await self._update(collection, document_id, update, upsert=True)

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
        # Only the owning person's registration changes its claims, so read-then-delete is safe.
        for key in claim_keys:
            stored = stored_key(self._crypt, key)
            claim = await self._get(CLAIMS, stored)
            if claim is not None and claim["person_id"] == person_id:
                await self._claims.delete_one({"_id": stored})

    async def transfer_claims(self, claim_keys: Iterable[str], from_person: str, to_person: str) -> None:
        for key in claim_keys:
            stored = stored_key(self._crypt, key)
            claim = await self._get(CLAIMS, stored)
            if claim is not None and claim["person_id"] == from_person:
                await self._update(CLAIMS, stored, {"$set": {"person_id": to_person}})

    # --- registration turns -------------------------------------------------------------------------

    async def take_turns(self, keys: Sequence[str], holder: str, now: float, hold_seconds: float) -> set[str]:
        """Takes the registration turns on the blocking ``keys`` that no one holds, in one round
        trip, for ``holder`` until ``now`` + ``hold_seconds`` (epoch seconds); returns the keys
        taken. A turn is an insert with the key as ``_id``: the one compare-and-set FerretDB 1.x
        offers, and MongoDB's too."""
        documents = [
            {"_id": stored_key(self._crypt, key), "holder": holder, "expires_at": now + hold_seconds}
            for key in keys
        ]
        try:
            await self._registration_turns.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            refused = {int(e["index"]) for e in errors}
            return {key for index, key in enumerate(keys) if index not in refused}
        return set(keys)

    async def take_turn(self, key: str, holder: str, now: float, hold_seconds: float) -> bool:
        """Takes the turn on one blocking key (as ``take_turns``); False while another holder has
        it. A turn held past its expiry belongs to a holder that stopped (a crash): of the waiters,
        the one whose insert of a break claim for that very holding wins deletes it, and the next
        attempt can take it."""
        if await self.take_turns([key], holder, now, hold_seconds):
            return True
        turn_id = stored_key(self._crypt, key)
        held = await self._get(REGISTRATION_TURNS, turn_id)
        if held is not None and float(held["expires_at"]) <= now:
            _, won = await self._claim_transition(f"turn-break:{turn_id}:{held['holder']}", {})
            if won:
                await self._delete_turn(turn_id, str(held["holder"]))
        return False

    async def end_turns(self, keys: Iterable[str], holder: str, unexpired: bool) -> None:
        """Gives the turns on blocking keys back. ``unexpired``: the holder knows its turns have
        not expired, so no one can have broken and retaken them (a turn changes hands only after
        its expiry), and they are deleted by ``_id`` at once; otherwise each is read first and
        deleted only if it is still ``holder``'s."""
        turn_ids = [stored_key(self._crypt, key) for key in keys]
        if unexpired:
            await asyncio.gather(*(self._registration_turns.delete_one({"_id": i}) for i in turn_ids))
        else:
            await asyncio.gather(*(self._delete_turn(i, holder) for i in turn_ids))

    async def _delete_turn(self, turn_id: str, holder: str) -> None:
        """Deletes a turn held by ``holder``; nothing if another holds it. Read, then delete by
        ``_id`` (the one filter this repository uses): a turn changes hands only by being broken
        after its expiry, so the delete can meet another's turn only if ``holder``'s expired and
        was broken and retaken between the read and the delete."""
        held = await self._get(REGISTRATION_TURNS, turn_id)
        if held is not None and held["holder"] == holder:
            await self._registration_turns.delete_one({"_id": turn_id})

    async def _claim_transition(self, transition_id: str, change: Document) -> tuple[Document, bool]:
        """Claims a state change once (first writer wins); returns the winning change and whether
        it is this call's."""
        stored, inserted = await insert_or_get(self._transitions, {"_id": transition_id, "change": change})
        return stored["change"], inserted

    async def _resolve(self, person_id: str, resolution: PersonStatus, owner_id: str = "") -> Document:
        """Resolves a provisional person once: ACTIVE, or SUPERSEDED by ``owner_id``. Applying the
        winning resolution again (a retry, a rival) writes the same values."""
        change, _ = await self._claim_transition(
            f"resolve:{person_id}", {"resolution": resolution.value, "superseded_by": owner_id}
        )
        await self._update(PERSONS, person_id, {"$set": change})
        return change

    async def activate(self, person_id: str) -> None:
        document = await self._get(PERSONS, person_id)
        if document is not None and _status(document) is PersonStatus.PROVISIONAL:
            await self._resolve(person_id, PersonStatus.ACTIVE)

    async def supersede(self, person_id: str, owner_id: str) -> bool:
        """Marks a provisional person as resolved to another; False if it was resolved otherwise."""
        change = await self._resolve(person_id, PersonStatus.SUPERSEDED, owner_id)
        return change == {"resolution": PersonStatus.SUPERSEDED.value, "superseded_by": owner_id}

    async def _transition(
        self, person_id: str, allowed: Callable[[Person], bool], change: Document, origin: str
    ) -> bool:
        """Changes a person if ``allowed`` holds for its current state: the change claims the
        person's next revision (``<person>:r<n>``), so of two concurrent changes one wins and the
        other gets False. ``origin`` (the request) makes a retry after a crash apply its own claim.
        A claim whose writer stopped before applying it is applied by the next writer who meets
        it (that writer gets False and its caller retries or reports a conflict)."""
        document = await self._get(PERSONS, person_id)
        if document is None or not allowed(_person(self._crypt, document)):
            return False
        revision = int(document.get("revision", 0)) + 1
        stored, inserted = await insert_or_get(
            self._transitions,
            {"_id": f"{person_id}:r{revision}", "change": {**change, "revision": revision}, "origin": origin},
        )
        if inserted or stored["origin"] == origin:
            await self._update(PERSONS, person_id, {"$set": stored["change"]})
            return True
        current = await self._get(PERSONS, person_id)
        if current is not None and int(current.get("revision", 0)) < revision:
            await self._update(PERSONS, person_id, {"$set": stored["change"]})
        return False

    async def merge(self, survivor_id: str, merged_id: str, origin: str) -> bool:
        """Marks an active person merged into the survivor; False if it was not active."""
        merged = await self._transition(
            merged_id,
            lambda p: p.status is PersonStatus.ACTIVE,
            {"status": PersonStatus.MERGED.value, "merged_into": survivor_id},
            origin,
        )
        if merged:
            await self._update(PERSONS, survivor_id, {"$addToSet": {"merged_person_ids": merged_id}})
        return merged

    async def unmerge(self, merged_id: str, survivor_id: str, origin: str) -> bool:
        restored = await self._transition(
            merged_id,
            lambda p: p.status is PersonStatus.MERGED and p.merged_into == survivor_id,
            {"status": PersonStatus.ACTIVE.value, "merged_into": ""},
            origin,
        )
        await self._update(PERSONS, survivor_id, {"$pull": {"merged_person_ids": merged_id}})
        return restored

    async def update_demographics(self, person: Person, expected_version: int, origin: str) -> bool:
        """Replaces the demographics if the stored version is ``expected_version``; False if not."""
        return await self._transition(
            person.person_id,
            lambda p: p.version == expected_version and p.status is PersonStatus.ACTIVE,
            {
                "full_name": person.full_name,
                "birth_date": person.birth_date.isoformat(),
                "sex": person.sex.value,
                "phone": self._crypt.encrypt("identity.phone", person.phone),
                "province_code": person.province_code,
                "claim_profile": _claim_profile_text(self._crypt, person.claim_profile),
                "version": expected_version + 1,
            },
            origin,
        )

    async def reject_pair(self, person_id: str, other_id: str) -> None:
        await self._update(PERSONS, person_id, {"$addToSet": {"rejected_person_ids": other_id}})
        await self._update(PERSONS, other_id, {"$addToSet": {"rejected_person_ids": person_id}})

    # --- facility records and blocks ----------------------------------------------------------------

    async def insert_or_get_record(self, record: FacilityRecord) -> tuple[FacilityRecord, bool]:
        """Writes a finished record once; the stored one if it exists, and whether this call wrote it."""
        stored, inserted = await insert_or_get(self._records, _record_document(self._crypt, record))
        return _record(self._crypt, stored), inserted

    async def update_record_demographics(
        self,
        record_id: str,
        demographics: RecordDemographics,
        expected_version: int,
        origin: str,
        plan: Document,
    ) -> Document | None:
        """Replaces a facility record's demographics with ``demographics`` (at version
        ``expected_version`` + 1) if the stored ones are at ``expected_version``; None if not. As
        ``_transition``: the change claims its version (``record:<id>:v<n>``), so of two concurrent
        updates one wins; ``origin`` (the request) lets a retry after a crash apply its own claim.
        ``plan``: what the caller decided to do next, kept with the claim; returns the plan of the
        claim applied (a retry gets the first attempt's, and does what it decided)."""
        document = await self._get(RECORDS, record_id)
        if document is None:
            return None
        current = int(document.get("demographics", {}).get("version", 1))
        claim_id = f"record:{record_id}:v{expected_version + 1}"
        if current != expected_version:
            claimed = await self._get(TRANSITIONS, claim_id)
            if claimed is None or claimed["origin"] != origin:
                return None
            if current < expected_version + 1:
                await self._update(RECORDS, record_id, {"$set": {"demographics": claimed["change"]}})
            return dict(claimed["plan"])
        change = _demographics_document(self._crypt, replace(demographics, version=expected_version + 1))
        stored, inserted = await insert_or_get(
            self._transitions, {"_id": claim_id, "change": change, "origin": origin, "plan": plan}
        )
        if inserted or stored["origin"] == origin:
            await self._update(RECORDS, record_id, {"$set": {"demographics": stored["change"]}})
            return dict(stored["plan"])
        # Another update won; it is applied here too in case its writer stopped before applying it.
        latest = await self._get(RECORDS, record_id)
        if (
            latest is not None
            and int(latest.get("demographics", {}).get("version", 1)) < expected_version + 1
        ):
            await self._update(RECORDS, record_id, {"$set": {"demographics": stored["change"]}})
        return None

    async def get_record(self, record_id: str) -> FacilityRecord | None:
        document = await self._get(RECORDS, record_id)
        return _record(self._crypt, document) if document else None

    async def records(self, record_ids: Iterable[str]) -> list[FacilityRecord]:
        return [_record(self._crypt, d) for d in await self._get_many(RECORDS, record_ids)]

    async def file_in_blocks(self, keys: Iterable[str], match: MatchRecord) -> None:
        """Files a record under its blocking keys, with what the matcher compares of it: retrieval
        then scores a block's members from the block alone and reads only the records worth
        proposing, however large blocks grow (a record's demographics as entered never change)."""
        member = _block_member(self._crypt, match)
        await asyncio.gather(
            *(
                self._upsert(BLOCKS, stored_key(self._crypt, key), {"$push": {"members": member}})
                for key in keys
            )
        )

    async def blocks(self, keys: Iterable[str]) -> dict[str, list[MatchRecord]]:
        """The records filed under each key (in the order filed); keys without records are absent."""
        by_stored_key = {stored_key(self._crypt, key): key for key in keys}
        return {
            by_stored_key[block["_id"]]: [
                _match(self._crypt, member["record_id"], member) for member in block.get("members", ())
            ]
            for block in await self._get_many(BLOCKS, by_stored_key)
        }

    # --- name frequencies ---------------------------------------------------------------------------

    async def count_names(self, names: NameParts) -> None:
        increments = {"total": 1}
        for kind, folded in zip(
            NAME_KINDS, (names.folded_family, names.folded_middle, names.folded_given), strict=True
        ):
            if folded:  # a one-word name has no middle (and no given) part
                increments[f"{kind}.{name_count_key(folded)}"] = 1
        await self._upsert(NAME_COUNTS, NAME_COUNTS_ID, {"$inc": increments})

    async def name_frequencies(self) -> NameFrequencies:
        frequencies = NameFrequencies()
        document = await self._get(NAME_COUNTS, NAME_COUNTS_ID) or {}
        for kind in NAME_KINDS:
            counts = document.get(kind, {})
            getattr(frequencies, kind).update({name_of_count_key(k): int(n) for k, n in counts.items()})
        frequencies.total = int(document.get("total", 0))
        return frequencies

    # --- review tasks -------------------------------------------------------------------------------

    async def next_review_sequence(self) -> int:
        return await next_sequence(self._db, REVIEW_SEQUENCE)

    async def last_review_sequence(self) -> int:
        return await last_sequence(self._db, REVIEW_SEQUENCE)

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
                "kind": task.kind.value,
                "proposed": {
                    "full_name": task.proposed.full_name,
                    "birth_date": task.proposed.birth_date.isoformat(),
                    "sex": task.proposed.sex.value,
                }
                if task.proposed
                else None,
                "facility_code": task.facility_code,
            },
        )
        if inserted and task.open:
            await self._upsert(COUNTERS, OPEN_REVIEW_TASKS, {"$inc": {"value": 1}})

    async def get_task(self, task_id: str) -> ReviewTask | None:
        document = await self._get(REVIEW_TASKS, task_id)
        return _task(document) if document else None

    async def tasks(self, task_ids: Iterable[str]) -> list[ReviewTask]:
        return [_task(d) for d in await self._get_many(REVIEW_TASKS, task_ids)]

    async def open_task_count(self) -> int:
        counter = await self._get(COUNTERS, OPEN_REVIEW_TASKS)
        return int(counter["value"]) if counter else 0

    async def close_task(self, task_id: str, resolution: str) -> bool:
        """Closes a task once; False if another resolution closed it first."""
        change, closed = await self._claim_transition(
            f"close:{task_id}", {"open": False, "resolution": resolution}
        )
        await self._update(REVIEW_TASKS, task_id, {"$set": change})
        if closed:
            await self._upsert(COUNTERS, OPEN_REVIEW_TASKS, {"$inc": {"value": -1}})
        return closed

    # --- link log -----------------------------------------------------------------------------------

    async def append_event(self, event: LinkEvent, attach_record: bool = False) -> None:
        """Writes the event once (its id is derived from the request) and lists it on the person,
        with its record among the person's records if ``attach_record``."""
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
        added: Document = {"event_ids": event.event_id}
        if attach_record:
            added["record_ids"] = event.record_id
        await self._update(PERSONS, event.person_id, {"$addToSet": added})

    async def events(self, event_ids: Iterable[str]) -> list[LinkEvent]:
        return [_event(d) for d in await self._get_many(EVENTS, event_ids)]

    async def get_event(self, event_id: str) -> LinkEvent | None:
        document = await self._get(EVENTS, event_id)
        return _event(document) if document else None

    # --- bulk loading (migrations, benches) -------------------------------------------------------

    async def bulk_load(self, entries: Iterable[tuple[Person, FacilityRecord]]) -> None:
        """Writes active persons with their finished records, and their blocks, in batches, into an
        empty index: for loading an existing population, not for traffic."""
        persons: list[Document] = []
        records: list[Document] = []
        members: dict[str, list[Document]] = {}
        frequencies = NameFrequencies()
        for person, record in entries:
            persons.append(_person_document(self._crypt, person))
            records.append(_record_document(self._crypt, record))
            frequencies.add(record.match.names)
            member = _block_member(self._crypt, record.match)
            for key in blocking_keys(record.match):
                members.setdefault(stored_key(self._crypt, key), []).append(member)
        blocks = [{"_id": key, "members": filed} for key, filed in members.items()]
        for collection, documents in ((PERSONS, persons), (RECORDS, records), (BLOCKS, blocks)):
            for start in range(0, len(documents), 5_000):
                await self._db[collection].insert_many(documents[start : start + 5_000], ordered=False)
        counts: Document = {
            kind: {name_count_key(n): c for n, c in getattr(frequencies, kind).items() if n}
            for kind in NAME_KINDS
        }
        await self._upsert(NAME_COUNTS, NAME_COUNTS_ID, {"$set": {**counts, "total": frequencies.total}})


def _patient_change(document: Document) -> PatientChange:
    sequence = int(document["_id"])
    if document.get("tombstone"):
        return PatientChange(sequence, document["committed_at"], tombstone=True)
    return PatientChange(
        sequence=sequence,
        committed_at=document["committed_at"],
        kind=PatientChangeKind(document["kind"]),
        person_id=document["person_id"],
        other_person_id=document.get("other_person_id", ""),
        key=document["key"],
    )


def _change_fields(kind: PatientChangeKind, person_id: str, key: str, other_person_id: str) -> Document:
    return {"key": key, "kind": kind.value, "person_id": person_id, "other_person_id": other_person_id}


class PatientChangeRepository:
    """The patient change feed: ids and kinds only (the persons' data stays in ``persons``)."""

    def __init__(self, db: Database) -> None:
        self._feed = ChangeFeed(
            db,
            PATIENT_CHANGES,
            PATIENT_CHANGE_COUNTER,
            lambda sequence: {"key": f"tombstone:{sequence}"},
            position_id=str,
            lookups_only=True,
        )

    async def append(
        self, kind: PatientChangeKind, person_id: str, key: str, other_person_id: str = ""
    ) -> int | None:
        """Records a change once per ``key``; returns its position (None: a repeat, in the feed already)."""
        return await self._feed.append(_change_fields(kind, person_id, key, other_person_id))

    async def reserve(self) -> int:
        """Allocates the next position; until ``write`` fills it, it is a hole in the feed."""
        return await self._feed.reserve()

    async def write(
        self, sequence: int, kind: PatientChangeKind, person_id: str, key: str, other_person_id: str = ""
    ) -> bool:
        """Fills a reserved position; False if a tombstone closed it first (reserve another). A
        change already in the feed counts as written."""
        filled = await self._feed.fill(sequence, _change_fields(kind, person_id, key, other_person_id))
        return filled is not Filled.TAKEN

    async def next_run(self, after: int, limit: int, settle: timedelta) -> tuple[list[PatientChange], int]:
        """The next run of changes without holes after ``after`` and the cursor to pass next."""
        return await self._feed.next_run(after, limit, settle, _patient_change)
