"""Unit tests of the deliveries of identity's patient changes (pure: no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from emr.identity.v1 import identity_pb2

from emr_sync.domain import DeliveryKind, DeliveryStatus, delivery_sequence, partition_of
from emr_sync.service import patient_change_delivery

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
COMMITTED = datetime(2024, 6, 15, 8, 29, tzinfo=UTC)
PATIENT_ID = "0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d"
SURVIVOR_ID = "5a0e4c52-9d7b-4f61-8a33-0c1f2e3d4b5a"
PARTITIONS = 16


def change(**fields: object) -> identity_pb2.PatientChange:
    patient = identity_pb2.Patient(
        patient_id=PATIENT_ID,
        full_name="Nguyễn Thị Ngọc Điệp",
        birth_date="1990-05-01",
        sex=identity_pb2.SEX_FEMALE,
        registering_facility_code="79001",
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079190000001")
        ],
        version=2,
    )
    values: dict[str, object] = {
        "sequence": 41,
        "kind": identity_pb2.PATIENT_CHANGE_KIND_UPDATED,
        "patient_id": PATIENT_ID,
        "patient_version": 2,
        "patient": patient,
    }
    values.update(fields)
    message = identity_pb2.PatientChange(**values)  # type: ignore[arg-type]
    message.commit_time.FromDatetime(COMMITTED)
    return message


def patient_of(payload: bytes) -> dict[str, object]:
    bundle = json.loads(payload)
    assert bundle["type"] == "transaction"
    (entry,) = bundle["entry"]
    assert entry["request"] == {"method": "PUT", "url": f"Patient/{PATIENT_ID}"}
    resource: dict[str, object] = entry["resource"]
    return resource


def test_a_change_is_one_patient_delivery_keyed_by_its_feed_position() -> None:
    delivery = patient_change_delivery(change(), PARTITIONS, NOW)
    assert delivery.delivery_id == f"Patient/{PATIENT_ID}/_history/41"
    assert delivery.kind is DeliveryKind.FHIR_TRANSACTION
    assert (delivery.resource_type, delivery.resource_id, delivery.resource_version) == (
        "Patient",
        PATIENT_ID,
        41,
    )
    # The patient's partition and feed order, as its encounters' deliveries use.
    assert delivery.partition == partition_of(PATIENT_ID, PARTITIONS)
    assert delivery.sequence == delivery_sequence(41, DeliveryKind.FHIR_TRANSACTION)
    assert delivery.facility_code == "79001"
    assert delivery.status is DeliveryStatus.PENDING
    assert (delivery.committed_at, delivery.created_at, delivery.next_attempt_at) == (COMMITTED, NOW, NOW)
    patient = patient_of(delivery.payload)
    assert patient["active"] is True
    assert patient["meta"] == {"versionId": "41", "lastUpdated": "2024-06-15T08:29:00Z"}
    assert "link" not in patient


def test_a_merged_person_is_sent_inactive_and_replaced_by_its_survivor() -> None:
    merged = change(kind=identity_pb2.PATIENT_CHANGE_KIND_MERGED, other_patient_id=SURVIVOR_ID)
    merged.merged_into_patient_id = SURVIVOR_ID
    patient = patient_of(patient_change_delivery(merged, PARTITIONS, NOW).payload)
    assert patient["active"] is False
    assert patient["link"] == [{"other": {"reference": f"Patient/{SURVIVOR_ID}"}, "type": "replaced-by"}]


def test_a_survivor_is_sent_with_the_persons_it_replaces() -> None:
    survivor = change(kind=identity_pb2.PATIENT_CHANGE_KIND_MERGE_SURVIVOR, other_patient_id=SURVIVOR_ID)
    survivor.merged_patient_ids.append(SURVIVOR_ID)
    patient = patient_of(patient_change_delivery(survivor, PARTITIONS, NOW).payload)
    assert patient["active"] is True
    assert patient["link"] == [{"other": {"reference": f"Patient/{SURVIVOR_ID}"}, "type": "replaces"}]


def test_a_change_without_its_person_is_a_dead_letter_with_the_reason() -> None:
    orphan = change()
    orphan.ClearField("patient")
    delivery = patient_change_delivery(orphan, PARTITIONS, NOW)
    assert delivery.status is DeliveryStatus.DEAD
    assert delivery.last_error == "patient unknown to the identity service"
    assert delivery.dead_at == NOW
    assert delivery.payload == b""


def test_an_invalid_bundle_is_a_dead_letter_naming_where_without_patient_data() -> None:
    # A birth date FHIR cannot hold: the payload cannot be built, and the reason names no value.
    broken = change()
    broken.patient.birth_date = "01/05/1990"
    delivery = patient_change_delivery(broken, PARTITIONS, NOW)
    assert delivery.status is DeliveryStatus.DEAD
    assert delivery.last_error.startswith("invalid FHIR R4 Bundle: ")
    assert "birthDate" in delivery.last_error
    assert "01/05/1990" not in delivery.last_error
