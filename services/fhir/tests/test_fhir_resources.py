"""Unit tests of the FHIR mapping: produced dicts must be valid R4B resources (pure, no I/O)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from google.protobuf.timestamp_pb2 import Timestamp

from emr_fhir.resources import (
    SYSTEM_BHYT,
    SYSTEM_CCCD,
    SYSTEM_FACILITY,
    SYSTEM_MRN_PREFIX,
    SYSTEM_PASSPORT,
    V2_IDENTIFIER_TYPE,
    V3_ACT_CODE,
    encounter_resource,
    human_name,
    identifier_system,
    operation_outcome,
    patient_resource,
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
