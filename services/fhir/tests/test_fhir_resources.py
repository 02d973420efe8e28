"""Unit tests of the FHIR mapping: produced dicts must be valid R4B resources (pure, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import uuid
from datetime import UTC, datetime

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from google.protobuf.timestamp_pb2 import Timestamp

from emr_fhir.resources import (
    DISCHARGE_DISPOSITION_DISPLAYS,
    EXT_CONTENT_SHA256,
    EXT_DIAGNOSIS_ROLE,
    EXT_DOCUMENT_SIGNATURE,
    EXT_ENCOUNTER_INSURANCE,
    OBSERVATION_INTERPRETATION_DISPLAYS,
    ROUTE_CODES,
    SYSTEM_BHYT,
    SYSTEM_CCCD,
    SYSTEM_FACILITY,
    SYSTEM_MRN_PREFIX,
    SYSTEM_NATIONAL_DRUG,
    SYSTEM_PASSPORT,
    SYSTEM_PRACTITIONER,
    SYSTEM_PROCEDURE,
    V2_IDENTIFIER_TYPE,
    V3_ACT_CODE,
    clinical_resource,
    collection_bundle,
    condition_resource,
    document_reference_resource,
    encounter_resource,
    everything_bundle,
    has_fhir_mapping,
    human_name,
    identifier_system,
    medication_request_resource,
    observation_resource,
    operation_outcome,
    patient_resource,
    patient_transaction_bundle,
    procedure_resource,
    searchset_bundle,
    transaction_bundle,
)

CREATED = datetime(2024, 6, 15, 8, 30, 5, 123000, tzinfo=UTC)
START = datetime(2024, 6, 15, 7, 0, tzinfo=UTC)
END = datetime(2024, 6, 15, 7, 45, 30, tzinfo=UTC)
DIEP = "Nguyễn Thị Ngọc Điệp"
PATIENT_ID = "0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d"

ADMINISTRATIVE_GENDERS = {"male", "female", "other", "unknown"}
ENCOUNTER_STATUSES = {
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
}


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def all_identifiers() -> list[identity_pb2.Identifier]:
    return [
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079090001234"),
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value="DN4790123456789"),
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_PASSPORT, value="C1234567"),
        identity_pb2.Identifier(
            system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="HS-2024/0001", facility_code="79001"
        ),
    ]


def patient_message(**fields: object) -> identity_pb2.Patient:
    values: dict[str, object] = {
        "patient_id": PATIENT_ID,
        "identifiers": all_identifiers(),
        "full_name": DIEP,
        "birth_date": "1990-05-01",
        "sex": identity_pb2.SEX_FEMALE,
        "registering_facility_code": "79001",
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return identity_pb2.Patient(**values)  # type: ignore[arg-type]


def encounter_message(**fields: object) -> records_pb2.Encounter:
    values: dict[str, object] = {
        "encounter_id": "enc-7f3a",
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_class": records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        "status": records_pb2.ENCOUNTER_STATUS_FINISHED,
        "start_time": stamp(START),
        "end_time": stamp(END),
        "reason": "Sốt cao 3 ngày",
        "version": 3,
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return records_pb2.Encounter(**values)  # type: ignore[arg-type]


# --- Patient ---------------------------------------------------------------------------------------


def test_patient_is_a_valid_r4b_patient() -> None:
    resource = patient_resource(patient_message())
    patient = Patient.model_validate(resource)
    assert patient.id == PATIENT_ID
    assert patient.active is True
    assert patient.gender == "female"
    assert str(patient.birthDate) == "1990-05-01"
    assert patient.meta.lastUpdated == CREATED
    assert patient.managingOrganization.identifier.system == SYSTEM_FACILITY
    assert patient.managingOrganization.identifier.value == "79001"


@pytest.mark.parametrize(
    ("sex", "gender"),
    [
        (identity_pb2.SEX_MALE, "male"),
        (identity_pb2.SEX_FEMALE, "female"),
        (identity_pb2.SEX_OTHER, "other"),
        (identity_pb2.SEX_UNKNOWN, "unknown"),
        (identity_pb2.SEX_UNSPECIFIED, "unknown"),
    ],
)
def test_every_sex_maps_to_an_administrative_gender(sex: int, gender: str) -> None:
    resource = patient_resource(patient_message(sex=sex))
    assert resource["gender"] == gender
    assert gender in ADMINISTRATIVE_GENDERS
    assert Patient.model_validate(resource).gender == gender


def test_every_sex_enum_value_is_covered() -> None:
    genders = {patient_resource(patient_message(sex=v))["gender"] for v in identity_pb2.Sex.values()}
    assert genders == ADMINISTRATIVE_GENDERS


def test_patient_name_is_split_family_first() -> None:
    resource = patient_resource(patient_message())
    patient = Patient.model_validate(resource)
    (name,) = patient.name
    assert name.use == "official"
    assert name.text == DIEP
    assert name.family == "Nguyễn"
    assert name.given == ["Thị", "Ngọc", "Điệp"]


@pytest.mark.parametrize(
    ("full_name", "family", "given"),
    [
        ("Trần Văn An", "Trần", ["Văn", "An"]),
        ("Lê  Văn\tTám", "Lê", ["Văn", "Tám"]),
        ("Điệp", "Điệp", None),
        ("Tôn Nữ Thị Hồng Hạnh", "Tôn", ["Nữ", "Thị", "Hồng", "Hạnh"]),
    ],
)
def test_human_name(full_name: str, family: str, given: list[str] | None) -> None:
    name = human_name(full_name)
    assert name["text"] == full_name
    assert name["family"] == family
    assert name.get("given") == given
    Patient.model_validate({"resourceType": "Patient", "name": [name]})


def test_patient_identifiers_and_systems() -> None:
    resource = patient_resource(patient_message())
    patient = Patient.model_validate(resource)
    assert [(i.system, i.value) for i in patient.identifier] == [
        ("urn:emr-platform:sid:cccd", "079090001234"),
        ("urn:emr-platform:sid:bhyt", "DN4790123456789"),
        ("urn:emr-platform:sid:passport", "C1234567"),
        ("urn:emr-platform:sid:mrn:79001", "HS-2024/0001"),
    ]
    assert [(i.type.coding[0].system, i.type.coding[0].code) for i in patient.identifier] == [
        (V2_IDENTIFIER_TYPE, "NI"),
        (V2_IDENTIFIER_TYPE, "SB"),
        (V2_IDENTIFIER_TYPE, "PPN"),
        (V2_IDENTIFIER_TYPE, "MR"),
    ]
    assert all(i.type.coding[0].display for i in patient.identifier)


@pytest.mark.parametrize(
    ("identifier", "system"),
    [
        (identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="1"), SYSTEM_CCCD),
        (identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value="1"), SYSTEM_BHYT),
        (identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_PASSPORT, value="1"), SYSTEM_PASSPORT),
        (
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="1", facility_code="01001"
            ),
            SYSTEM_MRN_PREFIX + "01001",
        ),
    ],
)
def test_identifier_system(identifier: identity_pb2.Identifier, system: str) -> None:
    assert identifier_system(identifier) == system


def test_mrns_of_different_facilities_get_different_systems() -> None:
    first = identity_pb2.Identifier(
        system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="A1", facility_code="79001"
    )
    second = identity_pb2.Identifier(
        system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="A1", facility_code="01001"
    )
    assert identifier_system(first) != identifier_system(second)


def test_patient_without_identifiers_or_facility() -> None:
    resource = patient_resource(patient_message(identifiers=[], registering_facility_code=""))
    assert "identifier" not in resource
    assert "managingOrganization" not in resource
    patient = Patient.model_validate(resource)
    assert patient.identifier is None
    assert patient.managingOrganization is None


def test_patient_without_create_time_still_validates() -> None:
    message = patient_message()
    message.ClearField("create_time")
    resource = patient_resource(message)
    assert Patient.model_validate(resource).meta.lastUpdated == datetime(1970, 1, 1, tzinfo=UTC)


# --- Encounter -------------------------------------------------------------------------------------

_CLASSES = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: "AMB",
    records_pb2.ENCOUNTER_CLASS_INPATIENT: "IMP",
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: "EMER",
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: "SS",
}
_STATUSES = {
    records_pb2.ENCOUNTER_STATUS_PLANNED: "planned",
    records_pb2.ENCOUNTER_STATUS_IN_PROGRESS: "in-progress",
    records_pb2.ENCOUNTER_STATUS_FINISHED: "finished",
    records_pb2.ENCOUNTER_STATUS_CANCELLED: "cancelled",
    records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}


def test_test_tables_cover_every_specified_enum_value() -> None:
    assert set(_CLASSES) == set(records_pb2.EncounterClass.values()) - {
        records_pb2.ENCOUNTER_CLASS_UNSPECIFIED
    }
    assert set(_STATUSES) == set(records_pb2.EncounterStatus.values()) - {
        records_pb2.ENCOUNTER_STATUS_UNSPECIFIED
    }


@pytest.mark.parametrize(("encounter_class", "status"), list(itertools.product(_CLASSES, _STATUSES)))
def test_every_class_and_status_is_a_valid_r4b_encounter(
    encounter_class: records_pb2.EncounterClass, status: records_pb2.EncounterStatus
) -> None:
    resource = encounter_resource(encounter_message(encounter_class=encounter_class, status=status))
    encounter = Encounter.model_validate(resource)
    assert encounter.status == _STATUSES[status]
    assert encounter.status in ENCOUNTER_STATUSES
    assert encounter.class_fhir.system == V3_ACT_CODE
    assert encounter.class_fhir.code == _CLASSES[encounter_class]
    assert encounter.class_fhir.display


def test_encounter_fields() -> None:
    resource = encounter_resource(encounter_message())
    encounter = Encounter.model_validate(resource)
    assert encounter.id == "enc-7f3a"
    assert encounter.meta.versionId == "3"
    assert encounter.meta.lastUpdated == CREATED
    assert encounter.subject.reference == f"Patient/{PATIENT_ID}"
    assert encounter.period.start == START
    assert encounter.period.end == END
    assert encounter.serviceProvider.identifier.system == SYSTEM_FACILITY
    assert encounter.serviceProvider.identifier.value == "79001"
    assert [r.text for r in encounter.reasonCode] == ["Sốt cao 3 ngày"]


def test_open_encounter_has_no_period_end_and_no_reason() -> None:
    message = encounter_message(status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS, reason="")
    message.ClearField("end_time")
    resource = encounter_resource(message)
    assert resource["period"] == {"start": "2024-06-15T07:00:00Z"}
    assert "reasonCode" not in resource
    encounter = Encounter.model_validate(resource)
    assert encounter.period.end is None
    assert encounter.reasonCode is None


def test_end_time_at_the_epoch_is_still_emitted() -> None:
    # Presence, not a non-zero value, decides whether the period has an end.
    message = encounter_message(end_time=Timestamp(seconds=0))
    assert encounter_resource(message)["period"]["end"] == "1970-01-01T00:00:00Z"


def test_fractional_seconds_validate_as_instants() -> None:
    message = encounter_message(create_time=Timestamp(seconds=1718440205, nanos=123456789))
    resource = encounter_resource(message)
    assert resource["meta"]["lastUpdated"] == "2024-06-15T08:30:05.123456789Z"
    Encounter.model_validate(resource)


# --- OperationOutcome ------------------------------------------------------------------------------


def test_operation_outcome_is_valid() -> None:
    resource = operation_outcome("not-found", "Patient/abc was not found")
    outcome = OperationOutcome.model_validate(resource)
    (issue,) = outcome.issue
    assert issue.severity == "error"
    assert issue.code == "not-found"
    assert issue.diagnostics == "Patient/abc was not found"
    assert issue.expression is None
    assert "expression" not in resource["issue"][0]


def test_operation_outcome_with_expression() -> None:
    resource = operation_outcome("invalid", "invalid request", ["Patient.birthDate", "Patient.name[0]"])
    outcome = OperationOutcome.model_validate(resource)
    assert outcome.issue[0].expression == ["Patient.birthDate", "Patient.name[0]"]
    assert outcome.issue[0].code == "invalid"


def test_operation_outcome_with_empty_expression_omits_it() -> None:
    resource = operation_outcome("exception", "internal error", [])
    assert "expression" not in resource["issue"][0]
    OperationOutcome.model_validate(resource)


# --- Encounter: department, practitioner, discharge, insurance --------------------------------------

# The FHIR R4 value sets the mapping must stay inside (fhir.resources does not check codes).
DISCHARGE_DISPOSITIONS = {
    "home",
    "alt-home",
    "other-hcf",
    "hosp",
    "long",
    "aadvice",
    "exp",
    "psy",
    "rehab",
    "snf",
    "oth",
}
OBSERVATION_STATUSES = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
OBSERVATION_INTERPRETATIONS = {  # v3 ObservationInterpretation (R4), the codes of results
    *("<", ">", "A", "AA", "AC", "B", "CAR", "D", "DET", "E", "EX", "EXP", "H", "H>", "HH", "HM", "HU"),
    *("HX", "I", "IE", "IND", "L", "L<", "LL", "LU", "LX", "MS", "N", "NCL", "ND", "NEG", "NR", "NS"),
    *("POS", "QCF", "R", "RR", "S", "SDD", "SYN-R", "SYN-S", "TOX", "U", "VS", "W", "WR"),
}
CONDITION_CLINICAL_STATUSES = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
CONDITION_VERIFICATION_STATUSES = {
    "unconfirmed",
    "provisional",
    "differential",
    "confirmed",
    "refuted",
    "entered-in-error",
}
MEDICATION_REQUEST_STATUSES = {
    "active",
    "on-hold",
    "cancelled",
    "completed",
    "entered-in-error",
    "stopped",
    "draft",
    "unknown",
}
MEDICATION_REQUEST_INTENTS = {
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
}
EVENT_STATUSES = {
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
}
DOCUMENT_REFERENCE_STATUSES = {"current", "superseded", "entered-in-error"}
UCUM_UNITS = {"/min", "mm[Hg]", "Cel", "mg", "mmol/L", "{tbl}", "d", "kg"}

ENCOUNTER_ID = "6f1e2d3c-4b5a-4c6d-8e7f-901a2b3c4d5e"
OBSERVATION_ID = "a1b2c3d4-0000-4000-8000-000000000001"
CONDITION_ID = "a1b2c3d4-0000-4000-8000-000000000002"
SECOND_CONDITION_ID = "a1b2c3d4-0000-4000-8000-000000000003"
MEDICATION_REQUEST_ID = "a1b2c3d4-0000-4000-8000-000000000004"
PROCEDURE_ID = "a1b2c3d4-0000-4000-8000-000000000005"
DOCUMENT_ID = "a1b2c3d4-0000-4000-8000-000000000006"
UPDATED = datetime(2024, 6, 16, 9, 0, tzinfo=UTC)
DOCUMENT_CONTENT = "Giấy ra viện (synthetic)".encode()


def test_entered_in_error_encounter() -> None:
    resource = encounter_resource(encounter_message(status=records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR))
    assert Encounter.model_validate(resource).status == "entered-in-error"


def full_encounter(**fields: object) -> records_pb2.Encounter:
    values: dict[str, object] = {
        "encounter_id": ENCOUNTER_ID,
        "encounter_class": records_pb2.ENCOUNTER_CLASS_INPATIENT,
        "department": "Khoa Nội tổng hợp",
        "practitioner_id": "prac-0042",
        "discharge_disposition": "home",
        "insurance": records_pb2.EncounterInsurance(bhyt_number="DN4790123456789", benefit_level=4),
        "update_time": stamp(UPDATED),
    }
    values.update(fields)
    return encounter_message(**values)


def test_encounter_department_practitioner_discharge_and_insurance() -> None:
    resource = encounter_resource(full_encounter())
    encounter = Encounter.model_validate(resource)
    assert encounter.meta.lastUpdated == UPDATED  # the time of this version, not of the first
    assert encounter.serviceType.text == "Khoa Nội tổng hợp"
    (participant,) = encounter.participant
    assert (participant.type[0].coding[0].system, participant.type[0].coding[0].code) == (
        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "ATND",
    )
    assert participant.individual.identifier.system == SYSTEM_PRACTITIONER
    assert participant.individual.identifier.value == "prac-0042"
    assert participant.individual.reference is None  # logical: no Practitioner resources exist
    disposition = encounter.hospitalization.dischargeDisposition.coding[0]
    assert (disposition.system, disposition.code) == (
        "http://terminology.hl7.org/CodeSystem/discharge-disposition",
        "home",
    )
    (insurance,) = encounter.extension
    assert insurance.url == EXT_ENCOUNTER_INSURANCE
    parts = {part.url: part for part in insurance.extension}
    assert parts["bhytNumber"].valueIdentifier.system == SYSTEM_BHYT
    assert parts["bhytNumber"].valueIdentifier.value == "DN4790123456789"
    assert parts["benefitLevel"].valuePositiveInt == 4


def test_encounter_without_optional_details_has_none_of_their_elements() -> None:
    resource = encounter_resource(encounter_message())
    for element in ("serviceType", "participant", "hospitalization", "extension"):
        assert element not in resource


def test_insurance_without_details_adds_no_empty_extension() -> None:
    resource = encounter_resource(full_encounter(insurance=records_pb2.EncounterInsurance()))
    assert "extension" not in resource
    Encounter.model_validate(resource)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        *((code, code) for code in sorted(DISCHARGE_DISPOSITIONS)),
        ("deceased", "exp"),
        ("transferred", "other-hcf"),
    ],
)
def test_discharge_dispositions_are_codes_of_the_fhir_code_system(value: str, code: str) -> None:
    resource = encounter_resource(full_encounter(discharge_disposition=value))
    disposition = Encounter.model_validate(resource).hospitalization.dischargeDisposition
    assert disposition.coding[0].code == code
    assert disposition.coding[0].code in DISCHARGE_DISPOSITIONS
    assert disposition.coding[0].display
    assert disposition.text == value


def test_the_discharge_disposition_table_is_the_whole_code_system() -> None:
    assert set(DISCHARGE_DISPOSITION_DISPLAYS) == DISCHARGE_DISPOSITIONS


def test_unknown_discharge_disposition_stays_text() -> None:
    resource = encounter_resource(full_encounter(discharge_disposition="về quê"))
    disposition = Encounter.model_validate(resource).hospitalization.dischargeDisposition
    assert disposition.coding is None
    assert disposition.text == "về quê"


# --- Observation -----------------------------------------------------------------------------------

_OBSERVATION_STATUSES = {
    records_pb2.OBSERVATION_STATUS_REGISTERED: "registered",
    records_pb2.OBSERVATION_STATUS_PRELIMINARY: "preliminary",
    records_pb2.OBSERVATION_STATUS_FINAL: "final",
    records_pb2.OBSERVATION_STATUS_AMENDED: "amended",
    records_pb2.OBSERVATION_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
_VALUES: dict[str, dict[str, object]] = {
    "quantity": {"value_quantity": records_pb2.Quantity(value=88, unit="/min")},
    "coding": {
        "value_coding": records_pb2.Coding(
            system="http://snomed.info/sct", code="10828004", display="Positive"
        )
    },
    "text": {"value_text": "Âm tính"},
    "none": {},
}


def observation_message(**fields: object) -> records_pb2.Observation:
    values: dict[str, object] = {
        "observation_id": OBSERVATION_ID,
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_id": ENCOUNTER_ID,
        "loinc_code": "8867-4",
        "status": records_pb2.OBSERVATION_STATUS_FINAL,
        "value_quantity": records_pb2.Quantity(value=112, unit="/min"),
        "reference_range": records_pb2.ReferenceRange(
            low=records_pb2.Quantity(value=60, unit="/min"), high=records_pb2.Quantity(value=100, unit="/min")
        ),
        "interpretation": "H",
        "effective_time": stamp(START),
        "version": 2,
        "create_time": stamp(CREATED),
        "update_time": stamp(UPDATED),
    }
    values.update(fields)
    return records_pb2.Observation(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "value"), list(itertools.product(_OBSERVATION_STATUSES, _VALUES)))
def test_every_observation_status_and_value_kind_is_a_valid_r4b_observation(
    status: records_pb2.ObservationStatus, value: str
) -> None:
    message = observation_message(status=status)
    message.ClearField("value_quantity")
    message.MergeFrom(records_pb2.Observation(**_VALUES[value]))  # type: ignore[arg-type]
    resource = observation_resource(message)
    observation = Observation.model_validate(resource)
    assert observation.status == _OBSERVATION_STATUSES[status]
    assert observation.status in OBSERVATION_STATUSES
    present = {kind for kind in ("valueQuantity", "valueCodeableConcept", "valueString") if kind in resource}
    assert len(present) == (0 if value == "none" else 1)


def test_observation_fields() -> None:
    resource = observation_resource(observation_message())
    observation = Observation.model_validate(resource)
    assert observation.id == OBSERVATION_ID
    assert observation.meta.versionId == "2"
    assert observation.meta.lastUpdated == UPDATED
    assert [(c.system, c.code) for c in observation.code.coding] == [("http://loinc.org", "8867-4")]
    assert observation.subject.reference == f"Patient/{PATIENT_ID}"
    assert observation.encounter.reference == f"Encounter/{ENCOUNTER_ID}"
    assert observation.effectiveDateTime == START
    assert observation.performer[0].identifier.value == "79001"
    quantity = observation.valueQuantity
    assert (float(quantity.value), quantity.unit, quantity.system, quantity.code) == (
        112.0,
        "/min",
        "http://unitsofmeasure.org",
        "/min",
    )
    (reference_range,) = observation.referenceRange
    assert (float(reference_range.low.value), float(reference_range.high.value)) == (60.0, 100.0)
    assert reference_range.low.system == reference_range.high.system == "http://unitsofmeasure.org"
    interpretation = observation.interpretation[0].coding[0]
    assert interpretation.system == "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
    assert (interpretation.code, interpretation.display) == ("H", "High")


@pytest.mark.parametrize("flag", sorted(OBSERVATION_INTERPRETATION_DISPLAYS))
def test_interpretation_flags_are_v3_codes(flag: str) -> None:
    resource = observation_resource(observation_message(interpretation=flag))
    coding = Observation.model_validate(resource).interpretation[0].coding[0]
    assert coding.code == flag
    assert coding.code in OBSERVATION_INTERPRETATIONS
    assert coding.display


def test_unknown_interpretation_stays_text_and_open_range_has_one_bound() -> None:
    message = observation_message(interpretation="bất thường")
    message.reference_range.ClearField("high")
    message.ClearField("encounter_id")
    resource = observation_resource(message)
    observation = Observation.model_validate(resource)
    assert observation.interpretation[0].coding is None
    assert observation.interpretation[0].text == "bất thường"
    assert observation.referenceRange[0].high is None
    assert observation.encounter is None


@pytest.mark.parametrize("unit", sorted(UCUM_UNITS))
def test_observation_units_are_ucum(unit: str) -> None:
    resource = observation_resource(
        observation_message(value_quantity=records_pb2.Quantity(value=1, unit=unit))
    )
    quantity = Observation.model_validate(resource).valueQuantity
    assert (quantity.system, quantity.code) == ("http://unitsofmeasure.org", unit)


def test_coded_observation_value() -> None:
    message = observation_message(
        value_coding=records_pb2.Coding(system="http://snomed.info/sct", code="260385009", display="Negative")
    )
    concept = Observation.model_validate(observation_resource(message)).valueCodeableConcept
    assert [(c.system, c.code, c.display) for c in concept.coding] == [
        ("http://snomed.info/sct", "260385009", "Negative")
    ]


# --- Condition -------------------------------------------------------------------------------------

_CONDITION_STATUSES = {
    records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE: "active",
    records_pb2.CONDITION_CLINICAL_STATUS_RECURRENCE: "recurrence",
    records_pb2.CONDITION_CLINICAL_STATUS_RELAPSE: "relapse",
    records_pb2.CONDITION_CLINICAL_STATUS_INACTIVE: "inactive",
    records_pb2.CONDITION_CLINICAL_STATUS_REMISSION: "remission",
    records_pb2.CONDITION_CLINICAL_STATUS_RESOLVED: "resolved",
    records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR: None,
}


def condition_message(**fields: object) -> records_pb2.Condition:
    values: dict[str, object] = {
        "condition_id": CONDITION_ID,
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_id": ENCOUNTER_ID,
        "icd10_code": "J18.9",
        "clinical_status": records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
        "role": records_pb2.DIAGNOSIS_ROLE_PRIMARY,
        "onset_time": stamp(START),
        "recorded_time": stamp(END),
        "version": 1,
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return records_pb2.Condition(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(_CONDITION_STATUSES))
def test_every_condition_status_is_a_valid_r4b_condition(status: records_pb2.ConditionClinicalStatus) -> None:
    resource = condition_resource(condition_message(clinical_status=status))
    condition = Condition.model_validate(resource)
    expected = _CONDITION_STATUSES[status]
    if expected is None:
        # con-5: no clinicalStatus when the verification status is entered-in-error.
        assert condition.clinicalStatus is None
        coding = condition.verificationStatus.coding[0]
        assert coding.system == "http://terminology.hl7.org/CodeSystem/condition-ver-status"
        assert coding.code == "entered-in-error"
        assert coding.code in CONDITION_VERIFICATION_STATUSES
    else:
        coding = condition.clinicalStatus.coding[0]
        assert coding.system == "http://terminology.hl7.org/CodeSystem/condition-clinical"
        assert coding.code == expected
        assert coding.code in CONDITION_CLINICAL_STATUSES
        assert condition.verificationStatus is None


def test_condition_fields() -> None:
    resource = condition_resource(condition_message())
    condition = Condition.model_validate(resource)
    assert condition.id == CONDITION_ID
    assert [(c.system, c.code) for c in condition.code.coding] == [
        ("http://hl7.org/fhir/sid/icd-10", "J18.9")
    ]
    assert condition.subject.reference == f"Patient/{PATIENT_ID}"
    assert condition.encounter.reference == f"Encounter/{ENCOUNTER_ID}"
    assert condition.category[0].coding[0].code == "encounter-diagnosis"
    assert condition.onsetDateTime == START
    assert condition.recordedDate == END
    assert condition.meta.lastUpdated == CREATED
    (role,) = condition.extension
    assert (role.url, role.valueCode) == (EXT_DIAGNOSIS_ROLE, "primary")


def test_condition_without_encounter_role_or_onset() -> None:
    message = condition_message(encounter_id="", role=records_pb2.DIAGNOSIS_ROLE_UNSPECIFIED)
    message.ClearField("onset_time")
    resource = condition_resource(message)
    for element in ("encounter", "category", "extension", "onsetDateTime"):
        assert element not in resource
    Condition.model_validate(resource)


# --- MedicationRequest -----------------------------------------------------------------------------

_MEDICATION_STATUSES = {
    records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE: "active",
    records_pb2.MEDICATION_REQUEST_STATUS_COMPLETED: "completed",
    records_pb2.MEDICATION_REQUEST_STATUS_CANCELLED: "cancelled",
    records_pb2.MEDICATION_REQUEST_STATUS_STOPPED: "stopped",
    records_pb2.MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}


def medication_request_message(**fields: object) -> records_pb2.MedicationRequest:
    values: dict[str, object] = {
        "medication_request_id": MEDICATION_REQUEST_ID,
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_id": ENCOUNTER_ID,
        "drug_code": "VD-12345-10",
        "drug_name": "Paracetamol 500mg",
        "status": records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE,
        "dose": records_pb2.Quantity(value=1, unit="{tbl}"),
        "route": "oral",
        "doses_per_day": 3,
        "duration_days": 5,
        "quantity": records_pb2.Quantity(value=15, unit="{tbl}"),
        "authored_time": stamp(START),
        "version": 1,
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return records_pb2.MedicationRequest(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(_MEDICATION_STATUSES))
def test_every_medication_request_status_is_valid_r4b(status: records_pb2.MedicationRequestStatus) -> None:
    resource = medication_request_resource(medication_request_message(status=status))
    request = MedicationRequest.model_validate(resource)
    assert request.status == _MEDICATION_STATUSES[status]
    assert request.status in MEDICATION_REQUEST_STATUSES
    assert request.intent in MEDICATION_REQUEST_INTENTS


def test_medication_request_fields() -> None:
    request = MedicationRequest.model_validate(medication_request_resource(medication_request_message()))
    medication = request.medicationCodeableConcept
    assert medication.text == "Paracetamol 500mg"
    assert [(c.system, c.code, c.display) for c in medication.coding] == [
        (SYSTEM_NATIONAL_DRUG, "VD-12345-10", "Paracetamol 500mg")
    ]
    assert request.intent == "order"
    assert request.authoredOn == START
    assert request.encounter.reference == f"Encounter/{ENCOUNTER_ID}"
    (dosage,) = request.dosageInstruction
    repeat = dosage.timing.repeat
    assert (repeat.frequency, float(repeat.period), repeat.periodUnit) == (3, 1.0, "d")
    assert (float(repeat.boundsDuration.value), repeat.boundsDuration.code) == (5.0, "d")
    assert repeat.boundsDuration.system == "http://unitsofmeasure.org"
    assert (dosage.route.coding[0].system, dosage.route.coding[0].code) == (
        "http://snomed.info/sct",
        "26643006",
    )
    dose = dosage.doseAndRate[0].doseQuantity
    assert (float(dose.value), dose.code, dose.system) == (1.0, "{tbl}", "http://unitsofmeasure.org")
    assert float(request.dispenseRequest.quantity.value) == 15.0
    assert float(request.dispenseRequest.expectedSupplyDuration.value) == 5.0


@pytest.mark.parametrize("route", sorted(ROUTE_CODES))
def test_known_routes_are_snomed_codes(route: str) -> None:
    resource = medication_request_resource(medication_request_message(route=route))
    concept = MedicationRequest.model_validate(resource).dosageInstruction[0].route
    assert concept.coding[0].system == "http://snomed.info/sct"
    assert concept.coding[0].code.isdigit()
    assert concept.coding[0].display
    assert concept.text == route


def test_unknown_route_stays_text_and_minimal_request_validates() -> None:
    message = medication_request_message(route="nhỏ mắt", doses_per_day=0, duration_days=0, encounter_id="")
    message.ClearField("dose")
    message.ClearField("quantity")
    resource = medication_request_resource(message)
    assert resource["dosageInstruction"] == [{"route": {"text": "nhỏ mắt"}}]
    assert "dispenseRequest" not in resource
    assert "encounter" not in resource
    MedicationRequest.model_validate(resource)


# --- Procedure -------------------------------------------------------------------------------------

_PROCEDURE_STATUSES = {
    records_pb2.PROCEDURE_STATUS_PREPARATION: "preparation",
    records_pb2.PROCEDURE_STATUS_IN_PROGRESS: "in-progress",
    records_pb2.PROCEDURE_STATUS_COMPLETED: "completed",
    records_pb2.PROCEDURE_STATUS_STOPPED: "stopped",
    records_pb2.PROCEDURE_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}


def procedure_message(**fields: object) -> records_pb2.Procedure:
    values: dict[str, object] = {
        "procedure_id": PROCEDURE_ID,
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_id": ENCOUNTER_ID,
        "code": "87.44",
        "status": records_pb2.PROCEDURE_STATUS_COMPLETED,
        "performed_start_time": stamp(START),
        "performed_end_time": stamp(END),
        "performer_id": "prac-0077",
        "version": 1,
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return records_pb2.Procedure(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(_PROCEDURE_STATUSES))
def test_every_procedure_status_is_valid_r4b(status: records_pb2.ProcedureStatus) -> None:
    procedure = Procedure.model_validate(procedure_resource(procedure_message(status=status)))
    assert procedure.status == _PROCEDURE_STATUSES[status]
    assert procedure.status in EVENT_STATUSES


def test_procedure_fields() -> None:
    procedure = Procedure.model_validate(procedure_resource(procedure_message()))
    assert [(c.system, c.code) for c in procedure.code.coding] == [(SYSTEM_PROCEDURE, "87.44")]
    assert (procedure.performedPeriod.start, procedure.performedPeriod.end) == (START, END)
    assert [p.actor.identifier.system for p in procedure.performer] == [SYSTEM_PRACTITIONER, SYSTEM_FACILITY]
    assert procedure.performer[0].actor.identifier.value == "prac-0077"
    assert procedure.encounter.reference == f"Encounter/{ENCOUNTER_ID}"


def test_procedure_under_way_without_performer() -> None:
    message = procedure_message(status=records_pb2.PROCEDURE_STATUS_IN_PROGRESS, performer_id="")
    message.ClearField("performed_end_time")
    procedure = Procedure.model_validate(procedure_resource(message))
    assert procedure.performedPeriod.end is None
    assert [p.actor.identifier.system for p in procedure.performer] == [SYSTEM_FACILITY]


# --- DocumentReference -----------------------------------------------------------------------------

_DOCUMENT_STATUSES = {
    records_pb2.DOCUMENT_STATUS_CURRENT: "current",
    records_pb2.DOCUMENT_STATUS_SUPERSEDED: "superseded",
    records_pb2.DOCUMENT_STATUS_ENTERED_IN_ERROR: "entered-in-error",
}
THUMBPRINT = "ab" * 32


def document_message(**fields: object) -> records_pb2.DocumentReference:
    values: dict[str, object] = {
        "document_id": DOCUMENT_ID,
        "patient_id": PATIENT_ID,
        "facility_code": "79001",
        "encounter_id": ENCOUNTER_ID,
        "type_code": "18842-5",
        "status": records_pb2.DOCUMENT_STATUS_CURRENT,
        "content_type": "text/plain",
        "content": DOCUMENT_CONTENT,
        "content_sha256": hashlib.sha256(DOCUMENT_CONTENT).hexdigest(),
        "signature": records_pb2.DocumentSignature(
            signer_id="prac-0042",
            certificate_thumbprint=THUMBPRINT,
            algorithm="RS256",
            signed_time=stamp(END),
        ),
        "document_time": stamp(END),
        "version": 1,
        "create_time": stamp(CREATED),
    }
    values.update(fields)
    return records_pb2.DocumentReference(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(_DOCUMENT_STATUSES))
def test_every_document_status_is_valid_r4b(status: records_pb2.DocumentStatus) -> None:
    document = DocumentReference.model_validate(document_reference_resource(document_message(status=status)))
    assert document.status == _DOCUMENT_STATUSES[status]
    assert document.status in DOCUMENT_REFERENCE_STATUSES


def test_document_content_hashes_and_signature() -> None:
    resource = document_reference_resource(document_message())
    document = DocumentReference.model_validate(resource)
    assert [(c.system, c.code) for c in document.type.coding] == [("http://loinc.org", "18842-5")]
    assert document.subject.reference == f"Patient/{PATIENT_ID}"
    assert document.context.encounter[0].reference == f"Encounter/{ENCOUNTER_ID}"
    assert document.custodian.identifier.value == "79001"
    assert document.date == END
    attachment = document.content[0].attachment
    assert attachment.contentType == "text/plain"
    assert base64.b64decode(resource["content"][0]["attachment"]["data"]) == DOCUMENT_CONTENT
    assert attachment.size == len(DOCUMENT_CONTENT)
    # R4 Attachment.hash: base64 of the SHA-1 of the data.
    assert (
        resource["content"][0]["attachment"]["hash"]
        == base64.b64encode(hashlib.sha1(DOCUMENT_CONTENT).digest()).decode()
    )
    (sha256,) = attachment.extension
    assert (sha256.url, sha256.valueString) == (
        EXT_CONTENT_SHA256,
        hashlib.sha256(DOCUMENT_CONTENT).hexdigest(),
    )
    assert document.authenticator.identifier.value == "prac-0042"
    (signature,) = document.extension
    assert signature.url == EXT_DOCUMENT_SIGNATURE
    parts = {part.url: part for part in signature.extension}
    assert parts["signer"].valueReference.identifier.value == "prac-0042"
    assert parts["certificateThumbprintSha256"].valueString == THUMBPRINT
    assert parts["algorithm"].valueCode == "RS256"
    assert parts["signedTime"].valueInstant == END


def test_unsigned_document_without_encounter() -> None:
    message = document_message(encounter_id="")
    message.ClearField("signature")
    resource = document_reference_resource(message)
    for element in ("extension", "authenticator", "context"):
        assert element not in resource
    DocumentReference.model_validate(resource)


# --- every enum, ClinicalResource, bundles ---------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "enum"),
    [
        (_OBSERVATION_STATUSES, records_pb2.ObservationStatus),
        (_CONDITION_STATUSES, records_pb2.ConditionClinicalStatus),
        (_MEDICATION_STATUSES, records_pb2.MedicationRequestStatus),
        (_PROCEDURE_STATUSES, records_pb2.ProcedureStatus),
        (_DOCUMENT_STATUSES, records_pb2.DocumentStatus),
    ],
)
def test_clinical_test_tables_cover_every_specified_enum_value(
    table: dict[int, object], enum: object
) -> None:
    specified = {value for value in enum.values() if value != 0}  # type: ignore[attr-defined]
    assert set(table) == specified


def every_resource() -> list[records_pb2.ClinicalResource]:
    return [
        records_pb2.ClinicalResource(encounter=full_encounter(patient_id=PATIENT_ID)),
        records_pb2.ClinicalResource(observation=observation_message()),
        records_pb2.ClinicalResource(condition=condition_message()),
        records_pb2.ClinicalResource(
            condition=condition_message(
                condition_id=SECOND_CONDITION_ID, icd10_code="E11", role=records_pb2.DIAGNOSIS_ROLE_SECONDARY
            )
        ),
        records_pb2.ClinicalResource(medication_request=medication_request_message()),
        records_pb2.ClinicalResource(procedure=procedure_message()),
        records_pb2.ClinicalResource(document_reference=document_message()),
    ]


FHIR_MODELS = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Observation": Observation,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "Procedure": Procedure,
    "DocumentReference": DocumentReference,
}


def test_clinical_resource_dispatches_on_the_oneof() -> None:
    produced = [clinical_resource(message) for message in every_resource()]
    assert [item["resourceType"] for item in produced] == [
        "Encounter",
        "Observation",
        "Condition",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "DocumentReference",
    ]
    for item in produced:
        FHIR_MODELS[item["resourceType"]].model_validate(item)
    oneof_names = {
        field.name for field in records_pb2.ClinicalResource.DESCRIPTOR.oneofs_by_name["resource"].fields
    }
    assert oneof_names - WITHOUT_FHIR_FORM == {message.WhichOneof("resource") for message in every_resource()}


# Resources that feed the national claim tables and have no FHIR form yet.
WITHOUT_FHIR_FORM = {"charge_line", "progress_note"}


def without_fhir_form() -> list[records_pb2.ClinicalResource]:
    return [
        records_pb2.ClinicalResource(
            charge_line=records_pb2.ChargeLine(charge_line_id=str(uuid.uuid4()), patient_id=PATIENT_ID)
        ),
        records_pb2.ClinicalResource(
            progress_note=records_pb2.ProgressNote(progress_note_id=str(uuid.uuid4()), patient_id=PATIENT_ID)
        ),
    ]


def test_resources_without_a_fhir_form_are_left_out_of_bundles() -> None:
    assert {message.WhichOneof("resource") for message in without_fhir_form()} == WITHOUT_FHIR_FORM
    assert not any(has_fhir_mapping(message) for message in without_fhir_form())
    mixed = [*without_fhir_form(), *every_resource(), *without_fhir_form()]
    collection = collection_bundle(patient_message(), mixed)
    assert collection == collection_bundle(patient_message(), every_resource())
    searchset = searchset_bundle(mixed, "http://127.0.0.1/fhir/Observation")
    assert searchset == searchset_bundle(every_resource(), "http://127.0.0.1/fhir/Observation")
    assert len(searchset["entry"]) == len(every_resource())


def test_empty_clinical_resource_is_refused() -> None:
    with pytest.raises(ValueError, match="no resource"):
        clinical_resource(records_pb2.ClinicalResource())


def references_in(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [ref for value in node.values() for ref in references_in(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in references_in(item)]
    return []


def test_collection_bundle_of_every_resource_type_validates_and_resolves() -> None:
    bundle_json = collection_bundle(patient_message(), every_resource())
    bundle = Bundle.model_validate(bundle_json)
    assert bundle.type == "collection"
    assert bundle.total is None  # bdl-1: total only in search and history bundles
    full_urls = [entry["fullUrl"] for entry in bundle_json["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    types = [entry["resource"]["resourceType"] for entry in bundle_json["entry"]]
    assert types[0] == "Patient"
    assert set(types) == set(FHIR_MODELS)
    for entry in bundle_json["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        FHIR_MODELS[resource["resourceType"]].model_validate(resource)
    references = references_in([entry["resource"] for entry in bundle_json["entry"]])
    assert len(references) >= 15
    unresolved = [ref for ref in references if ref not in full_urls]
    assert unresolved == []


def test_collection_bundle_ranks_the_encounter_diagnoses() -> None:
    bundle_json = collection_bundle(patient_message(), every_resource())
    (encounter,) = [
        e["resource"] for e in bundle_json["entry"] if e["resource"]["resourceType"] == "Encounter"
    ]
    diagnoses = Encounter.model_validate(encounter).diagnosis
    assert [(d.condition.reference, d.rank) for d in diagnoses] == [
        (f"urn:uuid:{CONDITION_ID}", 1),
        (f"urn:uuid:{SECOND_CONDITION_ID}", None),
    ]
    assert diagnoses[1].use.coding[0].system == "http://terminology.hl7.org/CodeSystem/diagnosis-role"
    assert diagnoses[1].use.coding[0].code == "CM"


def test_records_of_a_merged_person_point_at_the_surviving_patient() -> None:
    merged_person = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
    observation = records_pb2.ClinicalResource(
        observation=observation_message(patient_id=merged_person, encounter_id="")
    )
    bundle_json = collection_bundle(patient_message(), [observation])
    Bundle.model_validate(bundle_json)
    assert bundle_json["entry"][1]["resource"]["subject"] == {"reference": f"urn:uuid:{PATIENT_ID}"}


def test_reference_to_a_resource_outside_the_bundle_stays_relative() -> None:
    bundle_json = collection_bundle(
        patient_message(), [records_pb2.ClinicalResource(observation=observation_message())]
    )
    assert bundle_json["entry"][1]["resource"]["encounter"] == {"reference": f"Encounter/{ENCOUNTER_ID}"}


def test_collection_bundle_refuses_ids_that_are_not_uuids() -> None:
    with pytest.raises(ValueError, match="badly formed"):
        collection_bundle(patient_message(), [records_pb2.ClinicalResource(encounter=encounter_message())])


def test_patient_only_bundle() -> None:
    bundle = Bundle.model_validate(collection_bundle(patient_message(), []))
    assert len(bundle.entry) == 1


SELF_URL = f"http://127.0.0.1:8080/fhir/Encounter?patient={PATIENT_ID}&_count=2"
NEXT_URL = SELF_URL + "&_cursor=abc"


def test_searchset_bundle_with_next_link() -> None:
    resources = every_resource()[:2]
    bundle_json = searchset_bundle(resources, SELF_URL, NEXT_URL, base_url="http://127.0.0.1:8080/fhir/")
    bundle = Bundle.model_validate(bundle_json)
    assert bundle.type == "searchset"
    assert [(link.relation, link.url) for link in bundle.link] == [("self", SELF_URL), ("next", NEXT_URL)]
    assert [entry.search.mode for entry in bundle.entry] == ["match", "match"]
    assert [entry.fullUrl for entry in bundle.entry] == [
        f"http://127.0.0.1:8080/fhir/Encounter/{ENCOUNTER_ID}",
        f"http://127.0.0.1:8080/fhir/Observation/{OBSERVATION_ID}",
    ]


def test_last_and_empty_search_pages() -> None:
    last = searchset_bundle(every_resource()[:1], SELF_URL)
    assert [link["relation"] for link in last["link"]] == ["self"]
    assert "fullUrl" not in last["entry"][0]
    empty = searchset_bundle([], SELF_URL)
    assert "entry" not in empty  # FHIR JSON has no empty arrays
    Bundle.model_validate(last)
    Bundle.model_validate(empty)


def test_everything_bundle_is_the_export_as_a_searchset() -> None:
    collection = collection_bundle(patient_message(), every_resource())
    self_url = f"http://127.0.0.1:8080/fhir/Patient/{PATIENT_ID}/$everything"
    bundle_json = everything_bundle(collection, self_url)
    bundle = Bundle.model_validate(bundle_json)
    assert bundle.type == "searchset"
    assert [(link.relation, link.url) for link in bundle.link] == [("self", self_url)]
    assert [e["fullUrl"] for e in bundle_json["entry"]] == [e["fullUrl"] for e in collection["entry"]]
    assert [e["resource"] for e in bundle_json["entry"]] == [e["resource"] for e in collection["entry"]]


def test_transaction_bundle_puts_patient_encounter_and_attached_resources() -> None:
    encounter, *attached = every_resource()
    bundle_json = transaction_bundle(patient_message(), encounter.encounter, attached)
    bundle = Bundle.model_validate(bundle_json)
    assert bundle.type == "transaction"
    requests = [(entry.request.method, entry.request.url) for entry in bundle.entry]
    resources = [entry["resource"] for entry in bundle_json["entry"]]
    assert requests == [("PUT", f"{r['resourceType']}/{r['id']}") for r in resources]
    assert resources[0]["resourceType"] == "Patient"
    assert resources[1]["resourceType"] == "Encounter"
    assert resources[1]["id"] == ENCOUNTER_ID
    assert {r["resourceType"] for r in resources} == set(FHIR_MODELS)
    full_urls = {entry["fullUrl"] for entry in bundle_json["entry"]}
    assert [ref for ref in references_in(resources) if ref not in full_urls] == []


# --- Patient changes (identity's feed) -------------------------------------------------------------

SURVIVOR_ID = "5a0e4c52-9d7b-4f61-8a33-0c1f2e3d4b5a"
MERGED_ID = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
COMMITTED = datetime(2024, 6, 16, 9, 0, tzinfo=UTC)


def only_patient(bundle: dict[str, object]) -> Patient:
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "transaction"
    (entry,) = parsed.entry
    assert (entry.request.method, entry.request.url) == ("PUT", f"Patient/{PATIENT_ID}")
    assert entry.fullUrl == f"urn:uuid:{PATIENT_ID}"
    assert isinstance(entry.resource, Patient)
    return entry.resource


def test_patient_change_bundle_carries_one_patient_at_the_change_version() -> None:
    identifiers = [
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079190000001"),
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value="7912345678"),
    ]
    bundle = patient_transaction_bundle(patient_message(identifiers=identifiers), "17", stamp(COMMITTED))
    patient = only_patient(bundle)
    assert patient.active is True
    assert patient.meta.versionId == "17"
    assert patient.meta.lastUpdated == COMMITTED
    assert [(i.system, i.value) for i in patient.identifier] == [
        (SYSTEM_CCCD, "079190000001"),
        (SYSTEM_BHYT, "7912345678"),
    ]
    assert patient.link is None


def test_merged_patient_is_inactive_and_replaced_by_the_survivor() -> None:
    bundle = patient_transaction_bundle(patient_message(), "18", stamp(COMMITTED), replaced_by=SURVIVOR_ID)
    patient = only_patient(bundle)
    assert patient.active is False
    assert [(link.type, link.other.reference) for link in patient.link] == [
        ("replaced-by", f"Patient/{SURVIVOR_ID}")
    ]


def test_survivor_replaces_every_merged_person() -> None:
    bundle = patient_transaction_bundle(
        patient_message(), "19", stamp(COMMITTED), replaces=[MERGED_ID, SURVIVOR_ID]
    )
    patient = only_patient(bundle)
    assert patient.active is True
    assert [(link.type, link.other.reference) for link in patient.link] == [
        ("replaces", f"Patient/{MERGED_ID}"),
        ("replaces", f"Patient/{SURVIVOR_ID}"),
    ]
