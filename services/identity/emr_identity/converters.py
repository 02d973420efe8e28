"""Conversions between emr.identity.v1 messages and identity domain types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from emr.identity.v1 import identity_pb2
from emr.records.v1 import sensitivity_pb2
from google.protobuf.message import Message

from emr_identity.claim_profile import ClaimProfile
from emr_identity.domain import (
    DataQualityWarning,
    EventKind,
    Identifier,
    IdentifierSystem,
    LinkEvent,
    Outcome,
    PatientChange,
    PatientChangeKind,
    Person,
    PersonStatus,
    RawBhytCard,
    RawIdentifier,
    RegistrationInput,
    Sex,
    normalize_identifier_value,
)
from emr_identity.domain import identifier_key as key_of_identifier
from emr_identity.linkage import Resolution, ReviewKind, ReviewTask
from emr_identity.matching import Candidate, Decision
from emr_identity.service import RegistrationResult, SearchQuery, UpdateResult
from emr_identity.sharing import (
    ConsentEvidence,
    EmergencyAccess,
    EmergencyInput,
    EmergencyReason,
    GrantInput,
    GrantKind,
    Purpose,
    ReferralInput,
    ReviewInput,
    ReviewOutcome,
    RevocationInput,
    SharingGrant,
)
from emr_identity.vietnamese import bhyt_social_insurance_code, current_province_code
from emr_runtime.clock import to_storage_precision
from emr_runtime.errors import FieldViolation, InvalidArgumentError
from emr_runtime.idempotency import fingerprint
from emr_runtime.visibility import Visibility

_SYSTEMS = {
    identity_pb2.IDENTIFIER_SYSTEM_CCCD: IdentifierSystem.CCCD,
    identity_pb2.IDENTIFIER_SYSTEM_BHYT: IdentifierSystem.BHYT,
    identity_pb2.IDENTIFIER_SYSTEM_PASSPORT: IdentifierSystem.PASSPORT,
    identity_pb2.IDENTIFIER_SYSTEM_MRN: IdentifierSystem.MRN,
}
_SYSTEMS_TO_PROTO = {value: key for key, value in _SYSTEMS.items()}
_SEXES = {
    identity_pb2.SEX_MALE: Sex.MALE,
    identity_pb2.SEX_FEMALE: Sex.FEMALE,
    identity_pb2.SEX_OTHER: Sex.OTHER,
    identity_pb2.SEX_UNKNOWN: Sex.UNKNOWN,
}
_SEXES_TO_PROTO = {value: key for key, value in _SEXES.items()}
_OUTCOMES = {
    Outcome.CREATED: identity_pb2.REGISTRATION_OUTCOME_CREATED,
    Outcome.EXISTING: identity_pb2.REGISTRATION_OUTCOME_EXISTING,
    Outcome.LINKED: identity_pb2.REGISTRATION_OUTCOME_LINKED_EXISTING,
    Outcome.REVIEW: identity_pb2.REGISTRATION_OUTCOME_REVIEW_REQUIRED,
    Outcome.CONFLICT: identity_pb2.REGISTRATION_OUTCOME_IDENTIFIER_CONFLICT,
}
_DECISIONS = {
    Decision.NEW: identity_pb2.MATCH_DECISION_NEW,
    Decision.REVIEW: identity_pb2.MATCH_DECISION_REVIEW,
    Decision.LINK: identity_pb2.MATCH_DECISION_LINK,
}
_EVENT_KINDS = {
    EventKind.CREATED: identity_pb2.LINK_EVENT_KIND_CREATED,
    EventKind.LINKED: identity_pb2.LINK_EVENT_KIND_LINKED,
    EventKind.MERGED: identity_pb2.LINK_EVENT_KIND_MERGED,
    EventKind.UNMERGED: identity_pb2.LINK_EVENT_KIND_UNMERGED,
    EventKind.REJECTED: identity_pb2.LINK_EVENT_KIND_REJECTED,
    EventKind.REVIEW_OPENED: identity_pb2.LINK_EVENT_KIND_REVIEW_OPENED,
    EventKind.UPDATED: identity_pb2.LINK_EVENT_KIND_UPDATED,
    EventKind.RECORD_UPDATED: identity_pb2.LINK_EVENT_KIND_FACILITY_RECORD_UPDATED,
    EventKind.CHANGE_REJECTED: identity_pb2.LINK_EVENT_KIND_CHANGE_REJECTED,
}
_REVIEW_KINDS = {
    ReviewKind.DUPLICATE: identity_pb2.REVIEW_TASK_KIND_LIKELY_DUPLICATE,
    ReviewKind.IDENTIFIER_CONFLICT: identity_pb2.REVIEW_TASK_KIND_IDENTIFIER_CONFLICT,
    ReviewKind.DEMOGRAPHICS_CHANGE: identity_pb2.REVIEW_TASK_KIND_DEMOGRAPHICS_CHANGE,
}
_RESOLUTIONS = {
    identity_pb2.REVIEW_RESOLUTION_SAME_PERSON: Resolution.SAME_PERSON,
    identity_pb2.REVIEW_RESOLUTION_DIFFERENT_PERSONS: Resolution.DIFFERENT_PERSONS,
    identity_pb2.REVIEW_RESOLUTION_ACCEPT_CHANGE: Resolution.ACCEPT_CHANGE,
    identity_pb2.REVIEW_RESOLUTION_REJECT_CHANGE: Resolution.REJECT_CHANGE,
}


def registration_input(
    request: identity_pb2.RegisterPatientRequest, fingerprint_key: bytes
) -> RegistrationInput:
    return RegistrationInput(
        request_id=request.request_id,
        identifiers=tuple(
            RawIdentifier(_SYSTEMS.get(i.system), i.value, i.facility_code, _raw_bhyt_card(i))
            for i in request.identifiers
        ),
        full_name=request.full_name,
        birth_date=request.birth_date,
        sex=_SEXES.get(request.sex),
        facility_code=request.facility_code,
        fingerprint=fingerprint(fingerprint_key, request.SerializeToString(deterministic=True)),
        phone=request.phone,
        province_code=request.province_code,
        family_name=request.family_name,
        middle_name=request.middle_name,
        given_name=request.given_name,
        accept_inconsistent_cccd=request.accept_inconsistent_cccd,
        cccd_registered_abroad=request.cccd_registered_abroad,
        claim_profile=_claim_profile(request),
    )


def _claim_profile(
    request: identity_pb2.RegisterPatientRequest | identity_pb2.UpdatePatientRequest,
) -> ClaimProfile:
    return ClaimProfile(
        nationality_code=request.nationality_code,
        ethnicity_code=request.ethnicity_code,
        occupation_code=request.occupation_code,
        address=request.address,
        commune_code=request.commune_code,
        district_code=request.district_code,
    )


def _raw_bhyt_card(identifier: identity_pb2.Identifier) -> RawBhytCard | None:
    if not identifier.HasField("bhyt_card"):
        return None
    card = identifier.bhyt_card
    return RawBhytCard(card.valid_from, card.valid_to, card.primary_care_facility_code)


def _identifier_message(identifier: Identifier) -> identity_pb2.Identifier:
    message = identity_pb2.Identifier(
        system=_SYSTEMS_TO_PROTO[identifier.system],
        value=identifier.value,
        facility_code=identifier.facility_code,
    )
    card = identifier.bhyt_card
    if card is not None:
        message.bhyt_card.CopyFrom(
            identity_pb2.BhytCard(
                valid_from=card.valid_from.isoformat() if card.valid_from else "",
                valid_to=card.valid_to.isoformat() if card.valid_to else "",
                primary_care_facility_code=card.primary_care_facility_code,
            )
        )
    return message


def update_input(request: identity_pb2.UpdatePatientRequest, fingerprint_key: bytes) -> RegistrationInput:
    """The new demographics, validated like a registration's (no identifiers, no facility); the
    claim profile only when the request replaces it."""
    return RegistrationInput(
        request_id=request.request_id,
        identifiers=(),
        full_name=request.full_name,
        birth_date=request.birth_date,
        sex=_SEXES.get(request.sex),
        facility_code="",
        fingerprint=fingerprint(fingerprint_key, request.SerializeToString(deterministic=True)),
        phone=request.phone,
        province_code=request.province_code,
        claim_profile=_claim_profile(request) if request.update_claim_profile else None,
    )


_WARNINGS_TO_PROTO = {
    DataQualityWarning.CCCD_BIRTH_YEAR_MISMATCH: identity_pb2.DATA_QUALITY_WARNING_CCCD_BIRTH_YEAR_MISMATCH,
}


def patient_message(person: Person) -> identity_pb2.Patient:
    profile = person.claim_profile
    patient = identity_pb2.Patient(
        patient_id=person.person_id,
        identifiers=[_identifier_message(i) for i in person.identifiers],
        full_name=person.full_name,
        birth_date=person.birth_date.isoformat(),
        sex=_SEXES_TO_PROTO[person.sex],
        registering_facility_code=person.registering_facility_code,
        phone=person.phone,
        province_code=person.province_code,
        current_province_code=current_province_code(person.province_code),
        version=person.version,
        nationality_code=profile.nationality_code,
        ethnicity_code=profile.ethnicity_code,
        occupation_code=profile.occupation_code,
        address=profile.address,
        commune_code=profile.commune_code,
        district_code=profile.district_code,
        data_quality_warnings=[_WARNINGS_TO_PROTO[w] for w in person.data_quality_warnings],
    )
    patient.create_time.FromDatetime(person.created_at)
    return patient


def candidate_messages(candidates: Iterable[Candidate]) -> list[identity_pb2.MatchCandidate]:
    return [
        identity_pb2.MatchCandidate(
            patient_id=c.person_id,
            score=c.score.total,
            deterministic=c.score.deterministic,
            contributions=[
                identity_pb2.FieldContribution(field=p.field, level=p.level, weight=round(p.weight, 3))
                for p in c.score.contributions
            ],
        )
        for c in candidates
    ]


def registration_response(result: RegistrationResult) -> identity_pb2.RegisterPatientResponse:
    return identity_pb2.RegisterPatientResponse(
        patient=patient_message(result.person),
        outcome=_OUTCOMES[result.outcome],
        candidates=candidate_messages(result.candidates),
        review_task_id=result.review_task_id,
    )


def update_response(result: UpdateResult) -> identity_pb2.UpdatePatientResponse:
    return identity_pb2.UpdatePatientResponse(
        patient=patient_message(result.person),
        candidates=candidate_messages(result.candidates),
        review_task_id=result.review_task_id,
        change_proposed=result.change_proposed,
    )


def decision_value(decision: Decision) -> identity_pb2.MatchDecision:
    return _DECISIONS[decision]


def search_query(request: identity_pb2.SearchPatientsRequest) -> SearchQuery:
    identifier_key = ""
    if request.HasField("identifier"):
        system = _SYSTEMS.get(request.identifier.system)
        value = normalize_identifier_value(request.identifier.value)
        if (
            system not in (IdentifierSystem.CCCD, IdentifierSystem.BHYT, IdentifierSystem.PASSPORT)
            or not value
        ):
            raise InvalidArgumentError([FieldViolation("identifier", "a CCCD, BHYT or PASSPORT value")])
        assert system is not None
        if system is IdentifierSystem.BHYT:
            value = bhyt_social_insurance_code(value) or value
        identifier_key = key_of_identifier(system, value)
    return SearchQuery(
        identifier_key=identifier_key,
        full_name=request.full_name,
        birth_year=request.birth_year,
        exact_name=request.exact_name,
        phone=request.phone,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def review_task_message(task: ReviewTask) -> identity_pb2.ReviewTask:
    message = identity_pb2.ReviewTask(
        review_task_id=task.task_id,
        patient_id=task.person_id,
        candidates=candidate_messages(task.candidates),
        open=task.open,
        kind=_REVIEW_KINDS[task.kind],
        facility_code=task.facility_code,
    )
    message.create_time.FromDatetime(task.created_at)
    if task.proposed is not None:
        message.proposed_demographics.CopyFrom(
            identity_pb2.ProposedDemographics(
                full_name=task.proposed.full_name,
                birth_date=task.proposed.birth_date.isoformat(),
                sex=_SEXES_TO_PROTO[task.proposed.sex],
            )
        )
    return message


def resolution_value(resolution: identity_pb2.ReviewResolution) -> Resolution | None:
    """The resolution asked for; None when unset (or unknown)."""
    return _RESOLUTIONS.get(resolution)


def event_message(event: LinkEvent) -> identity_pb2.LinkEvent:
    message = identity_pb2.LinkEvent(
        event_id=event.event_id,
        kind=_EVENT_KINDS[event.kind],
        patient_id=event.person_id,
        other_patient_id=event.other_person_id,
        record_id=event.record_id,
        actor_id=event.actor_id,
        reason=event.reason,
    )
    message.time.FromDatetime(event.at)
    return message


_CHANGE_KINDS = {
    PatientChangeKind.REGISTERED: identity_pb2.PATIENT_CHANGE_KIND_REGISTERED,
    PatientChangeKind.UPDATED: identity_pb2.PATIENT_CHANGE_KIND_UPDATED,
    PatientChangeKind.MERGED: identity_pb2.PATIENT_CHANGE_KIND_MERGED,
    PatientChangeKind.MERGE_SURVIVOR: identity_pb2.PATIENT_CHANGE_KIND_MERGE_SURVIVOR,
    PatientChangeKind.UNMERGED: identity_pb2.PATIENT_CHANGE_KIND_UNMERGED,
    PatientChangeKind.UNMERGE_SURVIVOR: identity_pb2.PATIENT_CHANGE_KIND_UNMERGE_SURVIVOR,
}


def patient_change_message(change: PatientChange, person: Person | None) -> identity_pb2.PatientChange:
    assert change.kind is not None  # tombstones never leave the service
    message = identity_pb2.PatientChange(
        sequence=change.sequence,
        kind=_CHANGE_KINDS[change.kind],
        patient_id=change.person_id,
        other_patient_id=change.other_person_id,
    )
    message.commit_time.FromDatetime(change.committed_at)
    if person is not None:
        message.patient.CopyFrom(patient_message(person))
        message.patient_version = person.version
        message.merged_patient_ids.extend(person.merged_person_ids)
        if person.status is PersonStatus.MERGED:
            message.merged_into_patient_id = person.merged_into
    return message


# --- sharing grants, referrals, emergency access ------------------------------------------------

_GRANT_KINDS = {
    GrantKind.CONSENT: identity_pb2.SHARING_GRANT_KIND_CONSENT,
    GrantKind.REFERRAL: identity_pb2.SHARING_GRANT_KIND_REFERRAL,
}
_PURPOSES = {
    identity_pb2.SHARING_PURPOSE_TREATMENT: Purpose.TREATMENT,
    identity_pb2.SHARING_PURPOSE_PAYMENT: Purpose.PAYMENT,
}
_PURPOSES_TO_PROTO = {value: key for key, value in _PURPOSES.items()}
_EVIDENCE = {
    identity_pb2.CONSENT_EVIDENCE_SIGNED_FORM: ConsentEvidence.SIGNED_FORM,
    identity_pb2.CONSENT_EVIDENCE_VNEID_CONFIRMATION: ConsentEvidence.VNEID_CONFIRMATION,
    identity_pb2.CONSENT_EVIDENCE_VERBAL_WITH_WITNESS: ConsentEvidence.VERBAL_WITH_WITNESS,
}
_EVIDENCE_TO_PROTO = {value: key for key, value in _EVIDENCE.items()}
_REASONS = {
    identity_pb2.EMERGENCY_REASON_LIFE_THREATENING: EmergencyReason.LIFE_THREATENING,
    identity_pb2.EMERGENCY_REASON_UNABLE_TO_CONSENT: EmergencyReason.UNABLE_TO_CONSENT,
    identity_pb2.EMERGENCY_REASON_URGENT_CARE: EmergencyReason.URGENT_CARE,
    identity_pb2.EMERGENCY_REASON_PUBLIC_HEALTH: EmergencyReason.PUBLIC_HEALTH,
}
_REASONS_TO_PROTO = {value: key for key, value in _REASONS.items()}
_REVIEW_OUTCOMES = {
    identity_pb2.EMERGENCY_REVIEW_OUTCOME_JUSTIFIED: ReviewOutcome.JUSTIFIED,
    identity_pb2.EMERGENCY_REVIEW_OUTCOME_UNJUSTIFIED: ReviewOutcome.UNJUSTIFIED,
}
_REVIEW_OUTCOMES_TO_PROTO = {value: key for key, value in _REVIEW_OUTCOMES.items()}


def _request_fingerprint(request: Message, key: bytes) -> str:
    return fingerprint(key, request.SerializeToString(deterministic=True))


def _time(message: Message, field: str) -> datetime | None:
    """A timestamp field; None when unset; INVALID_ARGUMENT naming it when out of range."""
    if not message.HasField(field):
        return None
    try:
        return to_storage_precision(getattr(message, field).ToDatetime(tzinfo=UTC))
    except (ValueError, OverflowError):
        raise InvalidArgumentError([FieldViolation(field, "not a valid point in time")]) from None


def grant_input(request: identity_pb2.RecordSharingGrantRequest, fingerprint_key: bytes) -> GrantInput:
    return GrantInput(
        request_id=request.request_id,
        patient_id=request.patient_id,
        facility_code=request.facility_code,
        grantee_facility_code=request.grantee_facility_code,
        purpose=_PURPOSES.get(request.purpose),
        evidence=_EVIDENCE.get(request.evidence),
        evidence_reference=request.evidence_reference,
        end=_time(request, "end_time"),
        fingerprint=_request_fingerprint(request, fingerprint_key),
        categories=tuple(category_name(value) for value in request.categories),
    )


CATEGORY_PREFIX = "SENSITIVITY_CATEGORY_"


def category_name(value: int) -> str | None:
    """A SensitivityCategory as its name without prefix ("HIV"); None when unset or unknown."""
    if value == sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED or value not in (
        sensitivity_pb2.SensitivityCategory.values()
    ):
        return None
    return sensitivity_pb2.SensitivityCategory.Name(value).removeprefix(CATEGORY_PREFIX)


def category_values(names: Iterable[str]) -> list[Any]:
    return [sensitivity_pb2.SensitivityCategory.Value(CATEGORY_PREFIX + name) for name in sorted(names)]


def revocation_input(
    request: identity_pb2.RevokeSharingGrantRequest, fingerprint_key: bytes
) -> RevocationInput:
    return RevocationInput(
        request_id=request.request_id,
        grant_id=request.sharing_grant_id,
        facility_code=request.facility_code,
        fingerprint=_request_fingerprint(request, fingerprint_key),
    )


def referral_input(request: identity_pb2.RecordReferralRequest, fingerprint_key: bytes) -> ReferralInput:
    return ReferralInput(
        request_id=request.request_id,
        patient_id=request.patient_id,
        facility_code=request.facility_code,
        receiving_facility_code=request.receiving_facility_code,
        end=_time(request, "end_time"),
        fingerprint=_request_fingerprint(request, fingerprint_key),
    )


def emergency_input(
    request: identity_pb2.DeclareEmergencyAccessRequest, fingerprint_key: bytes
) -> EmergencyInput:
    return EmergencyInput(
        request_id=request.request_id,
        patient_id=request.patient_id,
        facility_code=request.facility_code,
        reason=_REASONS.get(request.reason),
        justification=request.justification,
        fingerprint=_request_fingerprint(request, fingerprint_key),
    )


def review_input(request: identity_pb2.ReviewEmergencyAccessRequest, fingerprint_key: bytes) -> ReviewInput:
    return ReviewInput(
        request_id=request.request_id,
        emergency_access_id=request.emergency_access_id,
        outcome=_REVIEW_OUTCOMES.get(request.outcome),
        note=request.note,
        fingerprint=_request_fingerprint(request, fingerprint_key),
    )


def sharing_grant_message(grant: SharingGrant) -> identity_pb2.SharingGrant:
    terms = grant.terms
    message = identity_pb2.SharingGrant(
        sharing_grant_id=terms.grant_id,
        patient_id=terms.patient_id,
        kind=_GRANT_KINDS[terms.kind],
        grantee_facility_code=terms.grantee_facility_code,
        source_facility_code=terms.source_facility_code,
        purpose=_PURPOSES_TO_PROTO[terms.purpose],
        evidence=_EVIDENCE_TO_PROTO[grant.evidence]
        if grant.evidence
        else identity_pb2.CONSENT_EVIDENCE_UNSPECIFIED,
        evidence_reference=grant.evidence_reference,
        recorded_by_facility_code=grant.recorded_by_facility_code,
        recorded_by=grant.recorded_by,
        categories=category_values(terms.categories),
    )
    message.start_time.FromDatetime(terms.start)
    message.end_time.FromDatetime(terms.end)
    if grant.revocation is not None:
        message.revoke_time.FromDatetime(grant.revocation.revoked_at)
        message.revoked_by = grant.revocation.revoked_by
    return message


def emergency_access_message(
    emergency: EmergencyAccess, with_justification: bool = False
) -> identity_pb2.EmergencyAccess:
    """A declaration; its justification only for the reviewers (``with_justification``)."""
    terms = emergency.terms
    message = identity_pb2.EmergencyAccess(
        emergency_access_id=terms.emergency_access_id,
        patient_id=terms.patient_id,
        facility_code=terms.facility_code,
        declared_by=emergency.declared_by,
        reason=_REASONS_TO_PROTO[terms.reason],
        justification=emergency.justification if with_justification else "",
    )
    message.start_time.FromDatetime(terms.start)
    message.end_time.FromDatetime(terms.end)
    if emergency.review is not None:
        message.review_outcome = _REVIEW_OUTCOMES_TO_PROTO[emergency.review.outcome]
        message.review_note = emergency.review.note
        message.reviewed_by = emergency.review.reviewed_by
        message.review_time.FromDatetime(emergency.review.reviewed_at)
    return message


def check_access_response(visibility: Visibility) -> identity_pb2.CheckAccessResponse:
    return identity_pb2.CheckAccessResponse(
        exists=visibility.exists,
        registered=visibility.registered,
        all_facilities=visibility.all_facilities,
        visible_facility_codes=sorted(visibility.facilities),
        sharing_grant_ids=visibility.sharing_grant_ids,
        emergency_access_id=visibility.emergency_access_id,
        emergency_reason=visibility.emergency_reason,
        resolved_patient_id=visibility.resolved_patient_id,
        sensitive_categories=category_values(visibility.categories),
    )
