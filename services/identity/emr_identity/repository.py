"""MongoDB storage of persons and of the identifier claims that keep CCCDs and MRNs unique."""

from __future__ import annotations

from datetime import date
from typing import Any

from pymongo.errors import DuplicateKeyError

from emr_identity.domain import Identifier, IdentifierSystem, Person, PersonStatus, Sex
from emr_runtime.db import Database, IndexSpec, insert_or_get

PERSONS = "persons"
CLAIMS = "identifier_claims"

INDEXES = (IndexSpec(CLAIMS, (("person_id", 1),), "claims_by_person"),)


def _to_document(person: Person) -> dict[str, Any]:
    return {
        "_id": person.person_id,
        "identifiers": [
            {"system": i.system.value, "value": i.value, "facility_code": i.facility_code}
            for i in person.identifiers
        ],
        "full_name": person.full_name,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "registering_facility_code": person.registering_facility_code,
        "created_at": person.created_at,
        "status": person.status.value,
        "request_fingerprint": person.request_fingerprint,
        "superseded_by": person.superseded_by,
        "claim_keys": list(person.claim_keys),
    }


def _from_document(document: dict[str, Any]) -> Person:
    return Person(
        person_id=document["_id"],
        identifiers=tuple(
            Identifier(IdentifierSystem(i["system"]), i["value"], i.get("facility_code", ""))
            for i in document["identifiers"]
        ),
        full_name=document["full_name"],
        birth_date=date.fromisoformat(document["birth_date"]),
        sex=Sex(document["sex"]),
        registering_facility_code=document["registering_facility_code"],
        created_at=document["created_at"],
        status=PersonStatus(document["status"]),
        request_fingerprint=document["request_fingerprint"],
        superseded_by=document.get("superseded_by", ""),
        claim_keys=tuple(document.get("claim_keys", ())),
    )


class PersonRepository:
    def __init__(self, db: Database) -> None:
        self._persons = db[PERSONS]
        self._claims = db[CLAIMS]

    async def insert_or_get(self, person: Person) -> Person:
        """Inserts the person; if one with its id exists already (a repeated request), returns that."""
        stored, _ = await insert_or_get(self._persons, _to_document(person))
        return _from_document(stored)

    async def get(self, person_id: str) -> Person | None:
        document = await self._persons.find_one({"_id": person_id})
        return _from_document(document) if document else None

    async def claim(self, claim_key: str, person_id: str) -> str:
        """Claims a unique identifier for a person; returns the id of the person that owns it."""
        try:
            await self._claims.insert_one({"_id": claim_key, "person_id": person_id})
            return person_id
        except DuplicateKeyError:
            owner = await self._claims.find_one({"_id": claim_key})
            assert owner is not None  # claims are never deleted once another person owns them
            return str(owner["person_id"])

    async def release_claims(self, person_id: str) -> None:
        await self._claims.delete_many({"person_id": person_id})

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
