"""Sharing grants, referrals and emergency access (break the glass): what may be recorded, and the
access model's answer for one facility (docs/access-model.md). Pure; no I/O.

A facility sees what it registered itself. A patient's consent grant opens every facility's data to
the grantee (or to every facility) for one purpose; a referral opens the referring facility's data
to the receiving facility; a doctor's emergency access opens every facility's data to their
facility for a few hours, never for an export, and only where no consent grant applies already.
Grants recorded for a person merged into another count for the survivor.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from emr_runtime.clock import to_storage_precision
from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code
from emr_runtime.idempotency import check_request_id
from emr_runtime.visibility import ALL_CATEGORIES, Visibility

MAX_GRANT_YEARS = 5
MAX_REFERRAL_YEARS = 1
MIN_JUSTIFICATION_LENGTH = 10
MAX_JUSTIFICATION_LENGTH = 2000
MAX_EVIDENCE_REFERENCE_LENGTH = 128
MAX_REVIEW_NOTE_LENGTH = 2000
MAX_ID_LENGTH = 64


class GrantKind(enum.Enum):
    CONSENT = "consent"
    REFERRAL = "referral"


class Purpose(enum.Enum):
    """What shared data may be used for; the values are the call's purpose of use
    (emr_runtime.visibility.purpose_of) that a grant applies to."""

    TREATMENT = "TREATMENT"
    PAYMENT = "PAYMENT"


class ConsentEvidence(enum.Enum):
    SIGNED_FORM = "signed_form"
    VNEID_CONFIRMATION = "vneid_confirmation"
    VERBAL_WITH_WITNESS = "verbal_with_witness"


class EmergencyReason(enum.Enum):
    LIFE_THREATENING = "LIFE_THREATENING"
    UNABLE_TO_CONSENT = "UNABLE_TO_CONSENT"
    URGENT_CARE = "URGENT_CARE"
    PUBLIC_HEALTH = "PUBLIC_HEALTH"

    @property
    def code(self) -> str:
        """The reason as audit events carry it: the contract's EmergencyReason name."""
        return f"EMERGENCY_REASON_{self.value}"


class ReviewOutcome(enum.Enum):
    JUSTIFIED = "justified"
    UNJUSTIFIED = "unjustified"


# --- what is recorded ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantTerms:
    """What the access model needs of a grant; fixed once recorded (a revocation is kept apart)."""

    grant_id: str
    patient_id: str
    kind: GrantKind
    # The facility that may see the data; "" (consent only): every facility.
    grantee_facility_code: str
    # Referrals: the referring facility, whose data the grant opens. Consent: "" (every facility's).
    source_facility_code: str
    purpose: Purpose
    start: datetime
    end: datetime
    # Special categories of clinical data (emr_runtime.visibility.ALL_CATEGORIES) the consent opens
    # too, for its purpose; none for a referral (docs/privacy-sensitive.md).
    categories: frozenset[str] = frozenset()

    def active_at(self, now: datetime) -> bool:
        return self.start <= now < self.end

    def applies_to(self, facility_code: str) -> bool:
        return self.grantee_facility_code == facility_code or (
            self.kind is GrantKind.CONSENT and not self.grantee_facility_code
        )


@dataclass(frozen=True)
class Revocation:
    grant_id: str
    revoked_at: datetime
    revoked_by: str
    facility_code: str
    request_id: str
    request_fingerprint: str


@dataclass(frozen=True)
class SharingGrant:
    terms: GrantTerms
    evidence: ConsentEvidence | None
    evidence_reference: str
    recorded_by_facility_code: str
    recorded_by: str
    request_fingerprint: str
    revocation: Revocation | None = None


@dataclass(frozen=True)
class EmergencyTerms:
    """What the access model needs of an emergency access; fixed once declared."""

    emergency_access_id: str
    patient_id: str
    facility_code: str
    reason: EmergencyReason
    start: datetime
    end: datetime

    def active_at(self, now: datetime) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class Review:
    outcome: ReviewOutcome
    note: str
    reviewed_by: str
    reviewed_at: datetime
    request_id: str
    request_fingerprint: str


