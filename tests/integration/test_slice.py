"""The thin slice end to end, through real processes: register a patient, record an encounter,
find the audit trail, see the national system receive the encounter and the person and sync report it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from emr.sync.v1 import sync_pb2
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.tokens import caller_metadata, issue_token

T = TypeVar("T")
CLINICIAN = caller_metadata("dr-synthetic-01", "79001", "TREATMENT")


async def eventually(probe: Callable[[], Awaitable[T | None]], within_seconds: float = 60.0) -> T:
    """Polls ``probe`` until it returns a value: asynchronous delivery has a deadline, not a delay."""
    deadline = time.monotonic() + within_seconds
    while True:
        value = await probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)


def now_timestamp(offset_seconds: int = 0) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time()) + offset_seconds)
    return stamp


async def test_register_encounter_audit_and_national_delivery(
    stack: Any, identity: Any, records: Any, audit: Any, sync: Any, registration: Any, facility_code: str
) -> None:
    registered = await identity.RegisterPatient(registration(facility_code), metadata=CLINICIAN)
    assert registered.outcome == identity_pb2.REGISTRATION_OUTCOME_CREATED
    patient_id = registered.patient.patient_id

    fetched = await identity.GetPatient(
        identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=CLINICIAN
    )
    assert fetched.patient == registered.patient

    created = await records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility_code,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=now_timestamp(-3600),
            end_time=now_timestamp(-600),
            reason="Khám sức khỏe định kỳ",
        ),
        metadata=CLINICIAN,
    )
    encounter = created.encounter
    assert encounter.version == 1
    assert encounter.patient_id == patient_id

    got = await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=encounter.encounter_id))
    assert got.encounter == encounter
    listed = await records.ListEncounters(records_pb2.ListEncountersRequest(patient_id=patient_id))
    assert [e.encounter_id for e in listed.encounters] == [encounter.encounter_id]

    # Audit: every access above is in the log, attributed, with outcome and no clinical content.
    # (Sync's own reads for the national report are audited too; they are checked further down.)
    async def audit_trail() -> list[audit_pb2.AuditEvent] | None:
        page = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=patient_id))
        ours = [e for e in page.events if e.actor_id != "service:sync"]
        return ours if len(ours) >= 6 else None

    events = await eventually(audit_trail)
    operations = sorted(e.operation.rsplit("/", 1)[1] for e in events)
    # GetPatient twice: ours, and the records service's existence check of the patient.
    assert operations == sorted(
        ["RegisterPatient", "GetPatient", "GetPatient", "CreateEncounter", "GetEncounter", "ListEncounters"]
    )
    register_event = next(e for e in events if e.operation.endswith("/RegisterPatient"))
    assert register_event.actor_id == "dr-synthetic-01"
    assert register_event.actor_facility_code == "79001"
    assert register_event.action == audit_pb2.AUDIT_ACTION_CREATE
    assert register_event.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
    assert all(e.sequence > 0 and e.HasField("record_time") for e in events)
    # The records service checked the patient with identity on the caller's behalf; that read is audited too.
    assert any(e.actor_id == "service:records" and e.operation.endswith("/GetPatient") for e in events)

    # National delivery: the emulator receives the finished encounter, as valid FHIR R4, once.
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:

        async def delivered() -> dict[str, Any] | None:
            held = (await http.get("/resources", params={"resource_id": encounter.encounter_id})).json()
            return held["items"][0] if held["count"] else None

        delivery = await eventually(delivered)

        # And the person, from identity's patient changes: its own Patient, versioned by the change
        # (the encounter's bundle carries the Patient too, without a version).
        async def patient_delivered() -> dict[str, Any] | None:
            held = (await http.get("/resources", params={"resource_id": patient_id})).json()
            return next((item for item in held["items"] if item["version"]), None)

        patient_delivery = await eventually(patient_delivered)
    resource = FhirEncounter.model_validate(delivery["resource"])
    assert resource.status == "finished"
    assert resource.subject.reference == f"urn:uuid:{patient_id}"
    assert FhirPatient.model_validate(patient_delivery["resource"]).active is True

    async def sync_reports_delivered() -> sync_pb2.GetSyncStatusResponse | None:
        status = await sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code=facility_code))
        return status if status.delivered == 2 else None

    status = await eventually(sync_reports_delivered)
    sync_reads = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=patient_id))
    assert {e.operation.rsplit("/", 1)[1] for e in sync_reads.events if e.actor_id == "service:sync"} == {
        "GetPatient",
        "GetEncounterBundle",
    }
    assert status.pending == 0
    assert status.failed == 0
    assert status.HasField("last_delivered_time")
    assert status.records_cursor >= 1
    assert status.identity_cursor >= 1


async def test_gateway_serves_patient_as_fhir_r4(
    stack: Any, identity: Any, registration: Any, facility_code: str
) -> None:
    registered = await identity.RegisterPatient(registration(facility_code))
    patient_id = registered.patient.patient_id
    portal = {"Authorization": f"Bearer {issue_token('portal-test')}"}
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=portal) as http:
        response = await http.get(f"/fhir/Patient/{patient_id}")
        missing = await http.get(f"/fhir/Patient/{uuid.uuid4()}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    patient = FhirPatient.model_validate(response.json())
    assert patient.id == patient_id
    assert patient.birthDate.isoformat() == "1992-03-14"
    assert patient.name[0].family == "Trần"
    assert patient.name[0].given == registered.patient.full_name.split()[1:]
    assert patient.identifier[0].value == registered.patient.identifiers[0].value

    assert missing.status_code == 404
    outcome = OperationOutcome.model_validate(missing.json())
    assert outcome.issue[0].code == "not-found"
    assert "patient_id" in outcome.issue[0].diagnostics


async def test_metrics_follow_go_grpc_prometheus_names(stack: Any, identity: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=str(uuid.uuid4())))
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://127.0.0.1:{stack.ports.identity_metrics}/metrics")).text
    assert (
        'grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetPatient",'
        'grpc_service="emr.identity.v1.PatientIdentityService",grpc_type="unary"}' in body
    )
    assert "grpc_server_handling_seconds_bucket{" in body
    assert 'grpc_server_started_total{grpc_method="GetPatient"' in body
