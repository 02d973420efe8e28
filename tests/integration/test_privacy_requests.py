"""Data-subject requests against the real platform (identity's PrivacyRequestService, the gateway's
$data-subject-export): an access export holds every resource of the patient from every facility
and nothing of another patient; an objection is enforced by the access model until it is refused;
a withdrawal revokes the grant; a correction reaches the facility holding the data; status changes
are compare-and-set; the overdue gauge is exported per kind."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2 as pb
from emr.identity.v1 import privacy_pb2 as dsr
from emr.identity.v1 import privacy_pb2_grpc
from emr.records.v1 import records_pb2
from fhir.resources.R4B.bundle import Bundle
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.observability import scrape
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata, issue_token

Metadata = list[tuple[str, str]]
AUDITOR = caller_metadata("dpo-privacy", "", "", role="auditor")


def staff(role: str, facility: str) -> Metadata:
    return caller_metadata(f"{role}-{facility}-{uuid.uuid4().hex[:6]}", facility, "TREATMENT", role=role)


def patient_token(patient_id: str) -> Metadata:
    return caller_metadata(f"app-{uuid.uuid4().hex[:6]}", "", "", role="patient", patient_id=patient_id)


def later(seconds: float) -> Timestamp:
    moment = Timestamp()
    moment.FromSeconds(int(time.time() + seconds))
    return moment


@pytest.fixture
def privacy(channels: dict[str, grpc.aio.Channel]) -> privacy_pb2_grpc.PrivacyRequestServiceStub:
    # The privacy service is served by the identity process.
    return privacy_pb2_grpc.PrivacyRequestServiceStub(channels["identity"])


@dataclass(frozen=True)
class Scene:
    """A patient registered at ``home`` with a consent grant opening their data to ``elsewhere``;
    ``third`` has no relationship with them."""

    home: str
    elsewhere: str
    third: str
    patient_id: str
    grant_id: str


@pytest.fixture
async def scene(identity: Any, clinical: Any) -> Scene:
    suffix = uuid.uuid4().int % 9000
    home, elsewhere, third = f"6{suffix:04d}", f"2{suffix:04d}", f"1{suffix:04d}"
    patient_id = await clinical.patient(home)
    granted = await identity.RecordSharingGrant(
        pb.RecordSharingGrantRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=home,
            grantee_facility_code=elsewhere,
            purpose=pb.SHARING_PURPOSE_TREATMENT,
            evidence=pb.CONSENT_EVIDENCE_SIGNED_FORM,
            evidence_reference=f"CF-{uuid.uuid4().hex[:8]}",
            end_time=later(30 * 86400),
        ),
        metadata=staff("registrar", home),
    )
    return Scene(home, elsewhere, third, patient_id, granted.sharing_grant.sharing_grant_id)


def filing(
    scene: Scene, kind: dsr.DataSubjectRequestKind, facility_code: str = "", **fields: Any
) -> dsr.FileDataSubjectRequestRequest:
    return dsr.FileDataSubjectRequestRequest(
        request_id=str(uuid.uuid4()),
        patient_id=scene.patient_id,
        kind=kind,
        facility_code=facility_code,
        **fields,
    )


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def timeline_code(records: Any, scene: Scene, metadata: Metadata) -> grpc.StatusCode:
    return await code_of(
        records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=scene.patient_id), metadata=metadata
        )
    )


async def check_access(identity: Any, scene: Scene, facility: str) -> pb.CheckAccessResponse:
    platform = caller_metadata("service:records", "", "TREATMENT", role="platform-service")
    answer: pb.CheckAccessResponse = await identity.CheckAccess(
        pb.CheckAccessRequest(
            patient_id=scene.patient_id, facility_code=facility, purpose_of_use="TREATMENT"
        ),
        metadata=platform,
    )
    return answer


# --- the access export ---------------------------------------------------------------------------


def _ids(node: Any) -> Iterator[str]:
    """Every string in a JSON tree (ids and references included)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _ids(value)
    elif isinstance(node, str):
        yield node


async def _records_of(clinical: Any, patient_id: str, facility: str) -> set[str]:
    """An encounter at ``facility`` with one resource of every type; their ids."""
    encounter_id = await clinical.encounter(patient_id, facility)
    created = {encounter_id}
    for resource in clinical.every_resource(patient_id, facility, encounter_id):
        made = await clinical.create(resource)
        kind = made.WhichOneof("resource")
        message = getattr(made, kind)
        created.add(
            next(
                getattr(message, f.name)
                for f in message.DESCRIPTOR.fields
                if f.name.endswith("_id") and f.name not in {"patient_id", "encounter_id"}
            )
        )
    return created


