"""Conversions between emr.identity.v1 messages and identity domain types."""

from __future__ import annotations

from emr.identity.v1 import identity_pb2

from emr_identity.domain import IdentifierSystem, Outcome, Person, RawIdentifier, RegistrationInput, Sex
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
    )
    patient.create_time.FromDatetime(person.created_at)
    return patient


def outcome_value(outcome: Outcome) -> identity_pb2.RegistrationOutcome:
    return _OUTCOMES[outcome]
