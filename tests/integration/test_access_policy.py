"""Authentication, the access policy and break-the-glass against the real platform: every RPC of
every service × every role, as the one policy table (emr_runtime.policy) says; cross-facility
reads; denials audited as failures; reads opened by an emergency access (DeclareEmergencyAccess)
flagged, counted and in the access report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc, breach_pb2, breach_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc, privacy_pb2, privacy_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc, retention_pb2, retention_pb2_grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.observability import scrape
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata, issue_token
from emr_runtime.policy import PATIENT, POLICY, ROLES

SERVICES = {
    "identity": (identity_pb2, identity_pb2_grpc, "PatientIdentityService"),
    "privacy": (privacy_pb2, privacy_pb2_grpc, "PrivacyRequestService"),
    "records": (records_pb2, records_pb2_grpc, "ClinicalRecordsService"),
    "audit": (audit_pb2, audit_pb2_grpc, "AuditService"),
    "breach": (breach_pb2, breach_pb2_grpc, "BreachService"),
    "sync": (sync_pb2, sync_pb2_grpc, "NationalSyncService"),
    "retention": (retention_pb2, retention_pb2_grpc, "RecordRetentionService"),
}
# The process serving a contract, where it is not the contract's own name.
SERVED_BY = {"retention": "records", "breach": "audit", "privacy": "identity"}
DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class World:
    """A patient registered at ``facility`` with an encounter and an observation there."""

    facility: str
    other_facility: str
    patient_id: str
    encounter_id: str
    observation_id: str


@pytest.fixture
async def world(clinical: Any) -> World:
    suffix = uuid.uuid4().int % 9000
    facility, other = f"7{suffix:04d}", f"8{suffix:04d}"
    patient_id = await clinical.patient(facility)
    encounter_id = await clinical.encounter(patient_id, facility)
    observation = clinical.every_resource(patient_id, facility, encounter_id)[0]
    created = await clinical.create(observation)
    return World(facility, other, patient_id, encounter_id, created.observation.observation_id)


def requests_for(world: World) -> dict[str, Message]:
    """A request per RPC that satisfies the facility scope of a caller of ``world.facility``:
    only the role decides. Writes are incomplete on purpose (INVALID_ARGUMENT after the policy
    allowed them): the table test never writes."""
    observation = records_pb2.ClinicalResource(
        observation=records_pb2.Observation(facility_code=world.facility)
    )
    p, e, r, f = world.patient_id, world.encounter_id, world.observation_id, world.facility
    observation_type = records_pb2.RESOURCE_TYPE_OBSERVATION
    return {
        "RegisterPatient": identity_pb2.RegisterPatientRequest(facility_code=f),
        "GetPatient": identity_pb2.GetPatientRequest(patient_id=p),
        "UpdatePatient": identity_pb2.UpdatePatientRequest(patient_id=p),
        "MatchPatient": identity_pb2.MatchPatientRequest(),
        "SearchPatients": identity_pb2.SearchPatientsRequest(),
        "ListReviewTasks": identity_pb2.ListReviewTasksRequest(page_size=1),
        "ResolveReviewTask": identity_pb2.ResolveReviewTaskRequest(),
        "MergePatients": identity_pb2.MergePatientsRequest(),
        "UnmergePatients": identity_pb2.UnmergePatientsRequest(),
        "GetPersonHistory": identity_pb2.GetPersonHistoryRequest(patient_id=p),
        "CheckRegistration": identity_pb2.CheckRegistrationRequest(patient_id=p, facility_code=f),
        "ListPatientChanges": identity_pb2.ListPatientChangesRequest(after_sequence=10**12, limit=1),
        "RecordSharingGrant": identity_pb2.RecordSharingGrantRequest(facility_code=f),
        "RevokeSharingGrant": identity_pb2.RevokeSharingGrantRequest(facility_code=f),
        "ListSharingGrants": identity_pb2.ListSharingGrantsRequest(patient_id=p),
        "RecordReferral": identity_pb2.RecordReferralRequest(facility_code=f),
        "DeclareEmergencyAccess": identity_pb2.DeclareEmergencyAccessRequest(facility_code=f),
        "ListEmergencyAccesses": identity_pb2.ListEmergencyAccessesRequest(page_size=1),
        "ReviewEmergencyAccess": identity_pb2.ReviewEmergencyAccessRequest(),
        "CheckAccess": identity_pb2.CheckAccessRequest(patient_id=p, facility_code=f),
        "CreateEncounter": records_pb2.CreateEncounterRequest(facility_code=f),
        "GetEncounter": records_pb2.GetEncounterRequest(encounter_id=e),
        "ListEncounters": records_pb2.ListEncountersRequest(patient_id=p),
        "ListChanges": records_pb2.ListChangesRequest(after_sequence=10**12, limit=1),
        "StreamChanges": records_pb2.StreamChangesRequest(after_sequence=10**12),
        "CreateResource": records_pb2.CreateResourceRequest(resource=observation),
        "UpdateResource": records_pb2.UpdateResourceRequest(resource=observation),
        "GetResource": records_pb2.GetResourceRequest(resource_type=observation_type, resource_id=r),
        "GetResourceHistory": records_pb2.GetResourceHistoryRequest(
            resource_type=observation_type, resource_id=r
        ),
        "GetPatientTimeline": records_pb2.GetPatientTimelineRequest(patient_id=p),
        "ListObservations": records_pb2.ListObservationsRequest(patient_id=p),
        "GetEncounterBundle": records_pb2.GetEncounterBundleRequest(encounter_id=e),
        "ExportPatient": records_pb2.ExportPatientRequest(patient_id=p),
        "AppendEvents": audit_pb2.AppendEventsRequest(),
        "QueryEvents": audit_pb2.QueryEventsRequest(patient_id=p, page_size=1),
        "GetPatientAccessReport": audit_pb2.GetPatientAccessReportRequest(patient_id=p),
        "GetCheckpoint": audit_pb2.GetCheckpointRequest(),
        "GetPublicKey": audit_pb2.GetPublicKeyRequest(),
        "GetInclusionProof": audit_pb2.GetInclusionProofRequest(sequence=1),
        "VerifyIntegrity": audit_pb2.VerifyIntegrityRequest(from_sequence=1, to_sequence=1),
        "ExportEvents": audit_pb2.ExportEventsRequest(from_sequence=1, to_sequence=1),
        "GetSyncStatus": sync_pb2.GetSyncStatusRequest(),
        "RecordIncident": breach_pb2.RecordIncidentRequest(),
        "GetIncident": breach_pb2.GetIncidentRequest(),
        "ListIncidents": breach_pb2.ListIncidentsRequest(page_size=1),
        "ChangeIncidentStatus": breach_pb2.ChangeIncidentStatusRequest(),
        "ListAffectedPatients": breach_pb2.ListAffectedPatientsRequest(),
        "GetBreachNotification": breach_pb2.GetBreachNotificationRequest(),
        "ListDeadLetters": sync_pb2.ListDeadLettersRequest(),
        "RetryDeadLetter": sync_pb2.RetryDeadLetterRequest(),
        "Replay": sync_pb2.ReplayRequest(),
        "Reconcile": sync_pb2.ReconcileRequest(),
        # Retention: reads, and writes refused after the policy for a missing field.
        "GetRecordRetention": retention_pb2.GetRecordRetentionRequest(
            resource_type=observation_type, resource_id=r
        ),
        "ClassifyRecord": retention_pb2.ClassifyRecordRequest(),
        "PlaceLegalHold": retention_pb2.PlaceLegalHoldRequest(),
        "ReleaseLegalHold": retention_pb2.ReleaseLegalHoldRequest(),
        "ListDueRecords": retention_pb2.ListDueRecordsRequest(),
        "RequestDisposal": retention_pb2.RequestDisposalRequest(),
        "ApproveDisposal": retention_pb2.ApproveDisposalRequest(),
        "GetDisposal": retention_pb2.GetDisposalRequest(),
        "FileDataSubjectRequest": privacy_pb2.FileDataSubjectRequestRequest(patient_id=p, facility_code=f),
        "GetDataSubjectRequest": privacy_pb2.GetDataSubjectRequestRequest(data_subject_request_id="none"),
        "ListDataSubjectRequests": privacy_pb2.ListDataSubjectRequestsRequest(patient_id=p, page_size=1),
        "UpdateDataSubjectRequestStatus": privacy_pb2.UpdateDataSubjectRequestStatusRequest(facility_code=f),
    }


def every_rpc() -> list[str]:
    """Every method of every platform service, as its descriptor lists it."""
    methods: list[str] = []
    for module, _, service in SERVICES.values():
        descriptor = module.DESCRIPTOR.services_by_name[service]
        methods.extend(f"/{descriptor.full_name}/{method.name}" for method in descriptor.methods)
    return methods


def test_every_rpc_of_every_service_has_a_policy() -> None:
    assert sorted(every_rpc()) == sorted(POLICY)


async def outcome(stub: Any, method: str, request: Message, metadata: Any) -> grpc.StatusCode:
    call = getattr(stub, method)(request, metadata=metadata, timeout=10)
    try:
        if hasattr(call, "read"):  # server streaming: the policy answers before the first message
            message = await call.read()
            call.cancel()
            return grpc.StatusCode.OK if message is not grpc.aio.EOF else await call.code()
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_every_rpc_times_every_role_is_what_the_table_says(
    stack: Stack, channels: dict[str, grpc.aio.Channel], world: World
) -> None:
    requests = requests_for(world)
    stubs = {
        name: getattr(grpc_module, f"{service}Stub")(channels[SERVED_BY.get(name, name)])
        for name, (_, grpc_module, service) in SERVICES.items()
    }
    wrong: list[str] = []
    for role in sorted(ROLES):
        # A patient token acts for the world's patient (its patient_id claim).
        patient_id = world.patient_id if role == PATIENT else ""
        metadata = caller_metadata(
            f"{role}-table", world.facility, "TREATMENT", role=role, patient_id=patient_id
        )
        for full_method, rule in POLICY.items():
            service_name = full_method.split("/")[1]
            name = next(
                n for n, (m, _, s) in SERVICES.items() if f"{m.DESCRIPTOR.package}.{s}" == service_name
            )
            method = full_method.rsplit("/", 1)[1]
            code = await outcome(stubs[name], method, requests[method], metadata)
            allowed = role in rule.roles
            if (allowed and code in DENIED) or (not allowed and code != grpc.StatusCode.PERMISSION_DENIED):
                wrong.append(f"{role} {method}: {code.name} (table says {'allow' if allowed else 'deny'})")
    assert wrong == []


async def test_a_nurse_of_another_facility_is_denied_and_the_denial_is_audited(
    identity: Any, records: Any, audit: Any, world: World, tools: Any
) -> None:
    actor = f"rn-elsewhere-{uuid.uuid4().hex[:6]}"
    nurse = caller_metadata(actor, world.other_facility, "TREATMENT", role="nurse")
    for call in (
        identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=world.patient_id), metadata=nurse),
        records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=world.patient_id), metadata=nurse
        ),
        # By id: the patient is known only from the record, checked before it leaves records.
        records.GetEncounter(
            records_pb2.GetEncounterRequest(encounter_id=world.encounter_id), metadata=nurse
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no access to this patient's data" in (denied.value.details() or "")

    async def failures() -> list[audit_pb2.AuditEvent] | None:
        events = await tools.all_events(audit, actor_id=actor)
        return events if len(events) == 3 else None

    events = await tools.poll_until(failures)
    assert {e.outcome for e in events} == {audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE}
    assert sorted(e.operation.rsplit("/", 1)[1] for e in events) == [
        "GetEncounter",
        "GetPatient",
        "GetPatientTimeline",
    ]
    assert all(e.actor_facility_code == world.other_facility for e in events)


async def test_an_encounter_at_their_facility_shows_a_nurse_that_facility_s_records_only(
    clinical: Any, records: Any, world: World
) -> None:
    facility = f"6{uuid.uuid4().int % 10000:04d}"
    doctor = caller_metadata("dr-visiting", facility, "TREATMENT", role="doctor")
    nurse = caller_metadata("rn-visiting", facility, "TREATMENT", role="nurse")
    timeline = records_pb2.GetPatientTimelineRequest(patient_id=world.patient_id)
    with pytest.raises(grpc.aio.AioRpcError) as before:
        await records.GetPatientTimeline(timeline, metadata=nurse)
    assert before.value.code() == grpc.StatusCode.PERMISSION_DENIED
    created = await records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=world.patient_id,
            facility_code=facility,
            encounter_class=records_pb2.ENCOUNTER_CLASS_EMERGENCY,
            status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
            start_time=clinical.timestamp(-60),
        ),
        metadata=doctor,
    )
    # Opening an encounter opens the facility's own records, never the registering facility's.
    entries = (await records.GetPatientTimeline(timeline, metadata=nurse)).entries
    assert [entry.resource.encounter.encounter_id for entry in entries] == [created.encounter.encounter_id]
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await records.GetEncounter(
            records_pb2.GetEncounterRequest(encounter_id=world.encounter_id), metadata=nurse
        )
    assert elsewhere.value.code() == grpc.StatusCode.PERMISSION_DENIED


def emergency_read_count(stack: Stack, method: str) -> float:
    for family in text_string_to_metric_families(scrape(stack.ports.identity_metrics)):
        for sample in family.samples:
            if sample.name == "emr_emergency_access_reads_total" and sample.labels["grpc_method"] == method:
                return float(sample.value)
    return 0.0


async def test_break_the_glass_opens_the_patient_loudly(
    stack: Stack, identity: Any, records: Any, audit: Any, world: World, tools: Any
) -> None:
    actor = f"dr-er-{uuid.uuid4().hex[:6]}"
    doctor = caller_metadata(actor, world.other_facility, "TREATMENT", role="doctor")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=world.patient_id), metadata=doctor
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "DeclareEmergencyAccess" in (refused.value.details() or "")

    declared = (
        await identity.DeclareEmergencyAccess(
            identity_pb2.DeclareEmergencyAccessRequest(
                request_id=str(uuid.uuid4()),
                patient_id=world.patient_id,
                facility_code=world.other_facility,
                reason=identity_pb2.EMERGENCY_REASON_LIFE_THREATENING,
                justification="Synthetic: unconscious patient in the ER, not registered here",
            ),
            metadata=doctor,
        )
    ).emergency_access
    counted_before = emergency_read_count(stack, "GetPatient")
    read = await identity.GetPatient(
        identity_pb2.GetPatientRequest(patient_id=world.patient_id), metadata=doctor
    )
    assert read.patient.patient_id == world.patient_id
    assert emergency_read_count(stack, "GetPatient") == counted_before + 1

    async def flagged() -> list[audit_pb2.AuditEvent] | None:
        events = await tools.all_events(audit, actor_id=actor, patient_id=world.patient_id)
        reads = [e for e in events if e.operation.endswith("/GetPatient")]
        return reads or None

    reads = await tools.poll_until(flagged)
    reason = "EMERGENCY_REASON_LIFE_THREATENING"
    assert [(e.outcome, e.emergency_access_id, e.break_glass_reason) for e in reads] == [
        (audit_pb2.AUDIT_OUTCOME_SUCCESS, declared.emergency_access_id, reason)
    ]
    report = await audit.GetPatientAccessReport(
        audit_pb2.GetPatientAccessReportRequest(patient_id=world.patient_id, page_size=500)
    )
    glass = [
        (a.accessor_role, a.facility_code, a.break_glass_reason, a.emergency_access_id)
        for a in report.accesses
    ]
    assert ("doctor", world.other_facility, reason, declared.emergency_access_id) in glass


async def test_a_nurse_cannot_break_the_glass(identity: Any, world: World) -> None:
    nurse = caller_metadata("rn-glass", world.other_facility, "TREATMENT", role="nurse")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await identity.DeclareEmergencyAccess(
            identity_pb2.DeclareEmergencyAccessRequest(
                request_id=str(uuid.uuid4()),
                patient_id=world.patient_id,
                facility_code=world.other_facility,
                reason=identity_pb2.EMERGENCY_REASON_URGENT_CARE,
                justification="Synthetic: a nurse trying to break the glass",
            ),
            metadata=nurse,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as still:
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id=world.patient_id), metadata=nurse)
    assert still.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_denials_of_unaudited_methods_are_audited_too(audit: Any, sync: Any, tools: Any) -> None:
    actor = f"lab-curious-{uuid.uuid4().hex[:6]}"
    lab = caller_metadata(actor, "79001", "TREATMENT", role="lab")
    for call in (
        audit.QueryEvents(audit_pb2.QueryEventsRequest(page_size=1), metadata=lab),
        sync.ListDeadLetters(sync_pb2.ListDeadLettersRequest(), metadata=lab),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def recorded() -> list[audit_pb2.AuditEvent] | None:
        events = await tools.all_events(audit, actor_id=actor)
        return events if len(events) == 2 else None

    events = await tools.poll_until(recorded)
    assert sorted((e.source_service, e.operation, e.outcome) for e in events) == [
        ("audit", "/emr.audit.v1.AuditService/QueryEvents", audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE),
        ("sync", "/emr.sync.v1.NationalSyncService/ListDeadLetters", audit_pb2.AUDIT_OUTCOME_CLIENT_FAILURE),
    ]


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing 'authorization: Bearer <JWT>'"),
        ("Bearer abc.def", "not a well-formed JWT"),
        (f"Bearer {issue_token('late', lifetime_seconds=-600)}", "expired"),
        (f"Bearer {issue_token('aud', aud='someone-else')}", "aud must include"),
    ],
)
async def test_a_missing_or_bad_token_is_unauthenticated_with_its_reason(
    stack: Stack, authorization: str | None, reason: str
) -> None:
    metadata = [("authorization", authorization)] if authorization else []
    async with stack.client_tls.aio_channel(stack.target("identity")) as channel:
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=str(uuid.uuid4())), metadata=metadata
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in (refused.value.details() or "")


async def test_health_and_reflection_stay_open_without_a_token(stack: Stack) -> None:
    for service in ("identity", "records", "audit", "sync"):
        async with stack.client_tls.aio_channel(stack.target(service)) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            services = [s.name async for reply in listing for s in reply.list_services_response.service]
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert "grpc.health.v1.Health" in services and len(services) >= 3