async def test_an_access_export_holds_every_resource_of_the_patient_and_nothing_of_another(
    stack: Stack, clinical: Any, privacy: Any, scene: Scene
) -> None:
    mine = await _records_of(clinical, scene.patient_id, scene.home)
    mine |= await _records_of(clinical, scene.patient_id, scene.elsewhere)
    other_patient = await clinical.patient(scene.home)
    theirs = await _records_of(clinical, other_patient, scene.home)
    theirs |= await _records_of(clinical, other_patient, scene.elsewhere)

    # Filed by the home registrar; the export opens once the request is in progress.
    filed = await privacy.FileDataSubjectRequest(
        filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_ACCESS, scene.home),
        metadata=staff("registrar", scene.home),
    )
    request = filed.data_subject_request
    assert request.handling_facility_code == scene.home
    assert request.due_time.ToDatetime() - request.filed_time.ToDatetime() == timedelta(days=10)
    headers = {"Authorization": patient_token(scene.patient_id)[0][1]}
    url = f"/fhir/Patient/{scene.patient_id}/$data-subject-export"
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=headers, timeout=60) as http:
        early = await http.get(url, params={"request": request.data_subject_request_id})
        assert early.status_code == 409, early.text
        await privacy.UpdateDataSubjectRequestStatus(
            dsr.UpdateDataSubjectRequestStatusRequest(
                request_id=str(uuid.uuid4()),
                data_subject_request_id=request.data_subject_request_id,
                expected_status=dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED,
                status=dsr.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS,
                facility_code=scene.home,
            ),
            metadata=staff("registrar", scene.home),
        )
        response = await http.get(url, params={"request": request.data_subject_request_id})
        assert response.status_code == 200, response.text
        body = response.json()
        # Another patient's token gets nothing of this patient.
        stranger = {"Authorization": patient_token(other_patient)[0][1]}
        assert (await http.get(url, headers=stranger)).status_code == 403

    Bundle.model_validate(body)  # valid FHIR R4B, the AuditEvents of the access report included
    types = [entry["resource"]["resourceType"] for entry in body["entry"]]
    exported_ids = {entry["resource"]["id"] for entry in body["entry"]}
    assert mine <= exported_ids, mine - exported_ids
    assert types.count("Patient") == 1
    assert {
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "DocumentReference",
    } <= set(types)
    assert "AuditEvent" in types  # the access report: at least the clinician's own writes and reads
    everything = set(_ids(body))
    assert other_patient not in everything
    assert not (theirs & everything), theirs & everything


async def test_a_patient_token_exports_its_own_data_directly(
    stack: Stack, clinical: Any, scene: Scene
) -> None:
    mine = await _records_of(clinical, scene.patient_id, scene.elsewhere)
    headers = {"Authorization": patient_token(scene.patient_id)[0][1]}
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=headers, timeout=60) as http:
        response = await http.get(f"/fhir/Patient/{scene.patient_id}/$data-subject-export")
    assert response.status_code == 200, response.text
    assert mine <= {entry["resource"]["id"] for entry in response.json()["entry"]}


# --- objection, restriction, withdrawal ----------------------------------------------------------


async def test_an_objection_stops_another_facilitys_shared_access_until_it_is_refused(
    identity: Any, records: Any, clinical: Any, privacy: Any, scene: Scene
) -> None:
    await _records_of(clinical, scene.patient_id, scene.home)
    doctor_elsewhere = staff("doctor", scene.elsewhere)
    assert await timeline_code(records, scene, doctor_elsewhere) == grpc.StatusCode.OK
    assert (await check_access(identity, scene, scene.elsewhere)).all_facilities

    filed = await privacy.FileDataSubjectRequest(
        filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_OBJECTION), metadata=patient_token(scene.patient_id)
    )
    request = filed.data_subject_request
    assert request.status == dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED
    assert request.handling_facility_code == ""  # the patient's own filing: the data-protection officer's
    assert request.due_time.ToDatetime() - request.filed_time.ToDatetime() == timedelta(days=15)

    answer = await check_access(identity, scene, scene.elsewhere)
    assert not answer.all_facilities and not answer.sharing_grant_ids
    assert await timeline_code(records, scene, doctor_elsewhere) == grpc.StatusCode.PERMISSION_DENIED
    # The facility that registered the patient still sees its own data.
    assert await timeline_code(records, scene, staff("doctor", scene.home)) == grpc.StatusCode.OK

    # A registrar cannot answer a request the platform handles; the data-protection officer can.
    refusal = dsr.UpdateDataSubjectRequestStatusRequest(
        request_id=str(uuid.uuid4()),
        data_subject_request_id=request.data_subject_request_id,
        expected_status=dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED,
        status=dsr.DATA_SUBJECT_REQUEST_STATUS_REFUSED,
        reason="Synthetic: the patient withdrew the objection in person",
        facility_code=scene.home,
    )
    assert (
        await code_of(
            privacy.UpdateDataSubjectRequestStatus(refusal, metadata=staff("registrar", scene.home))
        )
        == grpc.StatusCode.NOT_FOUND
    )
    refusal.facility_code = ""
    refused = await privacy.UpdateDataSubjectRequestStatus(refusal, metadata=AUDITOR)
    assert [e.status for e in refused.data_subject_request.history] == [
        dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED,
        dsr.DATA_SUBJECT_REQUEST_STATUS_REFUSED,
    ]
    assert refused.data_subject_request.history[-1].actor_id == "dpo-privacy"
    assert await timeline_code(records, scene, doctor_elsewhere) == grpc.StatusCode.OK


