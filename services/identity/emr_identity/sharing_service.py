"""Use cases of sharing grants, referrals and emergency access, and identity's answer to the access
model's question (the VisibilitySource the access interceptor asks; CheckAccess gives records the
same answer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

from prometheus_client import Counter

from emr_identity.repository import PersonRepository
from emr_identity.service import IdentityService
from emr_identity.sharing import (
    EmergencyAccess,
    EmergencyInput,
    EmergencyReason,
    GrantInput,
    PatientCircle,
    ReferralInput,
    ReviewInput,
    Revocation,
    RevocationInput,
    SharingGrant,
    grants_in_force,
    new_emergency,
    new_grant,
    new_referral,
    new_review,
    validate_emergency,
    validate_grant,
    validate_referral,
    validate_review,
    validate_revocation,
    visibility_of,
)
from emr_identity.sharing_repository import SharingRepository
from emr_runtime.clock import utc_now
from emr_runtime.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Violations,
)
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import derive_id
from emr_runtime.paging import page_size, position_int
from emr_runtime.visibility import Visibility, current_access, purpose_of

log = logging.getLogger("emr.identity.sharing")

DEFAULT_PAGE_SIZE = 20
# How long an access answer that opens something is kept (see SharingService.visibility).
ACCESS_CACHE_SECONDS = 5.0
ACCESS_CACHE_SIZE = 10_000
MAX_PAGE_SIZE = 100
# Declarations a list call looks at before it answers (a page may come back short, with a token).
MAX_LISTING_SCAN = 1000
MAX_PURPOSE_LENGTH = 32

# Labelled by reason code only: never by patient, facility or doctor.
EMERGENCY_DECLARATIONS = Counter(
    "emr_identity_emergency_access_declarations_total",
    "Emergency accesses (break the glass) declared, by reason code.",
    ("reason",),
)
for _reason in EmergencyReason:
    EMERGENCY_DECLARATIONS.labels(_reason.code)


def _not_registered(what: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{what} did not register this patient (or there is no such patient): only a facility that "
        "registered the patient may do this"
    )


class SharingService:
    def __init__(
        self,
        identity: IdentityService,
        persons: PersonRepository,
        sharing: SharingRepository,
        emergency_duration: timedelta,
    ) -> None:
        self._identity = identity
        self._persons = persons
        self._sharing = sharing
        self._emergency_duration = emergency_duration
        # (patient, facility, purpose, export) -> (answer, kept until, monotonic)
        self._answers: dict[tuple[str, str, str, bool], tuple[Visibility, float]] = {}
        identity.links_changed.append(self.forget_answers)
        # Whether the patient (these persons) objected to sharing or restricted it: a data-subject
        # request in force (emr_identity.privacy_service); then no grant opens another facility's data.
        self.sharing_stopped: Callable[[tuple[str, ...]], Awaitable[bool]] | None = None

    async def _circle(self, patient_id: str, field: str = "patient_id") -> PatientCircle:
        """The patient as the access model sees it; NotFoundError naming ``field`` if unknown."""
        try:
            view = await self._identity.get(patient_id)
        except NotFoundError:
            raise NotFoundError("Patient", field, patient_id) from None
        records = await self._persons.records(view.record_ids)
        return PatientCircle(
            patient_id=view.person.person_id,
            person_ids=(view.person.person_id, *view.person.merged_person_ids),
            registering_facilities=frozenset(record.facility_code for record in records),
        )

    async def _circle_or_none(self, patient_id: str) -> PatientCircle | None:
        try:
            return await self._circle(patient_id)
        except (NotFoundError, InvalidArgumentError):
            return None

    async def _registered_circle(self, patient_id: str, facility_code: str, what: str) -> PatientCircle:
        circle = await self._circle_or_none(patient_id)
        if circle is None or facility_code not in circle.registering_facilities:
            raise _not_registered(what)
        return circle

    # --- grants and referrals -----------------------------------------------------------------------

    async def _record(self, grant: SharingGrant) -> SharingGrant:
        """Writes a grant once per request and lists it among the patient's access entries (again
        on a retry, in case the first attempt stopped in between)."""
        stored, _ = await self._sharing.insert_or_get_grant(grant)
        if stored.request_fingerprint != grant.request_fingerprint:
            raise ConflictError("request_id was already used for a different request", "request_id")
        await self._sharing.add_entry(stored.terms.patient_id, stored.terms)
        self.forget_answers()
        return stored

    async def record_grant(self, raw: GrantInput, actor_id: str) -> SharingGrant:
        """Records a patient's consent, at a facility that registered the patient."""
        now = utc_now()
        request = validate_grant(raw, now)
        circle = await self._registered_circle(
            request.patient_id, request.facility_code, "the recording facility"
        )
        grant_id = derive_id("sharing-grant", request.request_id)
        return await self._record(new_grant(request, grant_id, circle.patient_id, actor_id, now))

    async def record_referral(self, raw: ReferralInput, actor_id: str) -> SharingGrant:
        """Records a transfer: the receiving facility sees what the referring one holds."""
        now = utc_now()
        request = validate_referral(raw, now)
        circle = await self._registered_circle(
            request.patient_id, request.facility_code, "the referring facility"
        )
        grant_id = derive_id("referral", request.request_id)
        return await self._record(new_referral(request, grant_id, circle.patient_id, actor_id, now))

    async def revoke_grant(self, raw: RevocationInput, actor_id: str) -> SharingGrant:
        """Ends a grant from now on, once: the first revocation's insert wins."""
        request = validate_revocation(raw)
        grant = await self._sharing.get_grant(request.grant_id)
        if grant is None:
            raise NotFoundError("SharingGrant", "sharing_grant_id", request.grant_id)
        await self._registered_circle(grant.terms.patient_id, request.facility_code, "the recording facility")
        revocation, _ = await self._sharing.insert_or_get_revocation(
            Revocation(
                grant_id=grant.terms.grant_id,
                revoked_at=utc_now(),
                revoked_by=actor_id,
                facility_code=request.facility_code,
                request_id=request.request_id,
                request_fingerprint=request.fingerprint,
            )
        )
        self.forget_answers()
        if revocation.request_id != request.request_id:
            raise ConflictError("the sharing grant was already revoked", "sharing_grant_id")
        if revocation.request_fingerprint != request.fingerprint:
            raise ConflictError("request_id was already used for a different request", "request_id")
        return replace(grant, revocation=revocation)

    async def grant(self, grant_id: str) -> SharingGrant | None:
        """One grant or referral by id (with its revocation), None if unknown."""
        return await self._sharing.get_grant(grant_id)

    async def list_grants(self, patient_id: str) -> list[SharingGrant]:
        """The patient's grants and referrals (merged persons' included), newest first."""
        circle = await self._circle(patient_id)
        terms, _ = await self._sharing.entries(circle.person_ids)
        grants = await self._sharing.grants(t.grant_id for t in terms)
        return sorted(grants, key=lambda g: (g.terms.start, g.terms.grant_id), reverse=True)

    # --- emergency access ---------------------------------------------------------------------------

    async def declare_emergency(self, raw: EmergencyInput, actor_id: str) -> EmergencyAccess:
        """Breaks the glass for the patient at the doctor's facility, for a bounded time. The call's
        audit event carries the declaration's id and reason code, never its justification."""
        request = validate_emergency(raw)
        circle = await self._circle(request.patient_id)
        emergency_access_id = derive_id("emergency-access", request.request_id)
        declared = await self._sharing.get_emergency(emergency_access_id)
        if declared is None:
            # In the review ledger first: a declaration is never written without its place there.
            sequence = await self._sharing.next_emergency_sequence()
            await self._sharing.add_to_ledger(sequence, emergency_access_id)
            candidate = new_emergency(
                request,
                emergency_access_id,
                circle.patient_id,
                actor_id,
                utc_now(),
                self._emergency_duration,
                sequence,
            )
            declared, inserted = await self._sharing.insert_or_get_emergency(candidate)
            if inserted:
                EMERGENCY_DECLARATIONS.labels(declared.terms.reason.code).inc()
        if declared.request_fingerprint != request.fingerprint:
            raise ConflictError("request_id was already used for a different request", "request_id")
        await self._sharing.add_entry(declared.terms.patient_id, declared.terms)
        self.forget_answers()
        access = current_access()
        access.emergency_access_id = declared.terms.emergency_access_id
        access.emergency_reason = declared.terms.reason.code
        log.warning("emergency access declared", extra={"actor_id": actor_id})
        return declared

    async def list_emergencies(
        self, unreviewed_only: bool, requested_size: int, token: str
    ) -> tuple[list[EmergencyAccess], str]:
        """Declarations in declaration order, from the page token's position on."""
        size = page_size(requested_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        position = self._identity.page_tokens.decode(token)
        sequence = position_int(position, "next", minimum=1) if position else 1
        last = await self._sharing.last_emergency_sequence()
        found: list[EmergencyAccess] = []
        scanned = 0
        while sequence <= last and len(found) < size and scanned < MAX_LISTING_SCAN:
            batch = range(sequence, min(last, sequence + size - len(found) - 1) + 1)
            found.extend(
                e
                for e in await self._sharing.emergencies_at(batch)
                if not unreviewed_only or e.review is None
            )
            scanned += len(batch)
            sequence = batch[-1] + 1
        return found, self._identity.page_tokens.encode({"next": sequence}) if sequence <= last else ""

    async def review_emergency(self, raw: ReviewInput, actor_id: str) -> EmergencyAccess:
        """Records the data-protection officer's verdict, once: the first review's insert wins."""
        request = validate_review(raw)
        declared = await self._sharing.get_emergency(request.emergency_access_id)
        if declared is None:
            raise NotFoundError("EmergencyAccess", "emergency_access_id", request.emergency_access_id)
        review, _ = await self._sharing.insert_or_get_review(
            request.emergency_access_id, new_review(request, actor_id, utc_now())
        )
        if review.request_id != request.request_id:
            raise ConflictError(
                "the emergency access was already reviewed; a declaration is reviewed once",
                "emergency_access_id",
            )
        if review.request_fingerprint != request.fingerprint:
            raise ConflictError("request_id was already used for a different request", "request_id")
        return replace(declared, review=review)

    # --- the access model ---------------------------------------------------------------------------

    async def visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        """What ``facility_code`` may see of the patient (emr_runtime.visibility.VisibilitySource):
        its registrations, the grants and referrals in force for it, its emergency access.

        A clinician reads the same patient many times in a row, and each answer costs several
        reads: an answer that opens something (and no emergency access, which ends on its own
        clock) is kept ``ACCESS_CACHE_SECONDS``. This replica's own grant, revocation, referral,
        declaration, merge or unmerge forgets every kept answer at once; another replica's within
        that time. An answer that opens nothing is never kept: a first registration counts at once."""
        key = (patient_id, facility_code, purpose_of(purpose_of_use), export)
        kept = self._answers.get(key)
        if kept is not None and kept[1] > time.monotonic():
            return kept[0]
        found = await self._visibility(patient_id, facility_code, purpose_of_use, export)
        if found.opens_anything and not found.emergency_access_id:
            if len(self._answers) >= ACCESS_CACHE_SIZE:
                self._answers.clear()
            self._answers[key] = (found, time.monotonic() + ACCESS_CACHE_SECONDS)
        return found

    def forget_answers(self) -> None:
        """Drops every kept answer: something that changes who sees whom happened here."""
        self._answers.clear()

    async def _visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        now = utc_now()
        purpose = purpose_of(purpose_of_use)
        circle = await self._circle_or_none(patient_id)
        if circle is None:
            return visibility_of(facility_code, purpose, export, now, None, (), (), ())
        grants, emergencies = await self._sharing.entries(circle.person_ids)
        # Revocations are read only for the grants that would otherwise open something.
        in_force = grants_in_force(grants, facility_code, purpose, now)
        revoked = await self._sharing.revoked(g.grant_id for g in in_force)
        if in_force and self.sharing_stopped is not None and await self.sharing_stopped(circle.person_ids):
            # A restriction or objection in force: the patient's grants and referrals open nothing
            # (the facility's own data stays visible; an emergency access still applies).
            revoked = {g.grant_id for g in in_force}
        return visibility_of(facility_code, purpose, export, now, circle, grants, revoked, emergencies)

    async def check_access(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        """CheckAccess: the same answer, for a request that names the facility and purpose."""
        violations = Violations()
        if not patient_id.strip():
            violations.add("patient_id", "required")
        facility_code = normalize_facility_code(facility_code)
        if not is_facility_code(facility_code):
            violations.add("facility_code", "the 5-character code of the facility asking")
        if len(purpose_of_use) > MAX_PURPOSE_LENGTH or not purpose_of_use.isprintable():
            violations.add("purpose_of_use", f"a purpose of use, at most {MAX_PURPOSE_LENGTH} characters")
        violations.raise_if_any()
        return await self.visibility(patient_id.strip(), facility_code, purpose_of_use, export)