@dataclass(frozen=True)
class EmergencyAccess:
    terms: EmergencyTerms
    declared_by: str
    justification: str
    request_fingerprint: str
    # Position in the list of declarations (oldest first) the data-protection officer reviews.
    sequence: int
    review: Review | None = None


# --- requests as received -------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantInput:
    """A RecordSharingGrant request; None for an enum value the caller left unset or made up."""

    request_id: str
    patient_id: str
    facility_code: str
    grantee_facility_code: str
    purpose: Purpose | None
    evidence: ConsentEvidence | None
    evidence_reference: str
    end: datetime | None
    fingerprint: str
    # Special categories named (ALL_CATEGORIES names); None for a value the caller left unset or made up.
    categories: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class RevocationInput:
    request_id: str
    grant_id: str
    facility_code: str
    fingerprint: str


@dataclass(frozen=True)
class ReferralInput:
    request_id: str
    patient_id: str
    facility_code: str
    receiving_facility_code: str
    end: datetime | None
    fingerprint: str


@dataclass(frozen=True)
class EmergencyInput:
    request_id: str
    patient_id: str
    facility_code: str
    reason: EmergencyReason | None
    justification: str
    fingerprint: str


@dataclass(frozen=True)
class ReviewInput:
    request_id: str
    emergency_access_id: str
    outcome: ReviewOutcome | None
    note: str
    fingerprint: str


# --- validation ---------------------------------------------------------------------------------