async def test_a_restriction_filed_by_the_registrar_is_enforced_too(
    records: Any, clinical: Any, privacy: Any, scene: Scene
) -> None:
    await _records_of(clinical, scene.patient_id, scene.home)
    await privacy.FileDataSubjectRequest(
        filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_RESTRICTION, scene.home),
        metadata=staff("registrar", scene.home),
    )
    assert (
        await timeline_code(records, scene, staff("nurse", scene.elsewhere))
        == grpc.StatusCode.PERMISSION_DENIED
    )


async def test_a_withdrawal_revokes_the_grant_and_completes(
    identity: Any, records: Any, clinical: Any, privacy: Any, scene: Scene
) -> None:
    await _records_of(clinical, scene.patient_id, scene.home)
    request = filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_WITHDRAWAL, sharing_grant_id=scene.grant_id)
    filed = await privacy.FileDataSubjectRequest(request, metadata=patient_token(scene.patient_id))
    assert filed.data_subject_request.status == dsr.DATA_SUBJECT_REQUEST_STATUS_COMPLETED
    again = await privacy.FileDataSubjectRequest(request, metadata=patient_token(scene.patient_id))
    assert (
        again.data_subject_request.data_subject_request_id
        == filed.data_subject_request.data_subject_request_id
    )
    assert len(again.data_subject_request.history) == 2
    grants = await identity.ListSharingGrants(
        pb.ListSharingGrantsRequest(patient_id=scene.patient_id), metadata=staff("registrar", scene.home)
    )
    revoked = next(g for g in grants.sharing_grants if g.sharing_grant_id == scene.grant_id)
    assert revoked.HasField("revoke_time")
    assert (
        await timeline_code(records, scene, staff("doctor", scene.elsewhere))
        == grpc.StatusCode.PERMISSION_DENIED
    )


async def test_a_withdrawal_of_someone_elses_grant_is_not_found(
    clinical: Any, privacy: Any, identity: Any, scene: Scene
) -> None:
    stranger = await clinical.patient(scene.home)
    request = filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_WITHDRAWAL, sharing_grant_id=scene.grant_id)
    request.patient_id = stranger
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await privacy.FileDataSubjectRequest(request, metadata=patient_token(stranger))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "sharing_grant_id" in (refused.value.details() or "")


# --- correction routing and status changes -------------------------------------------------------


