"""Audit queries over an end-to-end run of the platform: filters (patient, actor, facility, type,
time range) with paging, the patient's access report, and a scan of every stored event for the
synthetic names, identifier values and clinical values the run used: none may be there."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.tokens import caller_metadata

FULL_NAME = "Hoàng Thị Ngọc Ánh"
BIRTH_DATE = "1991-11-23"
REASON = "Đau thắt ngực khi gắng sức, HA 165/95"


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


@pytest.fixture(scope="module")
async def run(identity: Any, records: Any, audit: Any, tools: Any) -> dict[str, Any]:
    """A doctor and a nurse touch one synthetic patient's data."""
    serial = uuid.uuid4().int % 10**6
    cccd = f"079191{serial:06d}"
    started = datetime.now(UTC) - timedelta(seconds=1)
    doctor = caller_metadata(f"dr-q-{serial}", "79001", "TREATMENT", role="doctor")
    # The nurse's facility treats the patient (registered there): the access policy allows her reads.
    nurse = caller_metadata(f"rn-q-{serial}", "79001", "TREATMENT", role="nurse")
    registered = await identity.RegisterPatient(
        identity_pb2.RegisterPatientRequest(
            request_id=str(uuid.uuid4()),
            full_name=FULL_NAME,
            birth_date=BIRTH_DATE,
            sex=identity_pb2.SEX_FEMALE,
            facility_code="79001",
            identifiers=[identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=cccd)],
        ),
        metadata=doctor,
    )
    patient_id = registered.patient.patient_id
    now = int(time.time())
    created = await records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code="79001",
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            # In progress: sync reads (audited) only finished visits, and its reads would land at
            # any moment in the counts these tests compare.
            status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
            start_time=Timestamp(seconds=now - 3600),
            reason=REASON,
        ),
        metadata=doctor,
    )
    for _ in range(3):
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=nurse)
    await records.ListEncounters(records_pb2.ListEncountersRequest(patient_id=patient_id), metadata=nurse)

    async def arrived() -> list[audit_pb2.AuditEvent] | None:
        events = await tools.all_events(audit, patient_id=patient_id)
        return events if any(e.operation.endswith("/ListEncounters") for e in events) else None

    events = await tools.poll_until(arrived)
    return {
        "patient_id": patient_id,
        "cccd": cccd,
        "encounter_id": created.encounter.encounter_id,
        "doctor": f"dr-q-{serial}",
        "nurse": f"rn-q-{serial}",
        "started": started,
        "events": events,
    }


async def test_events_are_ibalp_shaped(run: dict[str, Any]) -> None:
    by_operation = {e.operation.rsplit("/", 1)[1]: e for e in run["events"]}
    created = by_operation["CreateEncounter"]
    assert created.subtype == audit_pb2.AUDIT_EVENT_SUBTYPE_CREATE
    assert created.type == audit_pb2.AUDIT_EVENT_TYPE_REST
    assert created.retention_class == audit_pb2.AUDIT_RETENTION_CLASS_STANDARD
    requestor = next(a for a in created.agents if a.requestor)
    assert (requestor.type, requestor.who, requestor.role, requestor.facility_code) == (
        audit_pb2.AUDIT_AGENT_TYPE_USER,
        run["doctor"],
        "doctor",
        "79001",
    )
    assert requestor.network_address.startswith("ipv4:127.0.0.1:")
    assert any(
        a.who == "records" and a.type == audit_pb2.AUDIT_AGENT_TYPE_APPLICATION for a in created.agents
    )
    assert [(x.role, x.resource_type, x.resource_id) for x in created.entities] == [
        (audit_pb2.AUDIT_ENTITY_ROLE_PATIENT, "Patient", ""),
        (audit_pb2.AUDIT_ENTITY_ROLE_RESOURCE, "Encounter", run["encounter_id"]),
    ]
    assert all(x.patient_id == run["patient_id"] for x in created.entities)
    assert by_operation["ListEncounters"].subtype == audit_pb2.AUDIT_EVENT_SUBTYPE_SEARCH
    assert len(created.hash) == 32 and len(created.previous_hash) == 32


