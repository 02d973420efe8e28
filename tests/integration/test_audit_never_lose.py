"""The audit client never loses an event: while audit is down, identity and records spool events in
their own databases and replay them, in order, when audit returns; an event recorded by a call that
returned is never lost, even when the caller is killed (-9) right after."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.tokens import caller_metadata

BURST = 12


def registration(facility_code: str) -> identity_pb2.RegisterPatientRequest:
    serial = uuid.uuid4().int % 10**6
    return identity_pb2.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name="Phạm Minh Tuấn",
        birth_date="1985-07-20",
        sex=identity_pb2.SEX_MALE,
        facility_code=facility_code,
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079085{serial:06d}")
        ],
    )


def encounter(patient_id: str, facility_code: str) -> records_pb2.CreateEncounterRequest:
    start, end = Timestamp(), Timestamp()
    start.FromSeconds(int(time.time()) - 3600)
    end.FromSeconds(int(time.time()) - 60)
    return records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code=facility_code,
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=start,
        end_time=end,
        reason="Tái khám tăng huyết áp",
    )


async def spool_depth(metrics_port: int) -> float:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    match = re.search(r"^emr_audit_spool_depth (\S+)$", body, re.MULTILINE)
    assert match, "spool depth metric missing"
    return float(match.group(1))


def callers_of(audit_target: str, name: str) -> dict[str, str]:
    return {
        f"{name.upper()}_MONGODB_DATABASE": f"emr_{name}_{uuid.uuid4().hex[:8]}",
        f"{name.upper()}_AUDIT_TARGET": audit_target,
    }


async def test_audit_down_during_a_burst_every_event_arrives_in_order_with_a_valid_chain(
    service_instance: Any, audit_database: str, open_channel: Any, tools: Any, facility_code: str
) -> None:
    audit_service = service_instance("audit", tools.audit_env(audit_database))
    identity_service = service_instance("identity", callers_of(audit_service.target, "identity"))
    records_service = service_instance(
        "records",
        {**callers_of(audit_service.target, "records"), "RECORDS_IDENTITY_TARGET": identity_service.target},
    )
    identity = identity_pb2_grpc.PatientIdentityServiceStub(open_channel(identity_service.target))
    records = records_pb2_grpc.ClinicalRecordsServiceStub(open_channel(records_service.target))
    actor = f"dr-burst-{uuid.uuid4().hex[:6]}"
    metadata = caller_metadata(actor, facility_code, "TREATMENT", role="doctor")

    audit_service.stop()
    identity_calls: list[tuple[str, str]] = []
    records_calls: list[tuple[str, str]] = []
    for _ in range(BURST):
        patient_id = (
            await identity.RegisterPatient(registration(facility_code), metadata=metadata)
        ).patient.patient_id
        identity_calls.append(("RegisterPatient", patient_id))
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=metadata)
        identity_calls.append(("GetPatient", patient_id))
        await records.CreateEncounter(encounter(patient_id, facility_code), metadata=metadata)
        records_calls.append(("CreateEncounter", patient_id))
    # Every call succeeded; its event waits in the caller's spool (records' patient check on
    # identity is an audited read too).
    assert await spool_depth(identity_service.metrics_port) == 3 * BURST
    assert await spool_depth(records_service.metrics_port) == BURST

    audit_service.start()
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(audit_service.target))

    async def all_arrived() -> list[audit_pb2.AuditEvent] | None:
        events = await tools.all_events(audit, actor_id=actor)
        return events if len(events) == 3 * BURST else None

    events = await tools.poll_until(all_arrived)
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    arrived = [(e.source_service, e.operation.rsplit("/", 1)[1], e.patient_id) for e in events]
    assert [(op, p) for source, op, p in arrived if source == "identity"] == identity_calls
    assert [(op, p) for source, op, p in arrived if source == "records"] == records_calls
    assert all(e.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS for e in events)
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert verdict.intact, verdict.problem
    assert verdict.checked_events == 4 * BURST  # ours, and records' patient checks

    async def spools_empty() -> bool | None:
        depths = [await spool_depth(s.metrics_port) for s in (identity_service, records_service)]
        return True if depths == [0, 0] else None

    await tools.poll_until(spools_empty)


async def test_kill_9_right_after_a_call_returned_loses_no_event(
    service_instance: Any, audit_database: str, open_channel: Any, tools: Any, facility_code: str
) -> None:
    audit_service = service_instance("audit", tools.audit_env(audit_database))
    identity_service = service_instance("identity", callers_of(audit_service.target, "identity"))
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(audit_service.target))
    metadata = caller_metadata(f"dr-kill-{uuid.uuid4().hex[:6]}", facility_code, "TREATMENT")

    # Audit up: the event is in the audit log before the call returns.
    identity = identity_pb2_grpc.PatientIdentityServiceStub(open_channel(identity_service.target))
    registered = await identity.RegisterPatient(registration(facility_code), metadata=metadata)
    identity_service.kill()
    stored = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=registered.patient.patient_id))
    assert [e.operation.rsplit("/", 1)[1] for e in stored.events] == ["RegisterPatient"]

    # Audit down: the event is in identity's spool before the call returns; a restarted identity
    # replays it.
    audit_service.stop()
    identity_service.start()
    identity = identity_pb2_grpc.PatientIdentityServiceStub(open_channel(identity_service.target))
    spooled = await identity.RegisterPatient(registration(facility_code), metadata=metadata)
    identity_service.kill()
    audit_service.start()
    identity_service.start()
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(audit_service.target))

    async def arrived() -> list[audit_pb2.AuditEvent] | None:
        page = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=spooled.patient.patient_id))
        return list(page.events) or None

    events = await tools.poll_until(arrived)
    assert [e.operation.rsplit("/", 1)[1] for e in events] == ["RegisterPatient"]
    assert events[0].resource_id == spooled.patient.patient_id


async def test_a_refused_call_with_a_malformed_patient_id_is_audited_without_the_id(
    identity: Any, audit: Any, mongo: Any, tools: Any, facility_code: str
) -> None:
    actor = f"dr-typed-{uuid.uuid4().hex[:6]}"
    metadata = caller_metadata(actor, facility_code, "TREATMENT")
    typed = "Lê Văn Tám 0912 345 678"  # a name and a phone typed into the id field (synthetic)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=typed), metadata=metadata)
    assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)

    async def recorded() -> list[audit_pb2.AuditEvent] | None:
        return await tools.all_events(audit, actor_id=actor) or None

    [event] = await tools.poll_until(recorded)
    assert event.outcome == audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE
    assert event.operation.endswith("/GetPatient")
    assert event.patient_id == "" and not event.entities
    assert "Tám" not in str(event) and "0912" not in str(event)
    # Audit took it as it came: nothing was set aside as refused.
    set_aside = await mongo["emr_identity"]["audit_spool_rejected"].find().to_list(None)
    assert actor not in [audit_pb2.AuditEvent.FromString(d["event"]).actor_id for d in set_aside]