async def test_a_correction_is_listed_and_answered_by_the_facility_holding_the_data(
    clinical: Any, privacy: Any, scene: Scene
) -> None:
    encounter_id = await clinical.encounter(scene.patient_id, scene.elsewhere)
    filed = await privacy.FileDataSubjectRequest(
        filing(
            scene,
            dsr.DATA_SUBJECT_REQUEST_KIND_CORRECTION,
            scene.home,
            data_facility_code=scene.elsewhere,
            resource_reference=f"Encounter/{encounter_id}",
            details="Synthetic: the discharge date is one day late",
        ),
        metadata=staff("registrar", scene.home),
    )
    request_id = filed.data_subject_request.data_subject_request_id
    assert filed.data_subject_request.handling_facility_code == scene.elsewhere

    async def listed_at(facility: str) -> list[str]:
        page = await privacy.ListDataSubjectRequests(
            dsr.ListDataSubjectRequestsRequest(facility_code=facility, page_size=100),
            metadata=staff("registrar", facility),
        )
        return [r.data_subject_request_id for r in page.data_subject_requests]

    assert request_id in await listed_at(scene.elsewhere)
    assert request_id not in await listed_at(scene.home)
    # A registrar lists their own facility's only.
    assert (
        await code_of(
            privacy.ListDataSubjectRequests(
                dsr.ListDataSubjectRequestsRequest(facility_code=scene.elsewhere),
                metadata=staff("registrar", scene.third),
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await code_of(
            privacy.GetDataSubjectRequest(
                dsr.GetDataSubjectRequestRequest(data_subject_request_id=request_id),
                metadata=staff("registrar", scene.third),
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )

    clerk = staff("registrar", scene.elsewhere)
    for expected, wanted in (
        (dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED, dsr.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS),
        (dsr.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS, dsr.DATA_SUBJECT_REQUEST_STATUS_COMPLETED),
    ):
        await privacy.UpdateDataSubjectRequestStatus(
            dsr.UpdateDataSubjectRequestStatusRequest(
                request_id=str(uuid.uuid4()),
                data_subject_request_id=request_id,
                expected_status=expected,
                status=wanted,
                facility_code=scene.elsewhere,
            ),
            metadata=clerk,
        )
    found = await privacy.GetDataSubjectRequest(
        dsr.GetDataSubjectRequestRequest(data_subject_request_id=request_id), metadata=clerk
    )
    request = found.data_subject_request
    assert request.status == dsr.DATA_SUBJECT_REQUEST_STATUS_COMPLETED and not request.overdue
    assert [(e.status, e.facility_code) for e in request.history] == [
        (dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED, scene.home),
        (dsr.DATA_SUBJECT_REQUEST_STATUS_IN_PROGRESS, scene.elsewhere),
        (dsr.DATA_SUBJECT_REQUEST_STATUS_COMPLETED, scene.elsewhere),
    ]
    assert request.details == "Synthetic: the discharge date is one day late"
    # The patient sees their own requests.
    own = await privacy.ListDataSubjectRequests(
        dsr.ListDataSubjectRequestsRequest(patient_id=scene.patient_id),
        metadata=patient_token(scene.patient_id),
    )
    assert request_id in [r.data_subject_request_id for r in own.data_subject_requests]


async def test_two_racing_status_changes_one_wins_the_other_is_aborted(privacy: Any, scene: Scene) -> None:
    filed = await privacy.FileDataSubjectRequest(
        filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_ACCESS, scene.home),
        metadata=staff("registrar", scene.home),
    )
    request_id = filed.data_subject_request.data_subject_request_id

    async def change(status: dsr.DataSubjectRequestStatus) -> grpc.StatusCode:
        return await code_of(
            privacy.UpdateDataSubjectRequestStatus(
                dsr.UpdateDataSubjectRequestStatusRequest(
                    request_id=str(uuid.uuid4()),
                    data_subject_request_id=request_id,
                    expected_status=dsr.DATA_SUBJECT_REQUEST_STATUS_RECEIVED,
                    status=status,
                    reason="Synthetic: not our patient's data",
                    facility_code=scene.home,
                ),
                metadata=staff("registrar", scene.home),
            )
        )

    codes = await asyncio.gather(
        change(dsr.DATA_SUBJECT_REQUEST_STATUS_COMPLETED), change(dsr.DATA_SUBJECT_REQUEST_STATUS_REFUSED)
    )
    assert sorted(code.name for code in codes) == ["ABORTED", "OK"]
    found = await privacy.GetDataSubjectRequest(
        dsr.GetDataSubjectRequestRequest(data_subject_request_id=request_id), metadata=AUDITOR
    )
    assert len(found.data_subject_request.history) == 2


async def test_bad_filings_name_the_field_and_strangers_are_refused(
    privacy: Any, scene: Scene, bad_fields: Any
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await privacy.FileDataSubjectRequest(
            filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_UNSPECIFIED, scene.home),
            metadata=staff("registrar", scene.home),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error.value) == ["kind"]
    # A registrar of a facility that never registered the patient.
    assert (
        await code_of(
            privacy.FileDataSubjectRequest(
                filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_ACCESS, scene.elsewhere),
                metadata=staff("registrar", scene.elsewhere),
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # A patient token for another patient, and a patient token without its patient claim.
    assert (
        await code_of(
            privacy.FileDataSubjectRequest(
                filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_ACCESS), metadata=patient_token("someone-else")
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    unbound = [("authorization", f"Bearer {issue_token('app-unbound', roles=('patient',))}")]
    assert (
        await code_of(
            privacy.FileDataSubjectRequest(
                filing(scene, dsr.DATA_SUBJECT_REQUEST_KIND_ACCESS), metadata=unbound
            )
        )
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_the_overdue_gauge_is_exported_for_every_kind(stack: Stack) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(stack.ports.identity_metrics))}
    samples = {s.labels["kind"]: s.value for s in families["emr_identity_privacy_requests_overdue"].samples}
    # Every request of this session is due days ahead: none is overdue (the rule is unit-tested with
    # an injected clock in services/identity/tests/test_privacy_rules.py).
    assert samples == dict.fromkeys(["access", "correction", "restriction", "objection", "withdrawal"], 0.0)
