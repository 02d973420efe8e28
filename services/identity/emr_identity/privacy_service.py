"""Use cases of data-subject requests: file (carrying out a withdrawal at once and enforcing a
restriction or objection through the access model), read, list, move a request on; and the count of
overdue requests per kind for the metric and alert (docs/privacy-requests.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from prometheus_client import Gauge

from emr_identity.privacy import (
    SHARING_STOPPERS,
    DataSubjectRequest,
    FilingInput,
    RequestKind,
    RequestStatus,
    StatusInput,
    completion_event,
    new_request,
    next_event,
    overdue_counts,
    sharing_stopped,
    transition_problem,
    validate_filing,
    validate_status_change,
)
from emr_identity.privacy_repository import PrivacyRepository
from emr_identity.repository import PersonRepository
from emr_identity.service import IdentityService
from emr_identity.sharing import PatientCircle, RevocationInput
from emr_identity.sharing_service import SharingService
from emr_runtime.caller import PATIENT_ROLE, Caller
from emr_runtime.clock import utc_now
from emr_runtime.errors import (
    ConflictError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from emr_runtime.idempotency import derive_id
from emr_runtime.paging import page_size, position_int
from emr_runtime.policy import AUDITOR
from emr_runtime.visibility import current_access

log = logging.getLogger("emr.identity.privacy")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# Ledger entries one list call looks at before it answers (a page may come back short, with a token).
MAX_LISTING_SCAN = 1000
OVERDUE_REFRESH_SECONDS = 60.0

# Labelled by kind only: never by patient or facility.
OVERDUE_REQUESTS = Gauge(
    "emr_identity_privacy_requests_overdue",
    "Data-subject requests open (received or in progress) past their legal due time, by kind.",
    ("kind",),
)
for _kind in RequestKind:
    OVERDUE_REQUESTS.labels(_kind.value).set(0)


def _invalid(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError([FieldViolation(field, description)])


@dataclass(frozen=True)
class RequestFilter:
    facility_code: str
    patient_id: str
    status: RequestStatus | None
    overdue_only: bool
    page_size: int
    page_token: str


class PrivacyService:
    def __init__(
        self,
        identity: IdentityService,
        persons: PersonRepository,
        sharing: SharingService,
        repository: PrivacyRepository,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._identity = identity
        self._persons = persons
        self._sharing = sharing
        self._requests = repository
        self._clock = clock

    async def _circle(self, patient_id: str) -> PatientCircle:
        try:
            view = await self._identity.get(patient_id)
        except (NotFoundError, InvalidArgumentError):
            raise NotFoundError("Patient", "patient_id", patient_id) from None
        records = await self._persons.records(view.record_ids)
        return PatientCircle(
            patient_id=view.person.person_id,
            person_ids=(view.person.person_id, *view.person.merged_person_ids),
            registering_facilities=frozenset(record.facility_code for record in records),
        )

    # --- filing -------------------------------------------------------------------------------------

    async def file(self, raw: FilingInput, caller: Caller) -> DataSubjectRequest:
        request = validate_filing(raw)
        circle = await self._filer_circle(request, caller)
        request_id = derive_id("data-subject-request", request.request_id)
        stored = await self._requests.get(request_id)
        if stored is None:
            if request.kind is RequestKind.WITHDRAWAL:
                await self._withdrawable_grant(request.sharing_grant_id, circle)
            await self._requests.add_to_ledger(request_id)
            candidate = new_request(request, request_id, circle.patient_id, caller.actor_id, self._clock())
            stored, _ = await self._requests.insert_or_get(candidate)
        if stored.request_fingerprint != request.fingerprint:
            raise ConflictError("request_id was already used for a different request", "request_id")
        # Again on a retry, in case the first attempt stopped in between.
        await self._requests.add_to_patient(stored.patient_id, stored.request_id)
        if stored.kind in SHARING_STOPPERS:
            self._sharing.forget_answers()
        if stored.kind is RequestKind.WITHDRAWAL and stored.status is RequestStatus.RECEIVED:
            stored = await self._withdraw(stored, caller)
        return stored

    async def _filer_circle(self, request: FilingInput, caller: Caller) -> PatientCircle:
        """The patient, once the filer is known to act for them: the patient's own token (the policy
        checked the id), a registrar of a facility that registered the patient, or a platform role."""
        if caller.role == PATIENT_ROLE:
            if request.facility_code:
                raise _invalid("facility_code", "empty for a patient's own token")
            return await self._circle(request.patient_id)
        platform = current_access().platform
        if not platform and request.facility_code != caller.facility_code:
            raise _invalid("facility_code", "required: the registrar's own facility")
        try:
            circle = await self._circle(request.patient_id)
        except NotFoundError:
            circle = None
        if circle is None or (
            request.facility_code and request.facility_code not in circle.registering_facilities
        ):
            raise PermissionDeniedError(
                "the filing facility did not register this patient (or there is no such patient): a "
                "registrar files a request for a patient their facility registered"
            )
        return circle

    async def _withdrawable_grant(self, grant_id: str, circle: PatientCircle) -> None:
        grant = await self._sharing.grant(grant_id)
        if grant is None or grant.terms.patient_id not in circle.person_ids:
            raise NotFoundError("SharingGrant", "sharing_grant_id", grant_id)

    async def _withdraw(self, request: DataSubjectRequest, caller: Caller) -> DataSubjectRequest:
        """Revokes the grant (the existing revocation, in the name of the facility that recorded it,
        which registered the patient) and completes the request."""
        grant = await self._sharing.grant(request.sharing_grant_id)
        assert grant is not None
        revocation_request_id = f"withdrawal:{request.request_id}"
        # Revoked before (by its facility): the withdrawal is done all the same.
        with contextlib.suppress(ConflictError):
            await self._sharing.revoke_grant(
                RevocationInput(
                    request_id=revocation_request_id,
                    grant_id=request.sharing_grant_id,
                    facility_code=grant.recorded_by_facility_code,
                    fingerprint=request.request_fingerprint,
                ),
                caller.actor_id,
            )
        event = completion_event(request, caller.actor_id, caller.facility_code, self._clock())
        await self._requests.insert_event(event)
        found = await self._requests.get(request.request_id)
        assert found is not None
        return found

    # --- reading ------------------------------------------------------------------------------------

    async def get(self, request_id: str, caller: Caller) -> DataSubjectRequest:
        request_id = request_id.strip()
        if not request_id:
            raise _invalid("data_subject_request_id", "required")
        found = await self._requests.get(request_id)
        if found is None or not self._may_see(found, caller):
            raise NotFoundError("DataSubjectRequest", "data_subject_request_id", request_id)
        return found

    def _may_see(self, request: DataSubjectRequest, caller: Caller) -> bool:
        if current_access().platform:
            return True
        return caller.facility_code in (request.filed_by_facility_code, request.handling_facility_code)

    async def list_requests(
        self, wanted: RequestFilter, caller: Caller
    ) -> tuple[list[DataSubjectRequest], str]:
        facility_code = wanted.facility_code.strip()
        if caller.role == PATIENT_ROLE:
            if facility_code:
                raise _invalid("facility_code", "empty for a patient's own token")
        elif not current_access().platform and facility_code != caller.facility_code:
            raise _invalid("facility_code", "required: the registrar's own facility")
        size = page_size(wanted.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        now = self._clock()

        def keep(request: DataSubjectRequest) -> bool:
            return (
                (not facility_code or request.handling_facility_code == facility_code)
                and (wanted.status is None or request.status is wanted.status)
                and (not wanted.overdue_only or request.overdue_at(now))
            )

        if wanted.patient_id.strip():
            circle = await self._circle(wanted.patient_id.strip())
            ids = await self._requests.patient_request_ids(circle.person_ids)
            found = [r for r in await self._requests.many(ids) if keep(r)]
            found.sort(key=lambda r: (r.filed_at, r.request_id), reverse=True)
            return found[:size], ""
        return await self._scan(keep, size, wanted.page_token)

    async def _scan(
        self, keep: Callable[[DataSubjectRequest], bool], size: int, token: str
    ) -> tuple[list[DataSubjectRequest], str]:
        """Newest first through the ledger, from the page token's position down."""
        position = self._identity.page_tokens.decode(token)
        last = await self._requests.last_ledger_sequence()
        sequence = position_int(position, "next", minimum=0) if position else last
        found: dict[str, DataSubjectRequest] = {}
        scanned = 0
        while sequence >= 1 and len(found) < size and scanned < MAX_LISTING_SCAN:
            batch = range(sequence, max(0, sequence - size), -1)
            ids = await self._requests.ledger_request_ids(batch)
            for request in await self._requests.many(ids):
                if keep(request):
                    found.setdefault(request.request_id, request)
            scanned += len(batch)
            sequence = batch[-1] - 1
        next_token = self._identity.page_tokens.encode({"next": sequence}) if sequence >= 1 else ""
        return list(found.values())[:size], next_token

    # --- status changes -----------------------------------------------------------------------------

    async def update_status(self, raw: StatusInput, caller: Caller) -> DataSubjectRequest:
        change = validate_status_change(raw)
        assert change.expected_status is not None and change.status is not None
        request = await self._requests.get(change.data_subject_request_id)
        if request is None or not self._may_answer(request, change, caller):
            raise NotFoundError(
                "DataSubjectRequest", "data_subject_request_id", change.data_subject_request_id
            )
        repeated = next((e for e in request.events if e.call_request_id == change.request_id), None)
        if repeated is not None:
            if repeated.call_fingerprint != change.fingerprint:
                raise ConflictError("request_id was already used for a different request", "request_id")
            return request
        problem = transition_problem(request.status, change.expected_status, change.status)
        if problem:
            raise ConflictError(problem, "expected_status")
        event = next_event(request, change, caller.actor_id, self._clock())
        _, inserted = await self._requests.insert_event(event)
        if not inserted:
            raise ConflictError("the request changed meanwhile: read it again", "expected_status")
        if request.kind in SHARING_STOPPERS:
            self._sharing.forget_answers()
        return replace(request, events=(*request.events, event))

    def _may_answer(self, request: DataSubjectRequest, change: StatusInput, caller: Caller) -> bool:
        """The handling facility's registrar; the data-protection officer (auditor) for requests the
        platform handles; an operator (admin) for any."""
        if not current_access().platform:
            return bool(caller.facility_code) and request.handling_facility_code == caller.facility_code
        if caller.role == AUDITOR:
            return not request.handling_facility_code
        return True

    # --- the access model and the metric ------------------------------------------------------------

    async def sharing_stopped(self, person_ids: tuple[str, ...]) -> bool:
        """Whether a restriction or objection of the patient (any of these persons) is in force."""
        ids = await self._requests.patient_request_ids(person_ids)
        if not ids:
            return False
        return sharing_stopped(await self._requests.many(ids))

    async def refresh_overdue(self) -> dict[RequestKind, int]:
        """Counts the overdue requests per kind into the gauge (every request in the ledger)."""
        last = await self._requests.last_ledger_sequence()
        requests: dict[str, DataSubjectRequest] = {}
        for start in range(1, last + 1, MAX_PAGE_SIZE):
            ids = await self._requests.ledger_request_ids(
                range(start, min(last, start + MAX_PAGE_SIZE - 1) + 1)
            )
            for request in await self._requests.many(ids):
                requests[request.request_id] = request
        counts = overdue_counts(requests.values(), self._clock())
        for kind, count in counts.items():
            OVERDUE_REQUESTS.labels(kind.value).set(count)
        return counts

    async def watch_overdue(self) -> None:
        """Background: keeps the overdue gauge current."""
        while True:
            try:
                await self.refresh_overdue()
            except Exception:  # a database hiccup must not end the loop
                log.exception("counting overdue data-subject requests failed")
            await asyncio.sleep(OVERDUE_REFRESH_SECONDS)
