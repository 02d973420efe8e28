"""Conversions between emr.identity.v1 messages and identity domain types."""

from __future__ import annotations

from collections.abc import Iterable

from emr.identity.v1 import identity_pb2

from emr_identity.domain import (
    EventKind,
    IdentifierSystem,
    LinkEvent,
    Outcome,
    PatientChange,
    PatientChangeKind,
    Person,
    PersonStatus,
    RawIdentifier,
    RegistrationInput,
    Sex,
    normalize_identifier_value,
)
from emr_identity.domain import identifier_key as key_of_identifier
from emr_identity.linkage import Resolution, ReviewKind, ReviewTask
from emr_identity.matching import Candidate, Decision
from emr_identity.service import RegistrationResult, SearchQuery, UpdateResult
from emr_identity.vietnamese import bhyt_social_insurance_code
from emr_runtime.errors import FieldViolation, InvalidArgumentError
from emr_runtime.idempotency import fingerprint

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


def registration_input(request: identity_pb2.RegisterPatientRequest) -> RegistrationInput:
    return RegistrationInput(
        request_id=request.request_id,
        identifiers=tuple(
            RawIdentifier(_SYSTEMS.get(i.system), i.value, i.facility_code) for i in request.identifiers
        ),
        full_name=request.full_name,
        birth_date=request.birth_date,
        sex=_SEXES.get(request.sex),
        facility_code=request.facility_code,
        fingerprint=fingerprint(request.SerializeToString(deterministic=True)),
        phone=request.phone,
        province_code=request.province_code,
        family_name=request.family_name,
        middle_name=request.middle_name,
        given_name=request.given_name,
        accept_inconsistent_cccd=request.accept_inconsistent_cccd,
    )


def update_input(request: identity_pb2.UpdatePatientRequest) -> RegistrationInput:
    """The new demographics, validated like a registration's (no identifiers, no facility)."""
    return RegistrationInput(
        request_id=request.request_id,
        identifiers=(),
        full_name=request.full_name,
        birth_date=request.birth_date,
        sex=_SEXES.get(request.sex),
        facility_code="",
        fingerprint=fingerprint(request.SerializeToString(deterministic=True)),
        phone=request.phone,
        province_code=request.province_code,
    )


def patient_message(person: Person) -> identity_pb2.Patient:
    patient = identity_pb2.Patient(
        patient_id=person.person_id,
        identifiers=[
            identity_pb2.Identifier(
                system=_SYSTEMS_TO_PROTO[i.system], value=i.value, facility_code=i.facility_code
            )
            for i in person.identifiers
        ],
        full_name=person.full_name,
        birth_date=person.birth_date.isoformat(),
        sex=_SEXES_TO_PROTO[person.sex],
        registering_facility_code=person.registering_facility_code,
        phone=person.phone,
        province_code=person.province_code,
        version=person.version,
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