def years_ahead(moment: datetime, years: int) -> datetime:
    """The same date and time ``years`` later (29 February becomes 28 February)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


def check_id(violations: Violations, value: str, field: str, required: bool = True) -> str:
    value = value.strip()
    if not value:
        if required:
            violations.add(field, "required")
    elif len(value) > MAX_ID_LENGTH or not value.isprintable():
        violations.add(field, f"an id: at most {MAX_ID_LENGTH} printable characters")
    return value


def _check_facility(violations: Violations, raw: str, field: str, what: str) -> str:
    code = normalize_facility_code(raw)
    if not is_facility_code(code):
        violations.add(field, f"the 5-character code of {what}")
    return code


def _check_end(
    violations: Violations, end: datetime | None, now: datetime, years: int, field: str = "end_time"
) -> datetime | None:
    if end is None:
        violations.add(field, "required")
        return None
    if end <= now:
        violations.add(field, "must be in the future")
    elif end > years_ahead(now, years):
        violations.add(field, f"at most {years} year{'s' if years > 1 else ''} ahead")
    return to_storage_precision(end)


def check_text(violations: Violations, value: str, field: str, maximum: int) -> str:
    value = value.strip()
    if len(value) > maximum:
        violations.add(field, f"at most {maximum} characters")
    elif any(not character.isprintable() and character not in "\n\t" for character in value):
        violations.add(field, "must be printable text")
    return value


def validate_grant(raw: GrantInput, now: datetime) -> GrantInput:
    """Checks every field of a consent grant, reporting all violations at once; the normalised input."""
    violations = Violations()
    check_request_id(violations, raw.request_id)
    patient_id = check_id(violations, raw.patient_id, "patient_id")
    facility_code = _check_facility(violations, raw.facility_code, "facility_code", "the recording facility")
    grantee = normalize_facility_code(raw.grantee_facility_code)
    if grantee and not is_facility_code(grantee):
        violations.add("grantee_facility_code", "empty (every facility) or a 5-character facility code")
    if raw.purpose is None:
        violations.add("purpose", "required: TREATMENT or PAYMENT")
    if raw.evidence is None:
        violations.add("evidence", "required: SIGNED_FORM, VNEID_CONFIRMATION or VERBAL_WITH_WITNESS")
    reference = check_text(
        violations, raw.evidence_reference, "evidence_reference", MAX_EVIDENCE_REFERENCE_LENGTH
    )
    end = _check_end(violations, raw.end, now, MAX_GRANT_YEARS)
    for index, category in enumerate(raw.categories):
        if category is None:
            violations.add(f"categories[{index}]", "a SensitivityCategory: " + ", ".join(ALL_CATEGORIES))
    if raw.categories and not grantee and not violations.has("grantee_facility_code"):
        # A special category is opened to one named facility, never to every facility at once.
        violations.add(
            "grantee_facility_code", "required when categories are named: the facility they open to"
        )
    violations.raise_if_any()
    return replace(
        raw,
        patient_id=patient_id,
        facility_code=facility_code,
        grantee_facility_code=grantee,
        evidence_reference=reference,
        end=end,
    )


def new_grant(raw: GrantInput, grant_id: str, patient_id: str, actor_id: str, now: datetime) -> SharingGrant:
    """The consent grant a validated request records for ``patient_id`` (the id it resolves to)."""
    assert raw.purpose is not None and raw.end is not None  # validate_grant checked them
    return SharingGrant(
        terms=GrantTerms(
            grant_id=grant_id,
            patient_id=patient_id,
            kind=GrantKind.CONSENT,
            grantee_facility_code=raw.grantee_facility_code,
            source_facility_code="",
            purpose=raw.purpose,
            start=now,
            end=raw.end,
            categories=frozenset(c for c in raw.categories if c is not None),
        ),
        evidence=raw.evidence,
        evidence_reference=raw.evidence_reference,
        recorded_by_facility_code=raw.facility_code,
        recorded_by=actor_id,
        request_fingerprint=raw.fingerprint,
    )


def validate_revocation(raw: RevocationInput) -> RevocationInput:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    grant_id = check_id(violations, raw.grant_id, "sharing_grant_id")
    facility_code = _check_facility(violations, raw.facility_code, "facility_code", "the recording facility")
    violations.raise_if_any()
    return replace(raw, grant_id=grant_id, facility_code=facility_code)


def validate_referral(raw: ReferralInput, now: datetime) -> ReferralInput:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    patient_id = check_id(violations, raw.patient_id, "patient_id")
    facility_code = _check_facility(violations, raw.facility_code, "facility_code", "the referring facility")
    receiving = _check_facility(
        violations, raw.receiving_facility_code, "receiving_facility_code", "the receiving facility"
    )
    if not violations.has("receiving_facility_code") and receiving == facility_code:
        violations.add("receiving_facility_code", "must differ from the referring facility_code")
    end = _check_end(violations, raw.end, now, MAX_REFERRAL_YEARS)
    violations.raise_if_any()
    return replace(
        raw, patient_id=patient_id, facility_code=facility_code, receiving_facility_code=receiving, end=end
    )


def new_referral(
    raw: ReferralInput, grant_id: str, patient_id: str, actor_id: str, now: datetime
) -> SharingGrant:
    """The grant a validated referral records: the receiving facility sees the referring one's data
    for treatment."""
    assert raw.end is not None  # validate_referral checked it
    return SharingGrant(
        terms=GrantTerms(
            grant_id=grant_id,
            patient_id=patient_id,
            kind=GrantKind.REFERRAL,
            grantee_facility_code=raw.receiving_facility_code,
            source_facility_code=raw.facility_code,
            purpose=Purpose.TREATMENT,
            start=now,
            end=raw.end,
        ),
        evidence=None,
        evidence_reference="",
        recorded_by_facility_code=raw.facility_code,
        recorded_by=actor_id,
        request_fingerprint=raw.fingerprint,
    )


def validate_emergency(raw: EmergencyInput) -> EmergencyInput:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    patient_id = check_id(violations, raw.patient_id, "patient_id")
    facility_code = _check_facility(
        violations, raw.facility_code, "facility_code", "the facility of the emergency"
    )
    if raw.reason is None:
        violations.add(
            "reason", "required: LIFE_THREATENING, UNABLE_TO_CONSENT, URGENT_CARE or PUBLIC_HEALTH"
        )
    justification = check_text(violations, raw.justification, "justification", MAX_JUSTIFICATION_LENGTH)
    if not violations.has("justification") and len(justification) < MIN_JUSTIFICATION_LENGTH:
        violations.add(
            "justification", f"required: what happened, at least {MIN_JUSTIFICATION_LENGTH} characters"
        )
    violations.raise_if_any()
    return replace(raw, patient_id=patient_id, facility_code=facility_code, justification=justification)


def new_emergency(
    raw: EmergencyInput,
    emergency_access_id: str,
    patient_id: str,
    actor_id: str,
    now: datetime,
    duration: timedelta,
    sequence: int,
) -> EmergencyAccess:
    assert raw.reason is not None  # validate_emergency checked it
    return EmergencyAccess(
        terms=EmergencyTerms(
            emergency_access_id=emergency_access_id,
            patient_id=patient_id,
            facility_code=raw.facility_code,
            reason=raw.reason,
            start=now,
            end=to_storage_precision(now + duration),
        ),
        declared_by=actor_id,
        justification=raw.justification,
        request_fingerprint=raw.fingerprint,
        sequence=sequence,
    )


def validate_review(raw: ReviewInput) -> ReviewInput:
    violations = Violations()
    check_request_id(violations, raw.request_id)
    emergency_access_id = check_id(violations, raw.emergency_access_id, "emergency_access_id")
    if raw.outcome is None:
        violations.add("outcome", "required: JUSTIFIED or UNJUSTIFIED")
    note = check_text(violations, raw.note, "note", MAX_REVIEW_NOTE_LENGTH)
    if raw.outcome is ReviewOutcome.UNJUSTIFIED and not note and not violations.has("note"):
        violations.add("note", "required for UNJUSTIFIED: what to follow up with the facility")
    violations.raise_if_any()
    return replace(raw, emergency_access_id=emergency_access_id, note=note)


def new_review(raw: ReviewInput, actor_id: str, now: datetime) -> Review:
    assert raw.outcome is not None  # validate_review checked it
    return Review(raw.outcome, raw.note, actor_id, now, raw.request_id, raw.fingerprint)


# --- the access model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientCircle:
    """A patient as the access model sees it: the person an id resolves to (the survivor of a
    merge), the persons merged into it, whose grants count for it, and the facilities that
    registered any of them."""

    patient_id: str
    person_ids: tuple[str, ...]
    registering_facilities: frozenset[str]


def grants_in_force(
    grants: Iterable[GrantTerms], facility_code: str, purpose: str, now: datetime
) -> list[GrantTerms]:
    """The grants that open data to the facility for this purpose now, unless revoked (revocations
    are looked up for these alone)."""
    return [
        grant
        for grant in grants
        if grant.active_at(now) and grant.purpose.value == purpose and grant.applies_to(facility_code)
    ]


def visibility_of(
    facility_code: str,
    purpose: str,
    export: bool,
    now: datetime,
    circle: PatientCircle | None,
    grants: Iterable[GrantTerms],
    revoked: Collection[str],
    emergencies: Iterable[EmergencyTerms],
) -> Visibility:
    """What ``facility_code`` may see of the patient: the one answer of the access model (identity's
    VisibilitySource and CheckAccess both give it). ``purpose``: the call's (purpose_of);
    ``revoked``: ids of revoked grants among ``grants``."""
    if circle is None:
        return Visibility(facility_code, exists=False)
    in_force = {
        grant.grant_id: grant
        for grant in grants_in_force(grants, facility_code, purpose, now)
        if grant.grant_id not in revoked
    }
    consents = sorted(g.grant_id for g in in_force.values() if g.kind is GrantKind.CONSENT)
    referrals = sorted(g.grant_id for g in in_force.values() if g.kind is GrantKind.REFERRAL)
    sources = frozenset(
        in_force[grant_id].source_facility_code
        for grant_id in referrals
        if in_force[grant_id].source_facility_code != facility_code
    )
    # Special categories: only a consent naming them opens them (never a referral or an emergency
    # access; docs/privacy-sensitive.md).
    categories = frozenset(category for grant_id in consents for category in in_force[grant_id].categories)
    emergency: EmergencyTerms | None = None
    if not export and not consents:
        declared = [e for e in emergencies if e.facility_code == facility_code and e.active_at(now)]
        # Several at once (two doctors): the one lasting longest, so that the answer is stable.
        emergency = max(declared, key=lambda e: (e.end, e.emergency_access_id), default=None)
    return Visibility(
        facility_code,
        registered=facility_code in circle.registering_facilities,
        all_facilities=bool(consents) or emergency is not None,
        facilities=sources,
        sharing_grant_ids=(*consents, *referrals),
        emergency_access_id=emergency.emergency_access_id if emergency else "",
        emergency_reason=emergency.reason.code if emergency else "",
        resolved_patient_id=circle.patient_id,
        categories=categories,
    )
