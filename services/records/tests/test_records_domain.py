"""Unit tests of the records domain: validation of every resource type, versions, digests, the
timeline query and the change-feed plan (pure, no I/O)."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from emr_records.domain import (
    FUTURE_TOLERANCE,
    MAX_DOCUMENT_BYTES,
    ClinicalRecord,
    Coding,
    ConditionClinicalStatus,
    ConditionContent,
    Content,
    DiagnosisRole,
    DocumentContent,
    DocumentStatus,
    EncounterClass,
    EncounterContent,
    EncounterStatus,
    MedicationRequestContent,
    MedicationRequestStatus,
    ObservationContent,
    ObservationStatus,
    ProcedureContent,
    ProcedureStatus,
    Quantity,
    ResourceInput,
    ResourceType,
    TimelineQuery,
    check_timeline_query,
    content_digest,
    is_who_icd10_code,
    loinc_check_digit_ok,
    new_record,
    next_version,
    validate_resource,
    verify_document,
)
from emr_runtime.errors import InvalidArgumentError, TooLargeError

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
SETTLE = timedelta(seconds=30)
# Known SHA-256 test vector (FIPS 180-2, "abc").
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
THUMBPRINT = "0f" * 32

# The request oneof name of each content type, as the converters build ResourceInput.path from it.
ONEOF = {
    EncounterContent: "encounter",
    ObservationContent: "observation",
    ConditionContent: "condition",
    MedicationRequestContent: "medication_request",
    ProcedureContent: "procedure",
    DocumentContent: "document_reference",
}
RESOURCE_TYPE = {
    EncounterContent: ResourceType.ENCOUNTER,
    ObservationContent: ResourceType.OBSERVATION,
    ConditionContent: ResourceType.CONDITION,
    MedicationRequestContent: ResourceType.MEDICATION_REQUEST,
    ProcedureContent: ResourceType.PROCEDURE,
    DocumentContent: ResourceType.DOCUMENT_REFERENCE,
}
ID_FIELD = {
    EncounterContent: "encounter_id",
    ObservationContent: "observation_id",
    ConditionContent: "condition_id",
    MedicationRequestContent: "medication_request_id",
    ProcedureContent: "procedure_id",
    DocumentContent: "document_id",
}


# --- synthetic resources ---------------------------------------------------------------------------


def encounter(**changes: Any) -> EncounterContent:
    valid = EncounterContent(
        encounter_class=EncounterClass.OUTPATIENT,
        status=EncounterStatus.IN_PROGRESS,
        start_time=EARLIER,
        end_time=None,
        reason="Sốt cao 3 ngày",
    )
    return replace(valid, **changes)


def observation(**changes: Any) -> ObservationContent:
    valid = ObservationContent(
        loinc_code="8867-4",
        status=ObservationStatus.FINAL,
        effective_time=EARLIER,
        value_quantity=Quantity(72.0, "/min"),
    )
    return replace(valid, **changes)


def condition(**changes: Any) -> ConditionContent:
    valid = ConditionContent(
        icd10_code="J18.9",
        clinical_status=ConditionClinicalStatus.ACTIVE,
        role=DiagnosisRole.PRIMARY,
        recorded_time=EARLIER,
        onset_time=EARLIER - timedelta(days=2),
    )
    return replace(valid, **changes)


def medication_request(**changes: Any) -> MedicationRequestContent:
    valid = MedicationRequestContent(
        drug_code="VN-12345-67",
        drug_name="Paracetamol 500 mg",
        status=MedicationRequestStatus.ACTIVE,
        authored_time=EARLIER,
        dose=Quantity(500.0, "mg"),
        route="oral",
        doses_per_day=3,
        duration_days=5,
        quantity=Quantity(15.0, "{tbl}"),
    )
    return replace(valid, **changes)


def procedure(**changes: Any) -> ProcedureContent:
    valid = ProcedureContent(
        code="39.95",
        status=ProcedureStatus.COMPLETED,
        performed_start_time=EARLIER,
        performed_end_time=EARLIER + timedelta(minutes=30),
        performer_id="practitioner-7",
    )
    return replace(valid, **changes)


def document(**changes: Any) -> DocumentContent:
    valid = DocumentContent(
        type_code="18842-5",
        status=DocumentStatus.CURRENT,
        content_type="application/pdf",
        content=b"abc",
        document_time=EARLIER,
    )
    return replace(valid, **changes)


def signed(**changes: Any) -> DocumentContent:
    valid = document(
        signer_id="practitioner-7",
        certificate_thumbprint=THUMBPRINT,
        signature_algorithm="PS256",
        signed_time=EARLIER + timedelta(minutes=1),
    )
    return replace(valid, **changes)


EVERY_TYPE: list[Content] = [
    encounter(),
    observation(),
    condition(),
    medication_request(),
    procedure(),
    document(),
]


def resource(content: Content, **changes: Any) -> ResourceInput:
    valid = ResourceInput(
        request_id="9b0e4a52-0f5f-4d6c-8f3e-5a1b2c3d4e5f",
        resource_id="",
        patient_id="patient-1",
        facility_code="79001",
        encounter_id="",
        content=content,
        fingerprint="fp-1",
        author_id="practitioner-7",
    )
    return replace(valid, **changes)


_INPUT_FIELDS = {f.name for f in fields(ResourceInput)}


def encounter_input(**changes: Any) -> ResourceInput:
    """An encounter request; each change goes to the request or to the encounter, by field name."""
    request = {name: value for name, value in changes.items() if name in _INPUT_FIELDS}
    content = {name: value for name, value in changes.items() if name not in _INPUT_FIELDS}
    return resource(encounter(**content), **request)


def prefixed(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def path_of(content: Content) -> str:
    return f"resource.{ONEOF[type(content)]}"


def violation_list(raw: ResourceInput, *, updating: bool = False) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_resource(raw, NOW, updating=updating)
    return [(v.field, v.description) for v in caught.value.violations]


def violations_of(raw: ResourceInput) -> dict[str, str]:
    found = violation_list(raw)
    assert len({name for name, _ in found}) == len(found), found
    return dict(found)


def fields_of(raw: ResourceInput, *, updating: bool = False) -> list[str]:
    return [name for name, _ in violation_list(raw, updating=updating)]


def only_violation(raw: ResourceInput) -> str:
    found = fields_of(raw)
    assert len(found) == 1, found
    return found[0]


def accepted(raw: ResourceInput, *, updating: bool = False) -> ClinicalRecord:
    validate_resource(raw, NOW, updating=updating)
    return new_record(raw, "res-1", NOW)


# --- encounters ------------------------------------------------------------------------------------


def test_valid_encounter_is_normalised() -> None:
    start = NOW - timedelta(hours=2)
    end = NOW - timedelta(hours=1)
    raw = encounter_input(
        patient_id="  patient-1 ",
        facility_code=" ab12c ",
        status=EncounterStatus.FINISHED,
        start_time=start,
        end_time=end,
        reason="  Khám định kỳ  ",
    )
    validate_resource(raw, NOW)
    record = new_record(raw, "enc-1", NOW)
    assert record.resource_type is ResourceType.ENCOUNTER
    assert record.resource_id == "enc-1"
    assert record.patient_id == "patient-1"
    assert record.facility_code == "AB12C"
    assert isinstance(record.content, EncounterContent)
    assert record.content.encounter_class is EncounterClass.OUTPATIENT
    assert record.content.status is EncounterStatus.FINISHED
    assert record.content.start_time == start
    assert record.content.end_time == end
    assert record.content.reason == "Khám định kỳ"
    assert record.version == 1
    assert record.created_at == NOW
    assert record.updated_at == NOW
    assert record.request_id == raw.request_id
    assert record.request_fingerprint == "fp-1"
    assert record.author_id == "practitioner-7"
    assert record.time == start
    assert record.status == "finished"


@pytest.mark.parametrize("encounter_class", list(EncounterClass))
@pytest.mark.parametrize("status", [s for s in EncounterStatus if s is not EncounterStatus.FINISHED])
def test_every_class_and_open_status_is_accepted(
    encounter_class: EncounterClass, status: EncounterStatus
) -> None:
    record = accepted(encounter_input(encounter_class=encounter_class, status=status))
    assert isinstance(record.content, EncounterContent)
    assert (record.content.encounter_class, record.content.status) == (encounter_class, status)


def test_end_before_start() -> None:
    raw = encounter_input(start_time=NOW - timedelta(hours=1), end_time=NOW - timedelta(hours=1, seconds=1))
    assert violations_of(raw) == {"end_time": "is before start_time"}


def test_end_equal_to_start_is_accepted() -> None:
    start = NOW - timedelta(hours=1)
    record = accepted(encounter_input(start_time=start, end_time=start))
    assert isinstance(record.content, EncounterContent)
    assert record.content.end_time == start


def test_start_in_the_future_beyond_tolerance() -> None:
    raw = encounter_input(start_time=NOW + FUTURE_TOLERANCE + timedelta(microseconds=1))
    assert violations_of(raw) == {"start_time": "is in the future"}


def test_start_far_in_the_future() -> None:
    assert only_violation(encounter_input(start_time=NOW + timedelta(days=1))) == "start_time"


@pytest.mark.parametrize(
    "ahead", [timedelta(0), timedelta(seconds=1), timedelta(minutes=4, seconds=59), FUTURE_TOLERANCE]
)
def test_start_ahead_within_tolerance_is_accepted(ahead: timedelta) -> None:
    assert timedelta(minutes=5) == FUTURE_TOLERANCE
    record = accepted(encounter_input(start_time=NOW + ahead))
    assert record.time == NOW + ahead


def test_end_in_the_future_beyond_tolerance() -> None:
    raw = encounter_input(start_time=NOW - timedelta(hours=1), end_time=NOW + timedelta(minutes=6))
    assert violations_of(raw) == {"end_time": "is in the future"}


def test_end_within_tolerance_is_accepted() -> None:
    record = accepted(encounter_input(end_time=NOW + FUTURE_TOLERANCE))
    assert isinstance(record.content, EncounterContent)
    assert record.content.end_time == NOW + FUTURE_TOLERANCE


def test_start_time_missing() -> None:
    assert only_violation(encounter_input(start_time=None)) == "start_time"


def test_end_time_without_start_time_is_still_checked_for_the_future() -> None:
    raw = encounter_input(start_time=None, end_time=NOW + timedelta(hours=1))
    assert set(violations_of(raw)) == {"start_time", "end_time"}


def test_finished_without_end_time() -> None:
    raw = encounter_input(status=EncounterStatus.FINISHED, end_time=None)
    assert violations_of(raw) == {"end_time": "required when status is FINISHED"}


def test_unknown_encounter_class() -> None:
    assert only_violation(encounter_input(encounter_class=None)) == "encounter_class"


def test_unknown_status() -> None:
    assert only_violation(encounter_input(status=None)) == "status"


def test_reason_too_long() -> None:
    assert only_violation(encounter_input(reason="x" * 1001)) == "reason"


def test_reason_length_is_counted_after_stripping() -> None:
    reason = "y" * 1000
    record = accepted(encounter_input(reason=f"  {reason}\n"))
    assert isinstance(record.content, EncounterContent)
    assert record.content.reason == reason


def test_empty_reason_is_accepted() -> None:
    record = accepted(encounter_input(reason="   "))
    assert isinstance(record.content, EncounterContent)
    assert record.content.reason == ""


@pytest.mark.parametrize("patient_id", ["", "   "])
def test_patient_id_missing(patient_id: str) -> None:
    assert only_violation(encounter_input(patient_id=patient_id)) == "patient_id"


@pytest.mark.parametrize("facility_code", ["", "7900", "790012", "79 01"])
def test_bad_facility_code(facility_code: str) -> None:
    assert only_violation(encounter_input(facility_code=facility_code)) == "facility_code"


@pytest.mark.parametrize("request_id", ["", "  ", "r" * 129, "a\tb"])
def test_bad_request_id(request_id: str) -> None:
    assert only_violation(encounter_input(request_id=request_id)) == "request_id"


def bad_encounter_request(path: str) -> ResourceInput:
    return resource(
        EncounterContent(
            encounter_class=None,
            status=None,
            start_time=NOW + timedelta(hours=1),
            end_time=NOW,
            reason="z" * 1001,
        ),
        request_id="",
        patient_id="",
        facility_code="x",
        fingerprint="",
        path=path,
    )


def test_all_encounter_violations_at_once() -> None:
    assert fields_of(bad_encounter_request("")) == [
        "request_id",
        "patient_id",
        "facility_code",
        "encounter_class",
        "status",
        "start_time",
        "end_time",
        "reason",
    ]


def test_all_encounter_violations_at_once_under_the_resource_path() -> None:
    # request_id is a field of the request itself, so it keeps its plain name.
    assert fields_of(bad_encounter_request("resource.encounter")) == [
        "request_id",
        "resource.encounter.patient_id",
        "resource.encounter.facility_code",
        "resource.encounter.encounter_class",
        "resource.encounter.status",
        "resource.encounter.start_time",
        "resource.encounter.end_time",
        "resource.encounter.reason",
    ]


@pytest.mark.parametrize("bhyt_number", ["DN4791234567890", "0123456789"])
def test_insurance_is_accepted(bhyt_number: str) -> None:
    record = accepted(encounter_input(bhyt_number=bhyt_number, benefit_level=4))
    assert isinstance(record.content, EncounterContent)
    assert record.content.bhyt_number == bhyt_number


@pytest.mark.parametrize("disposition", ["home", "exp", "rehab"])
def test_known_discharge_disposition_is_accepted(disposition: str) -> None:
    accepted(
        encounter_input(status=EncounterStatus.FINISHED, end_time=NOW, discharge_disposition=disposition)
    )


# --- every other field, one wrong value at a time ---------------------------------------------------

WRONG_VALUES = [
    # encounter
    pytest.param(encounter(department="d" * 201), "department", id="encounter-department-long"),
    pytest.param(encounter(practitioner_id="p" * 65), "practitioner_id", id="encounter-practitioner-long"),
    pytest.param(
        encounter(discharge_disposition="gone"), "discharge_disposition", id="encounter-disposition"
    ),
    pytest.param(
        encounter(bhyt_number="DN6791234567890", benefit_level=4), "insurance.bhyt_number", id="bhyt-level-6"
    ),
    pytest.param(
        encounter(bhyt_number="dn4791234567890", benefit_level=4), "insurance.bhyt_number", id="bhyt-lc"
    ),
    pytest.param(
        encounter(bhyt_number="012345678", benefit_level=4), "insurance.bhyt_number", id="bhyt-9-digits"
    ),
    pytest.param(encounter(benefit_level=3), "insurance.bhyt_number", id="benefit-level-without-bhyt"),
    pytest.param(encounter(bhyt_number="0123456789"), "insurance.benefit_level", id="bhyt-without-level"),
    pytest.param(
        encounter(bhyt_number="0123456789", benefit_level=6), "insurance.benefit_level", id="benefit-level-6"
    ),
    # observation
    pytest.param(observation(loinc_code=""), "loinc_code", id="observation-loinc-missing"),
    pytest.param(observation(loinc_code="8867-5"), "loinc_code", id="observation-loinc-check-digit"),
    pytest.param(observation(loinc_code="heart rate"), "loinc_code", id="observation-loinc-text"),
    pytest.param(observation(status=None), "status", id="observation-status"),
    pytest.param(observation(effective_time=None), "effective_time", id="observation-time-missing"),
    pytest.param(
        observation(effective_time=NOW + timedelta(hours=1)), "effective_time", id="observation-future"
    ),
    pytest.param(observation(value_quantity=None), "value", id="observation-value-missing"),
    pytest.param(
        observation(value_quantity=Quantity(72.0, "bpm")), "value_quantity.unit", id="observation-unit"
    ),
    pytest.param(
        observation(value_quantity=Quantity(float("nan"), "/min")),
        "value_quantity.value",
        id="observation-nan",
    ),
    pytest.param(
        observation(value_quantity=Quantity(float("inf"), "/min")),
        "value_quantity.value",
        id="observation-inf",
    ),
    pytest.param(
        observation(value_quantity=None, value_coding=Coding("http://loinc.org", "")),
        "value_coding",
        id="observation-coding-without-code",
    ),
    pytest.param(
        observation(value_quantity=None, value_coding=Coding("", "LA6576-8")),
        "value_coding",
        id="observation-coding-without-system",
    ),
    pytest.param(observation(value_text="t" * 1001), "value_text", id="observation-text-long"),
    pytest.param(
        observation(value_quantity=Quantity(5.2, "mmol/L"), range_low=Quantity(70.0, "mg/dL")),
        "reference_range.low.unit",
        id="observation-range-low-unit",
    ),
    pytest.param(
        observation(value_quantity=Quantity(5.2, "mmol/L"), range_high=Quantity(100.0, "mg/dL")),
        "reference_range.high.unit",
        id="observation-range-high-unit",
    ),
    pytest.param(
        observation(value_quantity=None, value_text="trace", range_low=Quantity(1.0, "furlong")),
        "reference_range.low.unit",
        id="observation-range-unit-not-ucum",
    ),
    pytest.param(
        observation(value_quantity=None, value_text="trace", range_high=Quantity(float("-inf"), "mg/dL")),
        "reference_range.high.value",
        id="observation-range-value-infinite",
    ),
    pytest.param(observation(interpretation="high"), "interpretation", id="observation-interpretation"),
    # condition
    pytest.param(condition(icd10_code=""), "icd10_code", id="condition-code-missing"),
    pytest.param(condition(icd10_code="j18.9"), "icd10_code", id="condition-code-lowercase"),
    pytest.param(condition(clinical_status=None), "clinical_status", id="condition-status"),
    pytest.param(condition(role=None), "role", id="condition-role"),
    pytest.param(
        condition(recorded_time=None, onset_time=None), "recorded_time", id="condition-recorded-missing"
    ),
    pytest.param(
        condition(recorded_time=NOW + timedelta(hours=1), onset_time=None),
        "recorded_time",
        id="condition-recorded-future",
    ),
    pytest.param(
        condition(onset_time=EARLIER + timedelta(seconds=1)), "onset_time", id="condition-onset-after"
    ),
    # medication request
    pytest.param(medication_request(drug_code=" "), "drug_code", id="medication-code-missing"),
    pytest.param(medication_request(drug_code="c" * 65), "drug_code", id="medication-code-long"),
    pytest.param(medication_request(drug_name=""), "drug_name", id="medication-name-missing"),
    pytest.param(medication_request(drug_name="n" * 301), "drug_name", id="medication-name-long"),
    pytest.param(medication_request(status=None), "status", id="medication-status"),
    pytest.param(medication_request(authored_time=None), "authored_time", id="medication-authored-missing"),
    pytest.param(
        medication_request(authored_time=NOW + timedelta(days=1)),
        "authored_time",
        id="medication-authored-future",
    ),
    pytest.param(medication_request(dose=Quantity(500.0, "MG")), "dose.unit", id="medication-dose-unit"),
    pytest.param(
        medication_request(dose=Quantity(float("nan"), "mg")), "dose.value", id="medication-dose-value-nan"
    ),
    pytest.param(
        medication_request(quantity=Quantity(15.0, "tablets")), "quantity.unit", id="medication-qty-unit"
    ),
    pytest.param(medication_request(route="by mouth"), "route", id="medication-route"),
    pytest.param(medication_request(doses_per_day=25), "doses_per_day", id="medication-doses-25"),
    pytest.param(medication_request(doses_per_day=-1), "doses_per_day", id="medication-doses-negative"),
    pytest.param(medication_request(duration_days=367), "duration_days", id="medication-duration-367"),
    pytest.param(medication_request(duration_days=-1), "duration_days", id="medication-duration-negative"),
    # procedure
    pytest.param(procedure(code=""), "code", id="procedure-code-missing"),
    pytest.param(procedure(code="-39.95"), "code", id="procedure-code-leading-dash"),
    pytest.param(procedure(code="39 95"), "code", id="procedure-code-space"),
    pytest.param(procedure(code="9" * 33), "code", id="procedure-code-long"),
    pytest.param(procedure(status=None), "status", id="procedure-status"),
    pytest.param(
        procedure(performed_start_time=None, performed_end_time=None),
        "performed_start_time",
        id="procedure-start-missing",
    ),
    pytest.param(
        procedure(performed_end_time=EARLIER - timedelta(seconds=1)),
        "performed_end_time",
        id="procedure-end-before-start",
    ),
    pytest.param(
        procedure(performed_end_time=NOW + timedelta(hours=1)),
        "performed_end_time",
        id="procedure-end-future",
    ),
    pytest.param(procedure(performer_id="p" * 65), "performer_id", id="procedure-performer-long"),
    # document
    pytest.param(document(type_code="18842-4"), "type_code", id="document-type-check-digit"),
    pytest.param(document(type_code=""), "type_code", id="document-type-missing"),
    pytest.param(document(status=None), "status", id="document-status"),
    pytest.param(document(content_type=""), "content_type", id="document-mime-missing"),
    pytest.param(document(content_type="Application/PDF"), "content_type", id="document-mime-upper"),
    pytest.param(document(content_type="pdf"), "content_type", id="document-mime-no-slash"),
    pytest.param(document(content=b"", content_sha256=""), "content", id="document-content-empty"),
    pytest.param(document(document_time=None), "document_time", id="document-time-missing"),
    pytest.param(
        document(document_time=NOW + timedelta(hours=1)), "document_time", id="document-time-future"
    ),
    pytest.param(document(content_sha256="0" * 64), "content_sha256", id="document-sha-mismatch"),
    pytest.param(signed(signer_id=""), "signature.signer_id", id="signature-signer-missing"),
    pytest.param(signed(signer_id="s" * 65), "signature.signer_id", id="signature-signer-long"),
    pytest.param(
        signed(certificate_thumbprint=""), "signature.certificate_thumbprint", id="signature-tp-missing"
    ),
    pytest.param(
        signed(certificate_thumbprint=THUMBPRINT.upper()),
        "signature.certificate_thumbprint",
        id="signature-tp-uppercase",
    ),
    pytest.param(
        signed(certificate_thumbprint=THUMBPRINT[:-1]),
        "signature.certificate_thumbprint",
        id="signature-tp-short",
    ),
    pytest.param(signed(signature_algorithm="HS256"), "signature.algorithm", id="signature-algorithm-hmac"),
    pytest.param(signed(signature_algorithm=""), "signature.algorithm", id="signature-algorithm-missing"),
    pytest.param(signed(signed_time=None), "signature.signed_time", id="signature-time-missing"),
    pytest.param(
        signed(signed_time=NOW + timedelta(hours=1)), "signature.signed_time", id="signature-time-future"
    ),
]


@pytest.mark.parametrize("with_path", [False, True], ids=["plain", "prefixed"])
@pytest.mark.parametrize(("content", "field"), WRONG_VALUES)
def test_wrong_value_is_reported_at_its_field(content: Content, field: str, with_path: bool) -> None:
    path = path_of(content) if with_path else ""
    assert fields_of(resource(content, path=path)) == [prefixed(path, field)]


@pytest.mark.parametrize("content", EVERY_TYPE, ids=lambda c: type(c).__name__)
def test_valid_resource_of_every_type_is_accepted(content: Content) -> None:
    record = accepted(resource(content, path=path_of(content)))
    assert isinstance(record.content, type(content))
    assert record.resource_type is RESOURCE_TYPE[type(content)]


@pytest.mark.parametrize("content", EVERY_TYPE, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("with_path", [False, True], ids=["plain", "prefixed"])
def test_request_fields_are_reported_under_the_resource_path(content: Content, with_path: bool) -> None:
    path = path_of(content) if with_path else ""
    raw = resource(
        content, path=path, request_id=" ", patient_id=" ", facility_code="7900", encounter_id="e" * 65
    )
    assert fields_of(raw) == [
        "request_id",
        prefixed(path, "patient_id"),
        prefixed(path, "facility_code"),
        prefixed(path, "encounter_id"),
    ]


@pytest.mark.parametrize("content", EVERY_TYPE, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("resource_id", ["", "  ", "r" * 65])
def test_update_needs_the_resource_id(content: Content, resource_id: str) -> None:
    path = path_of(content)
    raw = resource(content, path=path, resource_id=resource_id)
    validate_resource(raw, NOW)  # a create does not carry the id
    assert fields_of(raw, updating=True) == [f"{path}.{ID_FIELD[type(content)]}"]


@pytest.mark.parametrize("content", EVERY_TYPE, ids=lambda c: type(c).__name__)
def test_update_with_a_resource_id_is_accepted(content: Content) -> None:
    validate_resource(resource(content, path=path_of(content), resource_id="res-1"), NOW, updating=True)


# --- observations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [ObservationStatus.REGISTERED, ObservationStatus.ENTERED_IN_ERROR])
def test_observation_without_value_is_accepted_when_registered_or_in_error(status: ObservationStatus) -> None:
    accepted(resource(observation(status=status, value_quantity=None)))


@pytest.mark.parametrize(
    "status", [ObservationStatus.PRELIMINARY, ObservationStatus.FINAL, ObservationStatus.AMENDED]
)
def test_observation_without_value_is_refused_otherwise(status: ObservationStatus) -> None:
    raw = resource(observation(status=status, value_quantity=None), path="resource.observation")
    assert violations_of(raw) == {
        "resource.observation.value": "required: value_quantity, value_coding or value_text"
    }


@pytest.mark.parametrize(
    "value",
    [
        {"value_coding": Coding("http://loinc.org", "LA6576-8", "Positive")},
        {"value_text": "Không phát hiện"},
        {"value_quantity": Quantity(0.0, "1")},
    ],
    ids=["coding", "text", "zero-quantity"],
)
def test_any_one_kind_of_value_is_enough(value: dict[str, Any]) -> None:
    accepted(resource(observation(**{"value_quantity": None, **value})))


@pytest.mark.parametrize(
    "unit", ["/min", "{beats}/min", "mm[Hg]", "Cel", "%", "mmol/L", "mg/dL", "10*9/L", "[IU]/L", "kg/m2"]
)
def test_ucum_unit_is_accepted(unit: str) -> None:
    accepted(resource(observation(value_quantity=Quantity(1.5, unit))))


@pytest.mark.parametrize("unit", ["", "bpm", "mmHg", "°C", "mg/dl", "MMOL/L", "mmol / L", "tablets"])
def test_unit_outside_the_ucum_subset_is_refused(unit: str) -> None:
    raw = resource(observation(value_quantity=Quantity(1.5, unit)), path="resource.observation")
    assert fields_of(raw) == ["resource.observation.value_quantity.unit"]


def test_reference_range_in_the_unit_of_the_value_is_accepted() -> None:
    content = observation(
        loinc_code="2345-7",
        value_quantity=Quantity(5.2, "mmol/L"),
        range_low=Quantity(3.9, "mmol/L"),
        range_high=Quantity(5.6, "mmol/L"),
        interpretation="N",
    )
    record = accepted(resource(content))
    assert record.code == "2345-7"


def test_both_range_bounds_in_another_unit_are_both_reported() -> None:
    content = observation(
        value_quantity=Quantity(5.2, "mmol/L"),
        range_low=Quantity(70.0, "mg/dL"),
        range_high=Quantity(100.0, "mg/dL"),
    )
    assert violations_of(resource(content)) == {
        "reference_range.low.unit": "must be the unit of value_quantity",
        "reference_range.high.unit": "must be the unit of value_quantity",
    }


def test_all_observation_violations_at_once() -> None:
    content = ObservationContent(
        loinc_code="8867-3",
        status=ObservationStatus.FINAL,
        effective_time=None,
        value_quantity=Quantity(float("nan"), "bpm"),
        interpretation="high",
    )
    assert fields_of(resource(content, path="resource.observation")) == [
        "resource.observation.loinc_code",
        "resource.observation.effective_time",
        "resource.observation.value_quantity.unit",
        "resource.observation.value_quantity.value",
        "resource.observation.interpretation",
    ]


# --- LOINC and ICD-10 ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["8867-4", "8480-6", "718-7", "2345-7", "18842-5", "29463-7", "2160-0"])
def test_real_loinc_codes_pass_the_check_digit(code: str) -> None:
    assert loinc_check_digit_ok(code)
    accepted(resource(observation(loinc_code=code)))


@pytest.mark.parametrize("code", ["8867-5", "8480-7", "718-0", "2345-8", "18842-4", "2160-9"])
def test_wrong_loinc_check_digit_fails(code: str) -> None:
    assert not loinc_check_digit_ok(code)


@pytest.mark.parametrize(
    "code", ["", "8867", "8867-", "-4", "88674", "8867-45", "8867_4", " 8867-4", "12345678-9"]
)
def test_malformed_loinc_fails(code: str) -> None:
    assert not loinc_check_digit_ok(code)


@pytest.mark.parametrize("code", ["J18.9", "E11", "A00.0", "I21.4", "U07.1", "C50.9"])
def test_icd10_code_is_accepted(code: str) -> None:
    record = accepted(resource(condition(icd10_code=code)))
    assert isinstance(record.content, ConditionContent)
    assert record.content.icd10_code == code


@pytest.mark.parametrize(
    "code", ["j18.9", "e11", "I0", "J18.", "J189", "18.9", "J18.12345", "J18-9", " J18.9"]
)
def test_malformed_icd10_code_is_refused(code: str) -> None:
    raw = resource(condition(icd10_code=code), path="resource.condition")
    assert violations_of(raw) == {"resource.condition.icd10_code": "not an ICD-10 code such as J18.9"}


def test_onset_equal_to_recorded_time_is_accepted() -> None:
    accepted(resource(condition(onset_time=EARLIER)))


# --- medication requests and procedures ------------------------------------------------------------


@pytest.mark.parametrize(("doses_per_day", "duration_days"), [(0, 0), (24, 366)])
def test_medication_bounds_are_inclusive(doses_per_day: int, duration_days: int) -> None:
    accepted(resource(medication_request(doses_per_day=doses_per_day, duration_days=duration_days)))


def test_medication_without_route_or_dose_is_accepted() -> None:
    accepted(resource(medication_request(route="", dose=None, quantity=None)))


def test_procedure_end_equal_to_start_is_accepted() -> None:
    accepted(resource(procedure(performed_end_time=EARLIER)))


# --- documents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "resource.document_reference"])
def test_document_over_the_size_limit_is_too_large_not_invalid(path: str) -> None:
    raw = resource(document(content=b"\0" * (MAX_DOCUMENT_BYTES + 1)), path=path)
    with pytest.raises(TooLargeError) as caught:
        validate_resource(raw, NOW)
    assert not isinstance(caught.value, InvalidArgumentError)
    assert caught.value.field == prefixed(path, "content")
    assert caught.value.limit_bytes == MAX_DOCUMENT_BYTES


def test_document_at_the_size_limit_is_accepted() -> None:
    record = accepted(resource(document(content=b"\0" * MAX_DOCUMENT_BYTES)))
    assert verify_document(record)


def test_caller_supplied_matching_sha256_is_accepted() -> None:
    record = accepted(resource(document(content_sha256=ABC_SHA256)))
    assert isinstance(record.content, DocumentContent)
    assert record.content.content_sha256 == ABC_SHA256


def test_sha256_mismatch_is_described() -> None:
    raw = resource(document(content_sha256="1" * 64), path="resource.document_reference")
    assert violations_of(raw) == {
        "resource.document_reference.content_sha256": "does not match the SHA-256 of content"
    }


def test_complete_signature_is_accepted() -> None:
    record = accepted(resource(signed()))
    assert isinstance(record.content, DocumentContent)
    assert record.content.signature_algorithm == "PS256"


@pytest.mark.parametrize(
    "part",
    [
        {"signer_id": "practitioner-7"},
        {"certificate_thumbprint": THUMBPRINT},
        {"signature_algorithm": "ES256"},
        {"signed_time": EARLIER},
    ],
    ids=["signer", "thumbprint", "algorithm", "time"],
)
def test_any_part_of_a_signature_requires_the_whole_signature(part: dict[str, Any]) -> None:
    path = "resource.document_reference"
    missing = {
        "signer_id": "signature.signer_id",
        "certificate_thumbprint": "signature.certificate_thumbprint",
        "signature_algorithm": "signature.algorithm",
        "signed_time": "signature.signed_time",
    }
    (given,) = part
    expected = [f"{path}.{name}" for key, name in missing.items() if key != given]
    assert fields_of(resource(document(**part), path=path)) == expected


# --- new_record, next_version, digests -------------------------------------------------------------


def test_new_record_takes_the_sha256_of_the_document() -> None:
    raw = resource(document(content=b"abc", content_sha256=""))
    record = new_record(raw, "doc-1", NOW)
    assert isinstance(record.content, DocumentContent)
    assert record.content.content_sha256 == ABC_SHA256
    assert record.content.content == b"abc"
    assert record.resource_type is ResourceType.DOCUMENT_REFERENCE
    assert verify_document(record)


def test_new_record_normalises_the_request_fields() -> None:
    raw = resource(observation(), patient_id=" patient-1\t", facility_code=" 79a01", encounter_id=" enc-1 ")
    record = new_record(raw, "obs-1", NOW)
    assert (record.patient_id, record.facility_code, record.encounter_id) == ("patient-1", "79A01", "enc-1")
    assert record.resource_type is ResourceType.OBSERVATION
    assert record.time == EARLIER
    assert record.code == "8867-4"
    assert record.status == "final"
    assert record.content_sha256 == content_digest(record.content)


def test_record_status_of_a_condition_is_its_clinical_status() -> None:
    record = new_record(resource(condition(clinical_status=ConditionClinicalStatus.REMISSION)), "c", NOW)
    assert record.status == "remission"
    assert record.code == ""


def stored(content: Content) -> ClinicalRecord:
    created = new_record(resource(content, request_id="req-1"), "res-1", NOW - timedelta(days=3))
    return replace(created, version=4)


def test_next_version_keeps_identity_and_creation_time() -> None:
    current = stored(observation())
    later = NOW + timedelta(minutes=1)
    raw = resource(
        observation(value_quantity=Quantity(80.0, "/min")),
        request_id="req-2",
        fingerprint="fp-2",
        patient_id=" patient-1 ",
        facility_code="79001 ",
        path="resource.observation",
    )
    updated = next_version(current, raw, later)
    assert updated.resource_id == "res-1"
    assert updated.version == 5
    assert updated.created_at == current.created_at
    assert updated.updated_at == later
    assert updated.request_id == "req-2"
    assert updated.request_fingerprint == "fp-2"
    assert isinstance(updated.content, ObservationContent)
    assert updated.content.value_quantity == Quantity(80.0, "/min")


def test_next_version_hashes_a_new_document() -> None:
    updated = next_version(stored(document(content=b"old")), resource(document(content=b"abc")), NOW)
    assert isinstance(updated.content, DocumentContent)
    assert updated.content.content_sha256 == ABC_SHA256


@pytest.mark.parametrize("path", ["", "resource.observation"])
def test_next_version_refuses_another_patient(path: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        next_version(stored(observation()), resource(observation(), patient_id="patient-2", path=path), NOW)
    assert [v.field for v in caught.value.violations] == [prefixed(path, "patient_id")]


@pytest.mark.parametrize("path", ["", "resource.observation"])
def test_next_version_refuses_another_facility(path: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        next_version(stored(observation()), resource(observation(), facility_code="79002", path=path), NOW)
    assert [v.field for v in caught.value.violations] == [prefixed(path, "facility_code")]


def test_next_version_reports_patient_and_facility_together() -> None:
    raw = resource(observation(), patient_id="patient-2", facility_code="01001", path="resource.observation")
    with pytest.raises(InvalidArgumentError) as caught:
        next_version(stored(observation()), raw, NOW)
    assert [v.field for v in caught.value.violations] == [
        "resource.observation.patient_id",
        "resource.observation.facility_code",
    ]


@pytest.mark.parametrize("content", EVERY_TYPE, ids=lambda c: type(c).__name__)
def test_content_digest_is_deterministic(content: Content) -> None:
    copy = replace(content)
    assert copy is not content
    digest = content_digest(content)
    assert digest == content_digest(copy)
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("content", "changed"),
    [
        (encounter(), encounter(reason="Ho kéo dài")),
        (encounter(), encounter(start_time=EARLIER - timedelta(microseconds=1))),
        (observation(), observation(value_quantity=Quantity(72.5, "/min"))),
        (observation(), observation(status=ObservationStatus.AMENDED)),
        (condition(), condition(icd10_code="J18.0")),
        (medication_request(), medication_request(doses_per_day=2)),
        (procedure(), procedure(performer_id="practitioner-8")),
        (document(), document(content=b"abd")),
        (document(), document(content_type="text/plain")),
    ],
    ids=[
        "encounter-reason",
        "encounter-start",
        "observation-value",
        "observation-status",
        "condition-code",
        "medication-doses",
        "procedure-performer",
        "document-bytes",
        "document-content-type",
    ],
)
def test_content_digest_changes_with_the_content(content: Content, changed: Content) -> None:
    assert content_digest(content) != content_digest(changed)


def test_verify_document_detects_tampered_bytes() -> None:
    record = new_record(resource(document(content=b"%PDF-1.7 synthetic")), "doc-1", NOW)
    assert verify_document(record)
    assert isinstance(record.content, DocumentContent)
    tampered = replace(record, content=replace(record.content, content=b"%PDF-1.7 synthetiC"))
    assert not verify_document(tampered)
    truncated = replace(record, content=replace(record.content, content=b"%PDF-1.7"))
    assert not verify_document(truncated)


def test_verify_document_passes_other_resources() -> None:
    assert verify_document(new_record(resource(observation()), "obs-1", NOW))


# --- check_timeline_query --------------------------------------------------------------------------


def timeline(**changes: Any) -> TimelineQuery:
    arguments: dict[str, Any] = {
        "patient_id": "patient-1",
        "resource_types": (ResourceType.OBSERVATION,),
        "start": NOW - timedelta(days=30),
        "end": NOW,
        "facility_code": "79001",
        "loinc_code": "",
        "limit": 50,
        "after": None,
    }
    arguments.update(changes)
    return check_timeline_query(**arguments)


def timeline_violations(**changes: Any) -> list[str]:
    with pytest.raises(InvalidArgumentError) as caught:
        timeline(**changes)
    return [v.field for v in caught.value.violations]


def test_timeline_query_is_normalised() -> None:
    after = (EARLIER, "obs-9")
    query = timeline(
        patient_id=" patient-1 ",
        resource_types=(ResourceType.OBSERVATION, ResourceType.CONDITION),
        facility_code=" 79a01 ",
        loinc_code="718-7",
        after=after,
    )
    assert query.patient_id == "patient-1"
    assert query.resource_types == (ResourceType.OBSERVATION, ResourceType.CONDITION)
    assert query.facility_code == "79A01"
    assert query.loinc_code == "718-7"
    assert query.limit == 50
    assert query.after == after


def test_timeline_query_without_filters_is_accepted() -> None:
    query = timeline(resource_types=(), start=None, end=None, facility_code="")
    assert (query.resource_types, query.start, query.end, query.facility_code) == ((), None, None, "")


def test_timeline_unknown_type_is_reported_by_index() -> None:
    types = (ResourceType.OBSERVATION, None, ResourceType.CONDITION, None)
    assert timeline_violations(resource_types=types) == ["resource_types[1]", "resource_types[3]"]


@pytest.mark.parametrize("end", [NOW - timedelta(days=31), NOW - timedelta(days=30)], ids=["before", "equal"])
def test_timeline_end_not_after_start(end: datetime) -> None:
    assert timeline_violations(end=end) == ["end_time"]


def test_timeline_open_ended_interval_is_accepted() -> None:
    assert timeline(end=None).end is None
    assert timeline(start=None).start is None


@pytest.mark.parametrize("facility_code", ["7900", "790012", "79-01"])
def test_timeline_bad_facility(facility_code: str) -> None:
    assert timeline_violations(facility_code=facility_code) == ["facility_code"]


@pytest.mark.parametrize("loinc_code", ["8867-5", "8867", "pulse"])
def test_timeline_bad_loinc(loinc_code: str) -> None:
    assert timeline_violations(loinc_code=loinc_code) == ["loinc_code"]


def test_timeline_reports_every_violation_at_once() -> None:
    assert timeline_violations(
        patient_id=" ",
        resource_types=(ResourceType.ENCOUNTER, None),
        end=NOW - timedelta(days=40),
        facility_code="x",
        loinc_code="718-8",
    ) == ["patient_id", "resource_types[1]", "end_time", "facility_code", "loinc_code"]


@pytest.mark.parametrize("code", ["C50.919", "Z99.89", "J18.8X", "Z99.7"])
def test_codes_outside_the_who_icd10_list_are_refused(code: str) -> None:
    # Well-formed, but ICD-10-CM (US) only or not in the WHO classification at all.
    assert not is_who_icd10_code(code)
