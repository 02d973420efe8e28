"""The breach workflow against the real audit service and FerretDB: a breach for one actor lists
exactly the patients that actor touched (two actors touching overlapping and distinct patients),
the notification carries the counts, the 72-hour deadline is tracked, status changes follow their
rules (also when two officers change one incident at once), only the data-protection officer
(auditor) may use it, and bad input is refused naming the field."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, breach_pb2, breach_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.observability import scrape
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata

READ = audit_pb2.AUDIT_EVENT_SUBTYPE_READ
SEARCH = audit_pb2.AUDIT_EVENT_SUBTYPE_SEARCH
EXPORT = audit_pb2.AUDIT_EVENT_SUBTYPE_EXPORT


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


@pytest.fixture(scope="module")
async def breaches(stack: Stack) -> Any:
    channel = stack.dev_channel(stack.target("audit"))
    yield breach_pb2_grpc.BreachServiceStub(channel)
    await channel.close()


@pytest.fixture
def officer() -> list[tuple[str, str]]:
    return caller_metadata(f"dpo-{uuid.uuid4().hex[:8]}", role="auditor")


def access(
    actor_id: str,
    patient_id: str,
    occurred: datetime,
    subtype: audit_pb2.AuditEventSubtype = READ,
    resource: tuple[str, str] = ("Encounter", ""),
    outcome: audit_pb2.AuditOutcome = audit_pb2.AUDIT_OUTCOME_SUCCESS,
    entities: tuple[audit_pb2.AuditEntity, ...] = (),
) -> audit_pb2.AuditEvent:
    action = {READ: audit_pb2.AUDIT_ACTION_READ, SEARCH: audit_pb2.AUDIT_ACTION_SEARCH}.get(
        subtype, audit_pb2.AUDIT_ACTION_EXPORT
    )
    return audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=action,
        outcome=outcome,
        occurred_time=stamp(occurred),
        actor_id=actor_id,
        actor_facility_code="79001",
        source_service="records",
        operation="/emr.records.v1.ClinicalRecordsService/GetEncounter",
        patient_id=patient_id,
        resource_type=resource[0],
        resource_id=resource[1],
        subtype=subtype,
        entities=list(entities),
    )


def incident_request(scope: breach_pb2.BreachScope, discovered: datetime, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "category": breach_pb2.BREACH_CATEGORY_CONFIDENTIALITY,
        "description": "A stolen clerk account read records of patients outside its ward.",
        "discovered_time": stamp(discovered),
        "occurred_time": stamp(discovered - timedelta(hours=5)),
        "reported_by": "IT security desk",
        "scope": scope,
        "contact_point": "Data-protection officer, dpo@hospital.example",
        "likely_consequences": "Disclosure of diagnoses to an unknown party.",
        "measures_taken": "Account disabled, sessions revoked, passwords reset.",
        **fields,
    }
    return breach_pb2.RecordIncidentRequest(**values)


@pytest.fixture(scope="module")
async def touched(audit: Any) -> dict[str, Any]:
    """Two actors: A reads p1 and p2 (and p5 as an entity of a search), and is refused p4; B reads
    p2 (overlap with A) and p3 (B's alone)."""
    serial = uuid.uuid4().hex[:8]
    actor_a, actor_b = f"clerk-a-{serial}", f"clerk-b-{serial}"
    p1, p2, p3, p4, p5 = (f"pat-{serial}-{n}" for n in range(1, 6))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    events = [
        access(actor_a, p1, base, resource=("Encounter", f"enc-{serial}-1")),
        access(actor_a, p1, base + timedelta(minutes=30), EXPORT, ("Patient", p1)),
        access(actor_a, p2, base + timedelta(minutes=10), resource=("Encounter", f"enc-{serial}-2")),
        access(actor_a, p4, base + timedelta(minutes=11), outcome=audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE),
        access(
            actor_a,
            "",
            base + timedelta(minutes=12),
            SEARCH,
            ("Patient", ""),
            entities=(
                audit_pb2.AuditEntity(
                    role=audit_pb2.AUDIT_ENTITY_ROLE_PATIENT,
                    patient_id=p5,
                    resource_type="Patient",
                    resource_id=p5,
                ),
            ),
        ),
        access(actor_b, p2, base + timedelta(minutes=20), resource=("Encounter", f"enc-{serial}-2")),
        access(actor_b, p3, base + timedelta(minutes=21), resource=("Encounter", f"enc-{serial}-3")),
    ]
    await audit.AppendEvents(audit_pb2.AppendEventsRequest(events=events))
    return {"a": actor_a, "b": actor_b, "p": (p1, p2, p3, p4, p5), "base": base}


async def all_affected(breaches: Any, incident_id: str, officer: Any) -> tuple[list[Any], int]:
    patients: list[Any] = []
    token = ""
    pages = 0
    while True:
        page = await breaches.ListAffectedPatients(
            breach_pb2.ListAffectedPatientsRequest(incident_id=incident_id, page_size=2, page_token=token),
            metadata=officer,
        )
        patients.extend(page.patients)
        pages += 1
        token = page.next_page_token
        if not token:
            return patients, pages


async def test_a_breach_for_one_actor_lists_exactly_the_patients_that_actor_touched(
    breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    p1, p2, p3, _p4, p5 = touched["p"]
    now = datetime.now(UTC)
    for actor, expected in ((touched["a"], [p1, p2, p5]), (touched["b"], [p2, p3])):
        recorded = await breaches.RecordIncident(
            incident_request(breach_pb2.BreachScope(actor_id=actor), now - timedelta(hours=1)),
            metadata=officer,
        )
        patients, pages = await all_affected(breaches, recorded.incident.incident_id, officer)
        assert [p.patient_id for p in patients] == sorted(expected)
        assert pages == (len(expected) + 1) // 2
    # Actor A's incident: first/last access and kinds of access of p1.
    recorded = await breaches.RecordIncident(
        incident_request(breach_pb2.BreachScope(actor_id=touched["a"]), now), metadata=officer
    )
    patients, _ = await all_affected(breaches, recorded.incident.incident_id, officer)
    first = next(p for p in patients if p.patient_id == p1)
    base: datetime = touched["base"]
    assert first.first_access_time.ToDatetime(tzinfo=UTC) == base
    assert first.last_access_time.ToDatetime(tzinfo=UTC) == base + timedelta(minutes=30)
    assert sorted(first.access_kinds) == sorted([READ, EXPORT])
    assert first.access_count == 2
    assert list(first.data_categories) == ["Encounter", "Patient"]


async def test_a_time_window_narrows_the_breach(breaches: Any, touched: dict[str, Any], officer: Any) -> None:
    base: datetime = touched["base"]
    p1, p2, *_ = touched["p"]
    scope = breach_pb2.BreachScope(
        actor_id=touched["a"], start_time=stamp(base), end_time=stamp(base + timedelta(minutes=11))
    )
    recorded = await breaches.RecordIncident(incident_request(scope, datetime.now(UTC)), metadata=officer)
    patients, _ = await all_affected(breaches, recorded.incident.incident_id, officer)
    assert [p.patient_id for p in patients] == sorted([p1, p2])


async def test_the_notification_has_the_counts_and_the_content_the_law_asks(
    breaches: Any, touched: dict[str, Any], officer: Any, mongo: Any
) -> None:
    recorded = await breaches.RecordIncident(
        incident_request(breach_pb2.BreachScope(actor_id=touched["a"]), datetime.now(UTC)), metadata=officer
    )
    # What leaked is stored encrypted, never as given.
    stored = await mongo["emr_audit"]["breach_incidents"].find_one({"_id": recorded.incident.incident_id})
    assert stored is not None
    for text in ("description", "likely_consequences", "measures_taken"):
        assert stored[text].startswith("enc1:")
    assert "stolen clerk" not in str(stored)
    notification = await breaches.GetBreachNotification(
        breach_pb2.GetBreachNotificationRequest(incident_id=recorded.incident.incident_id), metadata=officer
    )
    # p1, p2, p5; records: enc-1, Patient p1, enc-2, Patient p5; accesses: 4 successful.
    assert (notification.affected_patients, notification.affected_records, notification.access_events) == (
        3,
        4,
        4,
    )
    document = json.loads(notification.notification_json)
    assert document["data_subjects"]["approximate_number"] == 3
    assert document["personal_data"]["approximate_number_of_records"] == 4
    assert document["personal_data"]["categories"] == ["Encounter", "Patient"]
    assert document["nature"]["description"] == recorded.incident.description
    assert document["contact_point"] == recorded.incident.contact_point
    assert document["measures_taken_or_proposed"] == recorded.incident.measures_taken
    assert document["likely_consequences"] == recorded.incident.likely_consequences
    assert document["deadline_state"] == "pending"
    assert "Approximate number of data subjects: 3" in notification.notification_text
    # Patient ids are for the officer's own notification of patients, not the authority's document.
    assert touched["p"][0] not in notification.notification_json


async def test_the_deadline_runs_72_hours_from_discovery(
    breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    now = datetime.now(UTC)
    scope = breach_pb2.BreachScope(actor_id=touched["b"])
    expected = {
        1: breach_pb2.BREACH_DEADLINE_STATE_PENDING,
        60: breach_pb2.BREACH_DEADLINE_STATE_DUE_SOON,
        80: breach_pb2.BREACH_DEADLINE_STATE_OVERDUE,
    }
    ids: dict[int, str] = {}
    for hours_ago, state in expected.items():
        discovered = now - timedelta(hours=hours_ago)
        recorded = await breaches.RecordIncident(incident_request(scope, discovered), metadata=officer)
        incident = recorded.incident
        assert incident.status == breach_pb2.BREACH_STATUS_OPEN
        assert incident.deadline_state == state
        deadline = incident.notification_deadline.ToDatetime(tzinfo=UTC)
        assert deadline == incident.discovered_time.ToDatetime(tzinfo=UTC) + timedelta(hours=72)
        ids[hours_ago] = incident.incident_id

    # Overdue: a notification now needs the reasons for the delay, both produced and recorded.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await breaches.GetBreachNotification(
            breach_pb2.GetBreachNotificationRequest(incident_id=ids[80]), metadata=officer
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    late = await breaches.GetBreachNotification(
        breach_pb2.GetBreachNotificationRequest(incident_id=ids[80], delay_reason="forensics first"),
        metadata=officer,
    )
    assert json.loads(late.notification_json)["reasons_for_delay"] == "forensics first"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await breaches.ChangeIncidentStatus(
            breach_pb2.ChangeIncidentStatusRequest(
                incident_id=ids[80], status=breach_pb2.BREACH_STATUS_NOTIFIED
            ),
            metadata=officer,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    notified = await breaches.ChangeIncidentStatus(
        breach_pb2.ChangeIncidentStatusRequest(
            incident_id=ids[80],
            status=breach_pb2.BREACH_STATUS_NOTIFIED,
            delay_reason="forensics first",
            authority_reference="A05-2026-0001",
        ),
        metadata=officer,
    )
    assert notified.incident.status == breach_pb2.BREACH_STATUS_NOTIFIED
    assert notified.incident.deadline_state == breach_pb2.BREACH_DEADLINE_STATE_MISSED

    # Due soon, notified in time: met; then closed; the history keeps both changes.
    await breaches.ChangeIncidentStatus(
        breach_pb2.ChangeIncidentStatusRequest(incident_id=ids[60], status=breach_pb2.BREACH_STATUS_NOTIFIED),
        metadata=officer,
    )
    closed = await breaches.ChangeIncidentStatus(
        breach_pb2.ChangeIncidentStatusRequest(incident_id=ids[60], status=breach_pb2.BREACH_STATUS_CLOSED),
        metadata=officer,
    )
    fetched = await breaches.GetIncident(breach_pb2.GetIncidentRequest(incident_id=ids[60]), metadata=officer)
    for incident in (closed.incident, fetched.incident):
        assert incident.status == breach_pb2.BREACH_STATUS_CLOSED
        assert incident.deadline_state == breach_pb2.BREACH_DEADLINE_STATE_MET
        assert [c.status for c in incident.history] == [
            breach_pb2.BREACH_STATUS_NOTIFIED,
            breach_pb2.BREACH_STATUS_CLOSED,
        ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await breaches.ChangeIncidentStatus(
            breach_pb2.ChangeIncidentStatusRequest(
                incident_id=ids[60], status=breach_pb2.BREACH_STATUS_CLOSED, note="again"
            ),
            metadata=officer,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_two_officers_notifying_one_incident_at_once_make_one_change(
    breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    recorded = await breaches.RecordIncident(
        incident_request(breach_pb2.BreachScope(actor_id=touched["b"]), datetime.now(UTC)), metadata=officer
    )
    incident_id = recorded.incident.incident_id
    request = breach_pb2.ChangeIncidentStatusRequest(
        incident_id=incident_id, status=breach_pb2.BREACH_STATUS_NOTIFIED
    )
    outcomes = await asyncio.gather(
        *(breaches.ChangeIncidentStatus(request, metadata=officer) for _ in range(4)), return_exceptions=True
    )
    succeeded = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(succeeded) == 1 and len(refused) == 3
    assert {e.code() for e in refused} <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
    fetched = await breaches.GetIncident(
        breach_pb2.GetIncidentRequest(incident_id=incident_id), metadata=officer
    )
    assert [c.status for c in fetched.incident.history] == [breach_pb2.BREACH_STATUS_NOTIFIED]


async def test_a_repeated_request_returns_the_same_incident_and_a_reused_id_is_refused(
    breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    request = incident_request(breach_pb2.BreachScope(facility_code="79001"), datetime.now(UTC))
    first = await breaches.RecordIncident(request, metadata=officer)
    again = await breaches.RecordIncident(request, metadata=officer)
    assert again.incident.incident_id == first.incident.incident_id
    changed = breach_pb2.RecordIncidentRequest()
    changed.CopyFrom(request)
    changed.description = "something else"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await breaches.RecordIncident(changed, metadata=officer)
    assert refused.value.code() == grpc.StatusCode.ABORTED


async def test_bad_input_is_refused_naming_the_field(breaches: Any, officer: Any, bad_fields: Any) -> None:
    bad = breach_pb2.RecordIncidentRequest(request_id=str(uuid.uuid4()), description="x")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await breaches.RecordIncident(bad, metadata=officer)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_fields(refused.value)) >= {"category", "scope", "discovered_time", "reported_by"}
    for call, request in (
        (breaches.GetIncident, breach_pb2.GetIncidentRequest()),
        (breaches.ListAffectedPatients, breach_pb2.ListAffectedPatientsRequest(page_token="forged")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=officer)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await breaches.GetIncident(breach_pb2.GetIncidentRequest(incident_id="no-such"), metadata=officer)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_only_the_data_protection_officer_may_use_it(breaches: Any, touched: dict[str, Any]) -> None:
    doctor = caller_metadata("dr-breach", "79001", "TREATMENT", role="doctor")
    request = incident_request(breach_pb2.BreachScope(actor_id=touched["a"]), datetime.now(UTC))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await breaches.RecordIncident(request, metadata=doctor)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def unnotified(stack: Stack) -> dict[str, float]:
    """The audit service's gauge of unnotified incidents, by deadline state."""
    return {
        sample.labels["deadline_state"]: sample.value
        for family in text_string_to_metric_families(scrape(stack.ports.audit_metrics))
        if family.name == "emr_audit_breach_incidents_unnotified"
        for sample in family.samples
    }


async def test_the_gauge_counts_unnotified_incidents_near_or_past_their_deadline(
    stack: Stack, breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    before = unnotified(stack)
    assert set(before) == {"due_soon", "overdue"}
    scope = breach_pb2.BreachScope(actor_id=touched["a"])
    now = datetime.now(UTC)
    overdue = await breaches.RecordIncident(
        incident_request(scope, now - timedelta(hours=73)), metadata=officer
    )
    await breaches.RecordIncident(incident_request(scope, now - timedelta(hours=50)), metadata=officer)
    await breaches.RecordIncident(incident_request(scope, now - timedelta(hours=2)), metadata=officer)
    assert unnotified(stack) == {"due_soon": before["due_soon"] + 1, "overdue": before["overdue"] + 1}
    await breaches.ChangeIncidentStatus(
        breach_pb2.ChangeIncidentStatusRequest(
            incident_id=overdue.incident.incident_id,
            status=breach_pb2.BREACH_STATUS_NOTIFIED,
            delay_reason="the account's owner was reached only on the fourth day",
        ),
        metadata=officer,
    )
    assert unnotified(stack) == {"due_soon": before["due_soon"] + 1, "overdue": before["overdue"]}


async def test_the_officer_s_own_steps_are_in_the_audit_log_without_patients(
    audit: Any, breaches: Any, touched: dict[str, Any]
) -> None:
    officer_id = f"dpo-{uuid.uuid4().hex[:8]}"
    officer = caller_metadata(officer_id, role="auditor")
    recorded = await breaches.RecordIncident(
        incident_request(breach_pb2.BreachScope(actor_id=touched["a"]), datetime.now(UTC)), metadata=officer
    )
    incident_id = recorded.incident.incident_id
    await all_affected(breaches, incident_id, officer)
    await breaches.GetBreachNotification(
        breach_pb2.GetBreachNotificationRequest(incident_id=incident_id), metadata=officer
    )
    logged = await audit.QueryEvents(audit_pb2.QueryEventsRequest(actor_id=officer_id, page_size=50))
    steps = [(e.operation.rsplit("/", 1)[1], e.resource_id, e.patient_id) for e in logged.events]
    assert steps == [
        ("RecordIncident", incident_id, ""),
        ("ListAffectedPatients", incident_id, ""),
        ("ListAffectedPatients", incident_id, ""),
        ("GetBreachNotification", incident_id, ""),
    ]
    # A breach scoped to the officer lists nobody: the officer's steps refer to no patient.
    own = await breaches.RecordIncident(
        incident_request(breach_pb2.BreachScope(actor_id=officer_id), datetime.now(UTC)), metadata=officer
    )
    patients, _ = await all_affected(breaches, own.incident.incident_id, officer)
    assert patients == []


async def test_incidents_are_listed_most_recently_discovered_first_by_status(
    breaches: Any, touched: dict[str, Any], officer: Any
) -> None:
    # Discovered in the future of every other test's incidents: these three come first.
    now = datetime.now(UTC)
    scope = breach_pb2.BreachScope(actor_id=touched["b"])
    ids = []
    for minutes in (3, 2, 1):
        recorded = await breaches.RecordIncident(
            incident_request(scope, now + timedelta(seconds=minutes * 30)), metadata=officer
        )
        ids.append(recorded.incident.incident_id)
    notified = breach_pb2.ChangeIncidentStatusRequest(
        incident_id=ids[1],
        status=breach_pb2.BREACH_STATUS_NOTIFIED,
        notified_time=stamp(now + timedelta(seconds=60)),  # not before its discovery
    )
    await breaches.ChangeIncidentStatus(notified, metadata=officer)
    first = await breaches.ListIncidents(breach_pb2.ListIncidentsRequest(page_size=2), metadata=officer)
    assert [i.incident_id for i in first.incidents] == ids[:2]
    second = await breaches.ListIncidents(
        breach_pb2.ListIncidentsRequest(page_size=1, page_token=first.next_page_token), metadata=officer
    )
    assert [i.incident_id for i in second.incidents] == ids[2:]
    open_ones = await breaches.ListIncidents(
        breach_pb2.ListIncidentsRequest(status=breach_pb2.BREACH_STATUS_OPEN, page_size=2), metadata=officer
    )
    assert [i.incident_id for i in open_ones.incidents] == [ids[0], ids[2]]
    assert all(i.status == breach_pb2.BREACH_STATUS_OPEN for i in open_ones.incidents)
