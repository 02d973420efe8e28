"""MongoDB storage of data-subject requests. Like emr_identity.sharing_repository, every read names
one document by ``{"_id": value}`` and nothing is ever read, modified and written back:

- A request: inserted once under an id derived from the filing's request_id (``privacy_requests``);
  what it says is fixed. The correction details are encrypted (they may describe clinical data).
- Its status: insert-only events ``<request id>:1``, ``:2`` ... (``privacy_request_events``); event 1
  (RECEIVED) is written with the request. A status change inserts the next number: the unique
  ``_id`` makes it a compare-and-set (of two racing changes one wins, the other is told to re-read).
- A patient's requests: entries ``<person id>:1``, ``:2`` ... (``privacy_patient_requests``), first
  free number, as the sharing access entries; the access model reads them only when a grant would
  open another facility's data.
- Listing, newest first: a ledger numbered by ``next_sequence`` (``privacy_request_ledger``),
  written before the request; an entry whose request was never written (a crash) is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from pymongo.errors import DuplicateKeyError

from emr_identity.privacy import DataSubjectRequest, RequestKind, RequestStatus, StatusEvent, with_events
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

REQUESTS = "privacy_requests"
EVENTS = "privacy_request_events"
PATIENT_REQUESTS = "privacy_patient_requests"
LEDGER = "privacy_request_ledger"
COLLECTIONS = (REQUESTS, EVENTS, PATIENT_REQUESTS, LEDGER, "counters", SEQUENCE_CLAIMS)
LEDGER_SEQUENCE = "identity_privacy_requests"
# Entries (events) read at once: one round trip for nearly every patient (request).
BATCH = 4
DETAILS = "identity.privacy.details"


def _event_document(event: StatusEvent) -> Document:
    return {
        "_id": f"{event.request_id}:{event.number}",
        "request_id": event.request_id,
        "number": event.number,
        "status": event.status.value,
        "occurred_at": event.occurred_at,
        "actor_id": event.actor_id,
        "facility_code": event.facility_code,
        "reason": event.reason,
        "call_request_id": event.call_request_id,
        "call_fingerprint": event.call_fingerprint,
    }


def _event(document: Document) -> StatusEvent:
    return StatusEvent(
        request_id=document["request_id"],
        number=int(document["number"]),
        status=RequestStatus(document["status"]),
        occurred_at=document["occurred_at"],
        actor_id=document["actor_id"],
        facility_code=document["facility_code"],
        reason=document["reason"],
        call_request_id=document.get("call_request_id", ""),
        call_fingerprint=document.get("call_fingerprint", ""),
    )


class PrivacyRepository:
    def __init__(self, db: Database, crypt: FieldCrypt) -> None:
        self._db = db
        self._crypt = crypt

    async def create_collections(self) -> None:
        await create_collections(self._db, COLLECTIONS)

    async def _get(self, collection: str, document_id: str) -> Document | None:
        """The one read primitive: a lookup by ``_id``."""
        return await self._db[collection].find_one({"_id": document_id})

    async def _numbered(self, collection: str, prefix: str) -> list[Document]:
        """``<prefix>:1``, ``:2`` ... in order, in batches until the first missing number."""
        found: list[Document] = []
        while True:
            start = len(found) + 1
            batch = await asyncio.gather(
                *(self._get(collection, f"{prefix}:{n}") for n in range(start, start + BATCH))
            )
            for document in batch:
                if document is None:
                    return found
                found.append(document)

    def _request_document(self, request: DataSubjectRequest) -> Document:
        return {
            "_id": request.request_id,
            "kind": request.kind.value,
            "patient_id": request.patient_id,
            "filed_by": request.filed_by,
            "filed_by_facility_code": request.filed_by_facility_code,
            "handling_facility_code": request.handling_facility_code,
            "filed_at": request.filed_at,
            "due_at": request.due_at,
            "resource_reference": request.resource_reference,
            "details": self._crypt.encrypt(DETAILS, request.details) if request.details else "",
            "sharing_grant_id": request.sharing_grant_id,
            "request_fingerprint": request.request_fingerprint,
        }

    def _request(self, document: Document, events: Iterable[Document]) -> DataSubjectRequest:
        request = DataSubjectRequest(
            request_id=document["_id"],
            kind=RequestKind(document["kind"]),
            patient_id=document["patient_id"],
            filed_by=document["filed_by"],
            filed_by_facility_code=document["filed_by_facility_code"],
            handling_facility_code=document["handling_facility_code"],
            filed_at=document["filed_at"],
            due_at=document["due_at"],
            resource_reference=document["resource_reference"],
            details=self._crypt.decrypt(DETAILS, document["details"]) if document["details"] else "",
            sharing_grant_id=document["sharing_grant_id"],
            request_fingerprint=document["request_fingerprint"],
        )
        return with_events(request, [_event(e) for e in events])

    # --- requests -----------------------------------------------------------------------------------

    async def insert_or_get(self, request: DataSubjectRequest) -> tuple[DataSubjectRequest, bool]:
        """Writes a request and its first event once; a repeated filing gets the stored request."""
        stored, inserted = await insert_or_get(self._db[REQUESTS], self._request_document(request))
        # Again on a retry, in case the first attempt stopped in between.
        await insert_or_get(self._db[EVENTS], _event_document(request.events[0]))
        found = await self.get(str(stored["_id"]))
        assert found is not None
        return found, inserted

    async def get(self, request_id: str) -> DataSubjectRequest | None:
        document, events = await asyncio.gather(
            self._get(REQUESTS, request_id), self._numbered(EVENTS, request_id)
        )
        return None if document is None else self._request(document, events)

    async def many(self, request_ids: Iterable[str]) -> list[DataSubjectRequest]:
        found = await asyncio.gather(*(self.get(i) for i in request_ids))
        return [request for request in found if request is not None]

    async def insert_event(self, event: StatusEvent) -> tuple[StatusEvent, bool]:
        """The compare-and-set of a status change: inserted unless that number is taken (then the
        event that took it, and False)."""
        stored, inserted = await insert_or_get(self._db[EVENTS], _event_document(event))
        return _event(stored), inserted

    # --- a patient's requests -----------------------------------------------------------------------

    async def add_to_patient(self, person_id: str, request_id: str) -> None:
        """Lists a request among the person's, once."""
        listed = await self._numbered(PATIENT_REQUESTS, person_id)
        while True:
            if any(document["request_id"] == request_id for document in listed):
                return
            number = len(listed) + 1
            try:
                await self._db[PATIENT_REQUESTS].insert_one(
                    {"_id": f"{person_id}:{number}", "person_id": person_id, "request_id": request_id}
                )
                return
            except DuplicateKeyError:
                taken = await self._get(PATIENT_REQUESTS, f"{person_id}:{number}")
                if taken is not None:
                    listed.append(taken)

    async def patient_request_ids(self, person_ids: Iterable[str]) -> list[str]:
        per_person = await asyncio.gather(*(self._numbered(PATIENT_REQUESTS, p) for p in person_ids))
        return list(dict.fromkeys(str(d["request_id"]) for documents in per_person for d in documents))

    # --- the ledger ---------------------------------------------------------------------------------

    async def add_to_ledger(self, request_id: str) -> None:
        sequence = await next_sequence(self._db, LEDGER_SEQUENCE)
        await insert_or_get(self._db[LEDGER], {"_id": str(sequence), "request_id": request_id})

    async def last_ledger_sequence(self) -> int:
        return await last_sequence(self._db, LEDGER_SEQUENCE)

    async def ledger_request_ids(self, sequences: Iterable[int]) -> list[str]:
        """The request ids at these ledger numbers, in the order given (missing numbers skipped)."""
        found: list[Document | None] = await asyncio.gather(*(self._get(LEDGER, str(s)) for s in sequences))
        return [str(document["request_id"]) for document in found if document is not None]
