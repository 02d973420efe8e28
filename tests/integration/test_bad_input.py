"""Every slice RPC answers bad input with INVALID_ARGUMENT or NOT_FOUND naming the field, and
writes nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from emr.sync.v1 import sync_pb2
from google.protobuf.timestamp_pb2 import Timestamp


def stamp(offset_seconds: int) -> Timestamp:
    result = Timestamp()
    result.FromSeconds(int(time.time()) + offset_seconds)
    return result


async def expect_error(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert "Traceback" not in (caught.value.details() or "")
    return caught.value


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"full_name": "   "}, ["full_name"]),
        ({"birth_date": "1990-13-01"}, ["birth_date"]),
        ({"birth_date": "01/05/1990"}, ["birth_date"]),
        ({"birth_date": "2999-01-01"}, ["birth_date"]),
        ({"sex": identity_pb2.SEX_UNSPECIFIED}, ["sex"]),
        ({"facility_code": "7"}, ["facility_code"]),
        ({"request_id": ""}, ["request_id"]),
        (
            # A system number this server does not know, as an older or newer client might send.
            {"identifiers": [identity_pb2.Identifier(system=99, value="079192000001")]},  # type: ignore[arg-type]
            ["identifiers[0].system"],
        ),
        (
            {
                "identifiers": [
                    identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="12345")
                ]
            },
            ["identifiers[0].value"],
        ),
        (
            {
                "identifiers": [
                    identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="A-1")
                ]
            },
            ["identifiers[0].facility_code"],
        ),
        ({"full_name": "", "birth_date": "x", "sex": 0}, ["full_name", "birth_date", "sex"]),
    ],
)
async def test_register_patient_rejects_bad_fields(
    identity: Any,
    stored_documents: Any,
    registration: Any,
    facility_code: str,
    bad_fields: Any,
    overrides: Any,
    fields: Any,
) -> None:
    before = await stored_documents()
    error = await expect_error(
        identity.RegisterPatient(registration(facility_code, **overrides)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_fields(error) == fields
    assert await stored_documents() == before


async def test_get_patient_names_the_field(identity: Any, bad_fields: Any) -> None:
    error = await expect_error(
        identity.GetPatient(identity_pb2.GetPatientRequest(patient_id="")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_fields(error) == ["patient_id"]
    error = await expect_error(
        identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "patient_id" in (error.details() or "")


async def test_request_id_reused_for_different_content_is_refused(
    identity: Any, stored_documents: Any, registration: Any, facility_code: str
) -> None:
    first = registration(facility_code)
    created = await identity.RegisterPatient(first)
    repeated = await identity.RegisterPatient(first)
    assert repeated == created
    before = await stored_documents()
    changed = registration(facility_code, request_id=first.request_id, full_name="Lê Văn Tám")
    error = await expect_error(identity.RegisterPatient(changed), grpc.StatusCode.ABORTED)
    assert "request_id" in (error.details() or "")
    assert await stored_documents() == before


def encounter_request(
    patient_id: str, facility: str, /, **overrides: Any
) -> records_pb2.CreateEncounterRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "patient_id": patient_id,
        "facility_code": facility,
        "encounter_class": records_pb2.ENCOUNTER_CLASS_EMERGENCY,
        "status": records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
        "start_time": stamp(-60),
    }
    fields.update(overrides)
    return records_pb2.CreateEncounterRequest(**{k: v for k, v in fields.items() if v is not None})


async def test_create_encounter_for_unknown_patient_is_not_found(
    records: Any, stored_documents: Any, facility_code: str
) -> None:
    before = await stored_documents()
    error = await expect_error(
        records.CreateEncounter(encounter_request(str(uuid.uuid4()), facility_code)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "patient_id" in (error.details() or "")
    assert await stored_documents() == before


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"encounter_class": records_pb2.ENCOUNTER_CLASS_UNSPECIFIED}, ["encounter_class"]),
        ({"status": 42}, ["status"]),  # a value this server does not know
        ({"start_time": None}, ["start_time"]),
        ({"start_time": stamp(86_400)}, ["start_time"]),
        ({"end_time": stamp(-3_600)}, ["end_time"]),
        ({"facility_code": ""}, ["facility_code"]),
        ({"reason": "x" * 1001}, ["reason"]),
    ],
)
async def test_create_encounter_rejects_bad_fields(
    identity: Any,
    records: Any,
    stored_documents: Any,
    registration: Any,
    facility_code: str,
    bad_fields: Any,
    overrides: Any,
    fields: Any,
) -> None:
    patient = (await identity.RegisterPatient(registration(facility_code))).patient
    before = await stored_documents()
    error = await expect_error(
        records.CreateEncounter(encounter_request(patient.patient_id, facility_code, **overrides)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == fields
    assert await stored_documents() == before


async def test_encounter_reads_name_the_field(records: Any, bad_fields: Any) -> None:
    error = await expect_error(
        records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=str(uuid.uuid4()))),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "encounter_id" in (error.details() or "")
    error = await expect_error(
        records.ListEncounters(records_pb2.ListEncountersRequest(patient_id="p", page_token="%%%")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["page_token"]
    error = await expect_error(
        records.ListEncounters(records_pb2.ListEncountersRequest(patient_id="p", page_size=1000)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["page_size"]
    error = await expect_error(
        records.ListChanges(records_pb2.ListChangesRequest(after_sequence=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["after_sequence"]


async def test_audit_rejects_malformed_events_and_stores_none(
    audit: Any, mongo: Any, bad_fields: Any
) -> None:
    before = await mongo["emr_audit"]["events"].count_documents({})
    good = audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        source_service="test",
        occurred_time=stamp(0),
    )
    bad = audit_pb2.AuditEvent(
        event_id="",
        action=audit_pb2.AUDIT_ACTION_UNSPECIFIED,
        outcome=audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE,
        source_service="t",
    )
    error = await expect_error(
        audit.AppendEvents(audit_pb2.AppendEventsRequest(events=[good, bad])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["events[1].event_id", "events[1].action", "events[1].occurred_time"]
    assert await mongo["emr_audit"]["events"].count_documents({}) == before
    error = await expect_error(
        audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id="")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_fields(error) == ["patient_id"]


async def test_sync_status_rejects_bad_facility(sync: Any, bad_fields: Any) -> None:
    error = await expect_error(
        sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code="not-a-code")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["facility_code"]
