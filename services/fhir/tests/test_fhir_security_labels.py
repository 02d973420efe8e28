"""Unit tests of the security labels of special categories of clinical data in FHIR (emr_fhir;
pure, no I/O): a sensitive resource is labelled restricted with its category's sensitivity policy;
an ordinary one carries no label."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2, sensitivity_pb2
from fhir.resources.R4B.bundle import Bundle
from google.protobuf.timestamp_pb2 import Timestamp

from emr_fhir.resources import (
    SYSTEM_ACT_CODE,
    SYSTEM_CONFIDENTIALITY,
    clinical_resource,
    security_labels,
    transaction_bundle,
)

PATIENT_ID = str(uuid.UUID(int=1))
ENCOUNTER_ID = str(uuid.UUID(int=2))
CONDITION_ID = str(uuid.UUID(int=3))
HIV = sensitivity_pb2.SENSITIVITY_CATEGORY_HIV
SUBSTANCE_USE = sensitivity_pb2.SENSITIVITY_CATEGORY_SUBSTANCE_USE


def stamp() -> Timestamp:
    moment = Timestamp()
    moment.FromDatetime(datetime(2026, 3, 10, 9, 0, tzinfo=UTC))
    return moment


def condition(*categories: Any) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        condition=records_pb2.Condition(
            condition_id=CONDITION_ID,
            patient_id=PATIENT_ID,
            facility_code="79001",
            encounter_id=ENCOUNTER_ID,
            icd10_code="F11.2",
            clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
            role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
            recorded_time=stamp(),
            version=1,
            create_time=stamp(),
        ),
        sensitivity=categories,
    )


def test_a_sensitive_resource_is_labelled_restricted_with_its_categories_policies() -> None:
    fhir = clinical_resource(condition(SUBSTANCE_USE, HIV))
    assert fhir["meta"]["versionId"] == "1"
    assert [(label["system"], label["code"]) for label in fhir["meta"]["security"]] == [
        (SYSTEM_CONFIDENTIALITY, "R"),
        (SYSTEM_ACT_CODE, "HIV"),
        (SYSTEM_ACT_CODE, "ETH"),
    ]
    assert "security" not in clinical_resource(condition())["meta"]
    assert security_labels([sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED]) == []


def test_a_labelled_encounter_bundle_is_a_valid_r4b_bundle() -> None:
    encounter = records_pb2.Encounter(
        encounter_id=ENCOUNTER_ID,
        patient_id=PATIENT_ID,
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=stamp(),
        version=2,
        create_time=stamp(),
        sensitivity=[SUBSTANCE_USE],
    )
    patient = identity_pb2.Patient(
        patient_id=PATIENT_ID, full_name="Nguyễn Thị Thử", birth_date="1990-05-01", create_time=stamp()
    )
    bundle = transaction_bundle(patient, encounter, [condition(SUBSTANCE_USE)])
    Bundle.model_validate(bundle)
    labelled = {
        entry["resource"]["resourceType"]: [
            label["code"] for label in entry["resource"]["meta"].get("security", [])
        ]
        for entry in bundle["entry"]
    }
    assert labelled == {"Patient": [], "Encounter": ["R", "ETH"], "Condition": ["R", "ETH"]}