async def test_query_filters_combine_and_page(audit: Any, run: dict[str, Any], tools: Any) -> None:
    patient_id = run["patient_id"]
    nurse_reads = await tools.all_events(
        audit, patient_id=patient_id, actor_id=run["nurse"], subtype=audit_pb2.AUDIT_EVENT_SUBTYPE_READ
    )
    assert [e.operation.rsplit("/", 1)[1] for e in nurse_reads] == ["GetPatient"] * 3
    by_facility = await tools.all_events(audit, facility_code="79001", actor_id=run["nurse"])
    assert len(by_facility) == 4 and all(e.actor_facility_code == "79001" for e in by_facility)
    in_window = await tools.all_events(
        audit, patient_id=patient_id, start_time=stamp(run["started"]), end_time=stamp(datetime.now(UTC))
    )
    assert len(in_window) == len(run["events"])
    before_run = await tools.all_events(
        audit, patient_id=patient_id, end_time=stamp(run["started"] - timedelta(seconds=1))
    )
    assert before_run == []

    pages: list[list[int]] = []
    token = ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(patient_id=patient_id, page_size=3, page_token=token)
        )
        pages.append([e.sequence for e in page.events])
        token = page.next_page_token
        if not token:
            break
    assert [s for page in pages for s in page] == [e.sequence for e in run["events"]]
    assert all(len(page) == 3 for page in pages[:-1])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(
                actor_id="x", start_time=stamp(datetime.now(UTC)), end_time=stamp(run["started"])
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_patient_access_report_says_who_by_role_and_facility_not_by_name(
    audit: Any, run: dict[str, Any]
) -> None:
    report = await audit.GetPatientAccessReport(
        audit_pb2.GetPatientAccessReportRequest(
            patient_id=run["patient_id"], start_time=stamp(run["started"])
        )
    )
    summary = {(s.accessor_role, s.facility_code, s.resource_type): s.access_count for s in report.summaries}
    people = {key: count for key, count in summary.items() if key[0] != "service"}
    assert people == {
        ("doctor", "79001", "Patient"): 1,
        ("doctor", "79001", "Encounter"): 1,
        ("nurse", "79001", "Patient"): 3,
        ("nurse", "79001", "Encounter"): 1,
    }
    # records' checks of the patient with identity appear as a platform service, not a person.
    assert sum(summary.values()) == len(run["events"])
    assert len(report.accesses) == len(run["events"])
    text = str(report)
    assert run["doctor"] not in text and run["nurse"] not in text  # roles, never staff ids


async def test_stored_events_hold_no_names_identifiers_or_clinical_values(
    mongo: Any, run: dict[str, Any]
) -> None:
    """Scans every event stored by every audit database of this session (the platform's, and the
    other audit tests' own: their bursts registered patients and recorded encounters too)."""
    stored_texts = []
    for name in await mongo.list_database_names():
        if name.startswith("emr_audit"):
            documents = await mongo[name]["events"].find().to_list(None)
            stored_texts.append(json.dumps(documents, default=str, ensure_ascii=False))
    stored = "\n".join(stored_texts)
    assert run["patient_id"] in stored  # the scan does see this run's events
    forbidden = [
        FULL_NAME,
        "Ngọc Ánh",
        "Hoàng Thị",
        run["cccd"],
        BIRTH_DATE,
        REASON,
        "165/95",
        "Trần Thị Thu Hà",  # the other tests' synthetic patients and visits
        "1992-03-14",
        "Phạm Minh Tuấn",
        "1985-07-20",
        "079085",
        "Tái khám tăng huyết áp",
        "Khám sức khỏe định kỳ",
    ]
    assert [value for value in forbidden if value in stored] == []


@pytest.mark.parametrize(
    ("call", "request_message", "field"),
    [
        ("QueryEvents", audit_pb2.QueryEventsRequest(), "patient_id"),
        ("QueryEvents", audit_pb2.QueryEventsRequest(patient_id="p", subtype=99), "subtype"),  # type: ignore[arg-type]
        ("QueryEvents", audit_pb2.QueryEventsRequest(patient_id="p", page_token="not-a-token"), "page_token"),
        (
            "QueryEvents",
            audit_pb2.QueryEventsRequest(patient_id="p", start_time=Timestamp(seconds=-(10**12))),
            "start_time",
        ),
        ("GetPatientAccessReport", audit_pb2.GetPatientAccessReportRequest(), "patient_id"),
        ("GetCheckpoint", audit_pb2.GetCheckpointRequest(index=-1), "index"),
        ("GetInclusionProof", audit_pb2.GetInclusionProofRequest(sequence=0), "sequence"),
        ("VerifyIntegrity", audit_pb2.VerifyIntegrityRequest(from_sequence=-1), "from_sequence"),
        ("VerifyIntegrity", audit_pb2.VerifyIntegrityRequest(from_sequence=9, to_sequence=3), "to_sequence"),
    ],
)
async def test_bad_requests_name_the_field(
    audit: Any, bad_fields: Any, call: str, request_message: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(audit, call)(request_message)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == [field]


async def test_export_of_a_bad_range_names_the_field(audit: Any, bad_fields: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in audit.ExportEvents(audit_pb2.ExportEventsRequest(from_sequence=-5)):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == ["from_sequence"]


async def test_missing_checkpoint_and_event_are_not_found(audit: Any) -> None:
    for call, request_message in (
        ("GetCheckpoint", audit_pb2.GetCheckpointRequest(index=10**9)),
        ("GetInclusionProof", audit_pb2.GetInclusionProofRequest(sequence=10**9)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(audit, call)(request_message)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
