"""MongoDB storage of sharing grants, their revocations, emergency accesses and their reviews.

Like emr_identity.repository, every read names one document by ``{"_id": value}`` (the one filter
FerretDB 1.x serves from an index) and nothing is ever read, modified and written back:

- A grant, an emergency access: inserted once under an id derived from the request_id.
- A revocation, a review: a document keyed by the grant's (declaration's) id; the unique ``_id``
  lets the first writer win (the compare-and-set), and nothing else changes.
- A patient's grants and emergency accesses are found through the patient's access entries:
  ``<person id>:1``, ``<person id>:2`` ... in ``patient_access_entries``, one per grant or
  declaration, holding what the access model needs of it (GrantTerms, EmergencyTerms: fixed once
  recorded). An entry is inserted at the first free number (a concurrent writer that took the number
  makes the other try the next), so the numbers have no holes and a reader reads them in small
  parallel batches until the first missing one. A patient has a handful of grants over the years;
  CheckAccess reads one batch for most patients. A retry that finds its entry already listed adds
  none; two racing twins of one request may both add one, which readers collapse.
- Declarations are listed for review in declaration order through a ledger numbered by
  ``next_sequence``: ``<n>`` -> declaration id, written before the declaration; a ledger entry
  whose declaration was never written (a crash), or that a racing twin's declaration does not
  carry, is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pymongo.errors import DuplicateKeyError

from emr_identity.sharing import (
    ConsentEvidence,
    EmergencyAccess,
    EmergencyReason,
    EmergencyTerms,
    GrantKind,
    GrantTerms,
    Purpose,
    Review,
    ReviewOutcome,
    Revocation,
    SharingGrant,
)
from emr_runtime.db import (
    SEQUENCE_CLAIMS,
    Database,
    Document,
    create_collections,
    insert_or_get,
    last_sequence,
    next_sequence,
)
from emr_runtime.fieldcrypt import FieldCrypt

GRANTS = "sharing_grants"
REVOCATIONS = "sharing_revocations"
ACCESS_ENTRIES = "patient_access_entries"
EMERGENCY_ACCESSES = "emergency_accesses"
EMERGENCY_LEDGER = "emergency_access_ledger"
EMERGENCY_REVIEWS = "emergency_access_reviews"
COLLECTIONS = (
    GRANTS,
    REVOCATIONS,
    ACCESS_ENTRIES,
    EMERGENCY_ACCESSES,
    EMERGENCY_LEDGER,
    EMERGENCY_REVIEWS,
    "counters",
    SEQUENCE_CLAIMS,
)
EMERGENCY_SEQUENCE = "identity_emergency_accesses"
# Access entries read at once: one round trip for nearly every patient.
ENTRY_BATCH = 4
# Kinds of encrypted fields (the associated data: a value copied into another field does not decrypt).
EVIDENCE_REFERENCE = "identity.sharing.evidence_reference"
JUSTIFICATION = "identity.emergency.justification"
REVIEW_NOTE = "identity.emergency.review_note"


def _grant_terms_document(terms: GrantTerms) -> Document:
    return {
        "grant_id": terms.grant_id,
        "patient_id": terms.patient_id,
        "kind": terms.kind.value,
        "grantee_facility_code": terms.grantee_facility_code,
        "source_facility_code": terms.source_facility_code,
        "purpose": terms.purpose.value,
        "start": terms.start,
        "end": terms.end,
        "categories": sorted(terms.categories),
    }


def _grant_terms(document: Document) -> GrantTerms:
    return GrantTerms(
        grant_id=document["grant_id"],
        patient_id=document["patient_id"],
        kind=GrantKind(document["kind"]),
        grantee_facility_code=document["grantee_facility_code"],
        source_facility_code=document["source_facility_code"],
        purpose=Purpose(document["purpose"]),
        start=document["start"],
        end=document["end"],
        # Grants recorded before categories existed open none.
        categories=frozenset(document.get("categories") or ()),
    )


def _emergency_terms_document(terms: EmergencyTerms) -> Document:
    return {
        "emergency_access_id": terms.emergency_access_id,
        "patient_id": terms.patient_id,
        "facility_code": terms.facility_code,
        "reason": terms.reason.value,
        "start": terms.start,
        "end": terms.end,
    }


def _emergency_terms(document: Document) -> EmergencyTerms:
    return EmergencyTerms(
        emergency_access_id=document["emergency_access_id"],
        patient_id=document["patient_id"],
        facility_code=document["facility_code"],
        reason=EmergencyReason(document["reason"]),
        start=document["start"],
        end=document["end"],
    )


def _revocation(document: Document) -> Revocation:
    return Revocation(
        grant_id=document["_id"],
        revoked_at=document["revoked_at"],
        revoked_by=document["revoked_by"],
        facility_code=document["facility_code"],
        request_id=document["request_id"],
        request_fingerprint=document["request_fingerprint"],
    )


class SharingRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._db = db
        self._crypt = crypt

    async def create_collections(self) -> None:
        await create_collections(self._db, COLLECTIONS)

    async def _get(self, collection: str, document_id: str) -> Document | None:
        """The one read primitive: a lookup by ``_id``."""
        return await self._db[collection].find_one({"_id": document_id})

    async def _get_many(self, collection: str, document_ids: Iterable[str]) -> list[Document]:
        found = await asyncio.gather(*(self._get(collection, i) for i in document_ids))
        return [d for d in found if d is not None]

    # --- grants -------------------------------------------------------------------------------------

    def _grant_document(self, grant: SharingGrant) -> Document:
        return {
            "_id": grant.terms.grant_id,
            **_grant_terms_document(grant.terms),
            "evidence": grant.evidence.value if grant.evidence else "",
            "evidence_reference": self._crypt.encrypt(EVIDENCE_REFERENCE, grant.evidence_reference),
            "recorded_by_facility_code": grant.recorded_by_facility_code,
            "recorded_by": grant.recorded_by,
            "request_fingerprint": grant.request_fingerprint,
        }

    def _grant(self, document: Document, revocation: Document | None) -> SharingGrant:
        evidence = document.get("evidence", "")
        return SharingGrant(
            terms=_grant_terms(document),
            evidence=ConsentEvidence(evidence) if evidence else None,
            evidence_reference=self._crypt.decrypt(EVIDENCE_REFERENCE, document["evidence_reference"]),
            recorded_by_facility_code=document["recorded_by_facility_code"],
            recorded_by=document["recorded_by"],
            request_fingerprint=document["request_fingerprint"],
            revocation=_revocation(revocation) if revocation else None,
        )

    async def insert_or_get_grant(self, grant: SharingGrant) -> tuple[SharingGrant, bool]:
        """Writes the grant once; the stored one (with its revocation, if any) and whether this call
        wrote it."""
        stored, inserted = await insert_or_get(self._db[GRANTS], self._grant_document(grant))
        revocation = None if inserted else await self._get(REVOCATIONS, grant.terms.grant_id)
        return self._grant(stored, revocation), inserted

    async def get_grant(self, grant_id: str) -> SharingGrant | None:
        document, revocation = await asyncio.gather(
            self._get(GRANTS, grant_id), self._get(REVOCATIONS, grant_id)
        )
        return self._grant(document, revocation) if document else None

    async def grants(self, grant_ids: Iterable[str]) -> list[SharingGrant]:
        found = await asyncio.gather(*(self.get_grant(grant_id) for grant_id in grant_ids))
        return [grant for grant in found if grant is not None]

    async def insert_or_get_revocation(self, revocation: Revocation) -> tuple[Revocation, bool]:
        """Revokes a grant once: the first revocation stays; returns it and whether it is this call's."""
        stored, inserted = await insert_or_get(
            self._db[REVOCATIONS],
            {
                "_id": revocation.grant_id,
                "revoked_at": revocation.revoked_at,
                "revoked_by": revocation.revoked_by,
                "facility_code": revocation.facility_code,
                "request_id": revocation.request_id,
                "request_fingerprint": revocation.request_fingerprint,
            },
        )
        return _revocation(stored), inserted

    async def revoked(self, grant_ids: Iterable[str]) -> set[str]:
        """Which of these grants were revoked."""
        return {document["_id"] for document in await self._get_many(REVOCATIONS, grant_ids)}

    # --- a patient's access entries -----------------------------------------------------------------

    async def _entry_documents(self, person_id: str) -> list[Document]:
        """The person's access entries in the order added: batches until the first free number."""
        found: list[Document] = []
        while True:
            start = len(found) + 1
            batch = await asyncio.gather(
                *(self._get(ACCESS_ENTRIES, f"{person_id}:{n}") for n in range(start, start + ENTRY_BATCH))
            )
            for document in batch:
                if document is None:
                    return found
                found.append(document)

    async def add_entry(self, person_id: str, terms: GrantTerms | EmergencyTerms) -> None:
        """Lists a grant or declaration among the person's access entries, once."""
        if isinstance(terms, GrantTerms):
            entry: Document = {"entry": "grant", **_grant_terms_document(terms)}
            reference = terms.grant_id
        else:
            entry = {"entry": "emergency", **_emergency_terms_document(terms)}
            reference = terms.emergency_access_id
        entry["reference"] = reference
        listed = await self._entry_documents(person_id)
        while True:
            if any(document["reference"] == reference for document in listed):
                return
            number = len(listed) + 1
            try:
                await self._db[ACCESS_ENTRIES].insert_one(
                    {"_id": f"{person_id}:{number}", "person_id": person_id, **entry}
                )
                return
            except DuplicateKeyError:
                # A concurrent writer took the number: read on from it.
                taken = await self._get(ACCESS_ENTRIES, f"{person_id}:{number}")
                if taken is not None:
                    listed.append(taken)

    async def entries(self, person_ids: Iterable[str]) -> tuple[list[GrantTerms], list[EmergencyTerms]]:
        """The grants and emergency accesses listed for these persons (each once)."""
        per_person = await asyncio.gather(*(self._entry_documents(p) for p in person_ids))
        grants: dict[str, GrantTerms] = {}
        emergencies: dict[str, EmergencyTerms] = {}
        for documents in per_person:
            for document in documents:
                if document["entry"] == "grant":
                    grants.setdefault(document["reference"], _grant_terms(document))
                elif document["entry"] == "emergency":
                    emergencies.setdefault(document["reference"], _emergency_terms(document))
        return list(grants.values()), list(emergencies.values())

    # --- emergency accesses -------------------------------------------------------------------------

    async def next_emergency_sequence(self) -> int:
        return await next_sequence(self._db, EMERGENCY_SEQUENCE)

    async def last_emergency_sequence(self) -> int:
        return await last_sequence(self._db, EMERGENCY_SEQUENCE)

    async def add_to_ledger(self, sequence: int, emergency_access_id: str) -> None:
        await insert_or_get(
            self._db[EMERGENCY_LEDGER], {"_id": str(sequence), "emergency_access_id": emergency_access_id}
        )

    def _emergency_document(self, emergency: EmergencyAccess) -> Document:
        return {
            "_id": emergency.terms.emergency_access_id,
            **_emergency_terms_document(emergency.terms),
            "declared_by": emergency.declared_by,
            "justification": self._crypt.encrypt(JUSTIFICATION, emergency.justification),
            "request_fingerprint": emergency.request_fingerprint,
            "sequence": emergency.sequence,
        }

    def _emergency(self, document: Document, review: Document | None) -> EmergencyAccess:
        return EmergencyAccess(
            terms=_emergency_terms(document),
            declared_by=document["declared_by"],
            justification=self._crypt.decrypt(JUSTIFICATION, document["justification"]),
            request_fingerprint=document["request_fingerprint"],
            sequence=int(document["sequence"]),
            review=self._review(review) if review else None,
        )

    def _review(self, document: Document) -> Review:
        return Review(
            outcome=ReviewOutcome(document["outcome"]),
            note=self._crypt.decrypt(REVIEW_NOTE, document["note"]),
            reviewed_by=document["reviewed_by"],
            reviewed_at=document["reviewed_at"],
            request_id=document["request_id"],
            request_fingerprint=document["request_fingerprint"],
        )

    async def insert_or_get_emergency(self, emergency: EmergencyAccess) -> tuple[EmergencyAccess, bool]:
        stored, inserted = await insert_or_get(
            self._db[EMERGENCY_ACCESSES], self._emergency_document(emergency)
        )
        review = None if inserted else await self._get(EMERGENCY_REVIEWS, emergency.terms.emergency_access_id)
        return self._emergency(stored, review), inserted

    async def get_emergency(self, emergency_access_id: str) -> EmergencyAccess | None:
        document, review = await asyncio.gather(
            self._get(EMERGENCY_ACCESSES, emergency_access_id),
            self._get(EMERGENCY_REVIEWS, emergency_access_id),
        )
        return self._emergency(document, review) if document else None

    async def emergencies_at(self, sequences: Iterable[int]) -> list[EmergencyAccess]:
        """The declarations at these ledger positions, in position order (positions without one
        are left out)."""
        ledger = await self._get_many(EMERGENCY_LEDGER, (str(s) for s in sequences))
        found = await asyncio.gather(*(self.get_emergency(entry["emergency_access_id"]) for entry in ledger))
        listed: list[tuple[int, EmergencyAccess]] = [
            (int(entry["_id"]), emergency)
            for entry, emergency in zip(ledger, found, strict=True)
            if emergency is not None and emergency.sequence == int(entry["_id"])
        ]
        return [emergency for _, emergency in sorted(listed, key=lambda pair: pair[0])]

    async def insert_or_get_review(self, emergency_access_id: str, review: Review) -> tuple[Review, bool]:
        """Reviews a declaration once: the first review stays; returns it and whether it is this call's."""
        document: dict[str, Any] = {
            "_id": emergency_access_id,
            "outcome": review.outcome.value,
            "note": self._crypt.encrypt(REVIEW_NOTE, review.note),
            "reviewed_by": review.reviewed_by,
            "reviewed_at": review.reviewed_at,
            "request_id": review.request_id,
            "request_fingerprint": review.request_fingerprint,
        }
        stored, inserted = await insert_or_get(self._db[EMERGENCY_REVIEWS], document)
        return self._review(stored), inserted
