"""Attack table: hostile input against the real platform (FerretDB and every service as processes).

Each row is (attacker, call, expected): who attacks and how, the call they make, and what the
platform must answer. A refusal is the named status, with INVALID_ARGUMENT naming the field; never
INTERNAL, never a partial write. The rows cover forged page tokens on every paged RPC, control and
bidirectional characters, name parts that look like MongoDB paths or operators, and service tokens
that do not fit their key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pymongo import AsyncMongoClient

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Stack
from emr_devstack.tokens import AUDIENCE, SERVICE_ISSUER, caller_metadata
from emr_runtime.auth import (
    AUTHORIZATION_KEY,
    DEV_ISSUER,
    dev_private_key,
    dev_service_key,
    key_thumbprint,
    sign_token,
)
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.idempotency import fingerprint
from emr_runtime.keys import REQUEST_FINGERPRINT

Metadata = list[tuple[str, str]]


@dataclass(frozen=True)
class Expect:
    """What the platform answers: a status and, for INVALID_ARGUMENT, the one field it names."""

    code: grpc.StatusCode
    field: str = ""


OK = Expect(grpc.StatusCode.OK)
UNAUTHENTICATED = Expect(grpc.StatusCode.UNAUTHENTICATED)


def invalid(field: str) -> Expect:
    return Expect(grpc.StatusCode.INVALID_ARGUMENT, field)


@dataclass
class Scene:
    """The platform and what the attackers hold: a facility with a patient and two encounters, and
    genuine page tokens of records and audit (to cut short, replay elsewhere or re-tag)."""

    identity: identity_pb2_grpc.PatientIdentityServiceStub
    records: records_pb2_grpc.ClinicalRecordsServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    sync: sync_pb2_grpc.NationalSyncServiceStub
    facility: str
    patient_id: str
    encounter_id: str
    registrar: Metadata
    doctor: Metadata
    auditor: Metadata
    admin: Metadata
    records_token: str = ""
    audit_token: str = ""


Call = Callable[[Scene], Awaitable[Any]]


def stamp(offset_seconds: float) -> Timestamp:
    result = Timestamp()
    result.FromSeconds(int(time.time() + offset_seconds))
    return result


def registration(facility: str, **overrides: Any) -> identity_pb2.RegisterPatientRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "full_name": "Trần Thị Thu Hà",
        "birth_date": "1992-03-14",
        "sex": identity_pb2.SEX_FEMALE,
        "facility_code": facility,
        "identifiers": [
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079192{uuid.uuid4().int % 10**6:06d}"
            )
        ],
    }
    fields.update(overrides)
    return identity_pb2.RegisterPatientRequest(**fields)


def encounter(scene: Scene, **overrides: Any) -> records_pb2.CreateEncounterRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "patient_id": scene.patient_id,
        "facility_code": scene.facility,
        "encounter_class": records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        "status": records_pb2.ENCOUNTER_STATUS_FINISHED,
        "start_time": stamp(-7200),
        "end_time": stamp(-3600),
        "reason": "Sốt cao 3 ngày",
        "department": "Khoa Nội tổng hợp",
        "practitioner_id": "prac-synthetic-01",
    }
    fields.update(overrides)
    return records_pb2.CreateEncounterRequest(**fields)


def observation(scene: Scene, **overrides: Any) -> records_pb2.CreateResourceRequest:
    fields: dict[str, Any] = {
        "patient_id": scene.patient_id,
        "facility_code": scene.facility,
        "encounter_id": scene.encounter_id,
        "loinc_code": "8867-4",
        "status": records_pb2.OBSERVATION_STATUS_FINAL,
        "value_quantity": records_pb2.Quantity(value=88, unit="/min"),
        "effective_time": stamp(-3600),
    }
    fields.update(overrides)
    return records_pb2.CreateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(observation=records_pb2.Observation(**fields)),
    )


def prescription(scene: Scene, **overrides: Any) -> records_pb2.CreateResourceRequest:
    fields: dict[str, Any] = {
        "patient_id": scene.patient_id,
        "facility_code": scene.facility,
        "encounter_id": scene.encounter_id,
        "drug_code": "VD-12345-10",
        "drug_name": "Amoxicillin 500mg",
        "status": records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE,
        "dose": records_pb2.Quantity(value=500, unit="mg"),
        "route": "oral",
        "doses_per_day": 3,
        "duration_days": 7,
        "authored_time": stamp(-2400),
    }
    fields.update(overrides)
    return records_pb2.CreateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(medication_request=records_pb2.MedicationRequest(**fields)),
    )


async def poll(probe: Callable[[], Awaitable[str]], within_seconds: float = 30.0) -> str:
    """Polls ``probe`` until it returns a non-empty value (asynchronous work has a deadline)."""
    deadline = time.monotonic() + within_seconds
    while not (value := await probe()):
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)
    return value


@pytest.fixture(scope="module")
async def scene(stack: Stack, channels: dict[str, grpc.aio.Channel]) -> Scene:
    facility = f"{uuid.uuid4().int % 90_000 + 10_000:05d}"
    serial = uuid.uuid4().hex[:6]
    built = Scene(
        identity=identity_pb2_grpc.PatientIdentityServiceStub(channels["identity"]),
        records=records_pb2_grpc.ClinicalRecordsServiceStub(channels["records"]),
        audit=audit_pb2_grpc.AuditServiceStub(channels["audit"]),
        sync=sync_pb2_grpc.NationalSyncServiceStub(channels["sync"]),
        facility=facility,
        patient_id="",
        encounter_id="",
        registrar=caller_metadata(f"reg-{serial}", facility, "TREATMENT", role="registrar"),
        doctor=caller_metadata(f"dr-{serial}", facility, "TREATMENT", role="doctor"),
        auditor=caller_metadata(f"aud-{serial}", "", "OVERSIGHT", role="auditor"),
        admin=caller_metadata(f"ops-{serial}"),
    )
    registered = await built.identity.RegisterPatient(registration(facility), metadata=built.registrar)
    built.patient_id = registered.patient.patient_id
    for _ in range(2):
        created = await built.records.CreateEncounter(encounter(built), metadata=built.doctor)
        built.encounter_id = created.encounter.encounter_id
    listed = await built.records.ListEncounters(
        records_pb2.ListEncountersRequest(patient_id=built.patient_id, page_size=1), metadata=built.doctor
    )
    built.records_token = listed.next_page_token

    async def audit_token() -> str:
        page = await built.audit.QueryEvents(
            audit_pb2.QueryEventsRequest(patient_id=built.patient_id, page_size=1), metadata=built.auditor
        )
        return str(page.next_page_token)

    built.audit_token = await poll(audit_token)
    assert built.records_token and built.audit_token
    return built


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "error carries no google.rpc.Status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


async def stored_counts(mongo: AsyncMongoClient[dict[str, Any]]) -> dict[str, int]:
    """What identity and records hold (persons, records, encounters, resources): a refused write
    must leave it unchanged."""
    counts: dict[str, int] = {}
    for database, collection in (
        ("emr_identity", "persons"),
        ("emr_identity", "facility_records"),
        ("emr_records", "resources"),
    ):
        counts[f"{database}.{collection}"] = await mongo[database][collection].count_documents({})
    return counts


# --- forged page tokens on every paged RPC --------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Positions that reached the services' readers before tokens were signed (an "offset" that is no
# number gave INTERNAL); unsigned, as every token was then.
HOSTILE_POSITION = _b64(
    json.dumps({"offset": "abc", "next": 1e400, "t": "not a time", "id": {"$gt": ""}, "after": -1}).encode()
)

# How the attacker forges a token, from the genuine ones the scene holds: (description, forge).
Forge = Callable[[Scene, str], str]
FORGERIES: list[tuple[str, Forge]] = [
    ("an unsigned token with a hostile position", lambda scene, service: HOSTILE_POSITION),
    (
        "a genuine token cut short",
        lambda scene, service: (scene.audit_token if service == "audit" else scene.records_token)[:-5],
    ),
    (
        "another service's genuine token",
        lambda scene, service: scene.records_token if service == "audit" else scene.audit_token,
    ),
    (
        "a genuine tag on an altered position",
        lambda scene, service: _b64(b'{"after":0,"id":"x","offset":0,"t":"2024-01-01T00:00:00+00:00"}')
        + "."
        + scene.records_token.rpartition(".")[2],
    ),
]

# Every RPC that takes a page_token, called by a caller the access policy lets through.
PagedCall = Callable[[Scene, str], Awaitable[Any]]
PAGED_RPCS: list[tuple[str, str, PagedCall]] = [
    (
        "identity",
        "registrar: SearchPatients",
        lambda s, t: s.identity.SearchPatients(
            identity_pb2.SearchPatientsRequest(full_name="Trần Thị Thu Hà", birth_year=1992, page_token=t),
            metadata=s.registrar,
        ),
    ),
    (
        "identity",
        "admin: ListReviewTasks",
        lambda s, t: s.identity.ListReviewTasks(
            identity_pb2.ListReviewTasksRequest(page_token=t), metadata=s.admin
        ),
    ),
    (
        "records",
        "doctor: ListEncounters",
        lambda s, t: s.records.ListEncounters(
            records_pb2.ListEncountersRequest(patient_id=s.patient_id, page_token=t), metadata=s.doctor
        ),
    ),
    (
        "records",
        "doctor: GetPatientTimeline",
        lambda s, t: s.records.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=s.patient_id, page_token=t), metadata=s.doctor
        ),
    ),
    (
        "records",
        "doctor: ListObservations",
        lambda s, t: s.records.ListObservations(
            records_pb2.ListObservationsRequest(patient_id=s.patient_id, page_token=t), metadata=s.doctor
        ),
    ),
    (
        "audit",
        "auditor: QueryEvents",
        lambda s, t: s.audit.QueryEvents(
            audit_pb2.QueryEventsRequest(patient_id=s.patient_id, page_token=t), metadata=s.auditor
        ),
    ),
    (
        "audit",
        "auditor: GetPatientAccessReport",
        lambda s, t: s.audit.GetPatientAccessReport(
            audit_pb2.GetPatientAccessReportRequest(patient_id=s.patient_id, page_token=t), metadata=s.auditor
        ),
    ),
    (
        "identity",
        "auditor: ListEmergencyAccesses",
        lambda s, t: s.identity.ListEmergencyAccesses(
            identity_pb2.ListEmergencyAccessesRequest(page_token=t), metadata=s.auditor
        ),
    ),
    (
        "sync",
        "admin: ListDeadLetters",
        lambda s, t: s.sync.ListDeadLetters(sync_pb2.ListDeadLettersRequest(page_token=t), metadata=s.admin),
    ),
]


def _forged_call(rpc: PagedCall, service: str, forge: Forge) -> Call:
    return lambda scene: rpc(scene, forge(scene, service))


FORGED_PAGE_TOKENS = [
    pytest.param(
        f"{who} sending {how}",
        _forged_call(rpc, service, forge),
        invalid("page_token"),
        id=f"{who.split(': ')[1]}-{how.replace(' ', '-')}",
    )
    for service, who, rpc in PAGED_RPCS
    for how, forge in FORGERIES
]


# --- control and bidirectional characters ---------------------------------------------------------

CHARACTERS = [
    pytest.param(
        "registrar hiding a NUL in a name",
        lambda s: s.identity.RegisterPatient(
            registration(s.facility, full_name="Nguyễn\x00Văn An"), metadata=s.registrar
        ),
        invalid("full_name"),
        id="name-with-NUL",
    ),
    pytest.param(
        "registrar reversing how a name displays (U+202E)",
        lambda s: s.identity.RegisterPatient(
            registration(s.facility, full_name="Nguyễn \u202enA năV"), metadata=s.registrar
        ),
        invalid("full_name"),
        id="name-with-RLO",
    ),
    pytest.param(
        "registrar isolating a family name (U+2066)",
        lambda s: s.identity.RegisterPatient(
            registration(s.facility, family_name="\u2066Lê\u2069"), metadata=s.registrar
        ),
        invalid("family_name"),
        id="family-name-with-isolate",
    ),
    pytest.param(
        "registrar forging a log line through request_id",
        lambda s: s.identity.RegisterPatient(
            registration(s.facility, request_id="r-1\nlevel=INFO msg=forged"), metadata=s.registrar
        ),
        invalid("request_id"),
        id="request-id-with-newline",
    ),
    pytest.param(
        "registrar marking an identifier right-to-left (U+200F)",
        lambda s: s.identity.RegisterPatient(
            registration(
                s.facility,
                identifiers=[
                    identity_pb2.Identifier(
                        system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="\u200f079192000001"
                    )
                ],
            ),
            metadata=s.registrar,
        ),
        invalid("identifiers[0].value"),
        id="identifier-with-RLM",
    ),
    pytest.param(
        "doctor reversing a patient id (U+202E)",
        lambda s: s.records.CreateEncounter(
            encounter(s, patient_id=f"\u202e{s.patient_id}"), metadata=s.doctor
        ),
        invalid("patient_id"),
        id="encounter-patient-id-with-RLO",
    ),
    pytest.param(
        "doctor sending a terminal escape in free text",
        lambda s: s.records.CreateEncounter(encounter(s, reason="Sốt \x1b[2J cao"), metadata=s.doctor),
        invalid("reason"),
        id="encounter-reason-with-ESC",
    ),
    pytest.param(
        "doctor breaking a department name over lines",
        lambda s: s.records.CreateEncounter(
            encounter(s, department="Khoa Nội\nKhoa Ngoại"), metadata=s.doctor
        ),
        invalid("department"),
        id="encounter-department-with-newline",
    ),
    pytest.param(
        "doctor writing lines and tabs in free text (allowed)",
        lambda s: s.records.CreateEncounter(
            encounter(s, reason="Sốt cao 3 ngày\n\tho khan\r\nđau đầu"), metadata=s.doctor
        ),
        OK,
        id="encounter-reason-with-lines-ok",
    ),
    pytest.param(
        "doctor marking a LOINC code left-to-right (U+200E)",
        lambda s: s.records.CreateResource(observation(s, loinc_code="8867-4\u200e"), metadata=s.doctor),
        invalid("resource.observation.loinc_code"),
        id="observation-code-with-LRM",
    ),
    pytest.param(
        "doctor hiding a NUL in a drug name",
        lambda s: s.records.CreateResource(
            prescription(s, drug_name="Amoxicillin\x00 500mg"), metadata=s.doctor
        ),
        invalid("resource.medication_request.drug_name"),
        id="drug-name-with-NUL",
    ),
    pytest.param(
        "doctor sending a C1 control (CSI) in a unit",
        lambda s: s.records.CreateResource(
            observation(s, value_quantity=records_pb2.Quantity(value=88, unit="/min\x9b")), metadata=s.doctor
        ),
        invalid("resource.observation.value_quantity.unit"),
        id="unit-with-C1",
    ),
]


# --- name parts that look like MongoDB paths and operators ----------------------------------------


def _registered_and_readable(full_name: str) -> Call:
    """Registers a person with this name (twice: the second counts the same name parts again) and
    reads each back: stored as given, never INTERNAL, never half-written."""

    async def call(scene: Scene) -> None:
        for _ in range(2):
            registered = await scene.identity.RegisterPatient(
                registration(scene.facility, full_name=full_name), metadata=scene.registrar
            )
            read = await scene.identity.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=registered.patient.patient_id),
                metadata=scene.registrar,
            )
            assert read.patient.full_name == full_name

    return call


NAMES_AS_KEYS = [
    pytest.param(f"registrar registering {name!r}", _registered_and_readable(name), OK, id=f"name-{index}")
    for index, name in enumerate(
        ["Nguyễn $where Văn", "Lê .a.b Thị", "$inc Trần Hà", "Phạm Văn $set.$unset", "Đỗ % %2E Hà"]
    )
]


# --- service tokens that do not fit their key, and over-long tokens -------------------------------


# Tokens are minted when a row runs, not when the table is collected: a row that ran minutes later
# with a token minted at collection would be refused as expired, whatever else it tested.
Mint = Callable[[], Metadata]


def bearer(key: Any, lifetime: float = 300, **claims: Any) -> Mint:
    body = {"iss": SERVICE_ISSUER, "aud": AUDIENCE, **claims}
    return lambda: [(AUTHORIZATION_KEY, f"Bearer {sign_token(key, key_thumbprint(key), body, lifetime)}")]


def as_service(key_of: str, service: str, roles: list[str], **claims: Any) -> Mint:
    return bearer(dev_service_key(key_of), sub=f"service:{service}", roles=roles, **claims)


def _review_tasks(mint: Mint) -> Call:
    # Admin only: what a forged admin would reach first.
    return lambda s: s.identity.ListReviewTasks(identity_pb2.ListReviewTasksRequest(), metadata=mint())


def _patient_changes(mint: Mint) -> Call:
    # The sync service's alone: every person's changes.
    return lambda s: s.identity.ListPatientChanges(
        identity_pb2.ListPatientChangesRequest(limit=1), metadata=mint()
    )


TOKENS = [
    pytest.param(
        "thief of the records key minting admin",
        _review_tasks(as_service("records", "records", ["admin"])),
        UNAUTHENTICATED,
        id="records-key-as-admin",
    ),
    pytest.param(
        "thief of the sync key minting admin alongside its own role",
        _review_tasks(as_service("sync", "sync", ["sync-service", "admin"])),
        UNAUTHENTICATED,
        id="sync-key-as-admin",
    ),
    pytest.param(
        "thief of the records key asserting sync-service",
        _patient_changes(as_service("records", "records", ["sync-service"])),
        UNAUTHENTICATED,
        id="records-key-as-sync-role",
    ),
    pytest.param(
        "thief of the records key posing as service:sync",
        _patient_changes(as_service("records", "sync", ["sync-service"])),
        UNAUTHENTICATED,
        id="records-key-as-sync-subject",
    ),
    pytest.param(
        "holder of the users' key minting a service token",
        _patient_changes(bearer(dev_private_key(), sub="service:sync", roles=["sync-service"])),
        UNAUTHENTICATED,
        id="users-key-as-service",
    ),
    pytest.param(
        "thief of the sync key minting a users' admin token",
        _review_tasks(bearer(dev_service_key("sync"), iss=DEV_ISSUER, sub="ops", roles=["admin"])),
        UNAUTHENTICATED,
        id="service-key-as-user",
    ),
    pytest.param(
        "thief of the sync key minting a day-long service token",
        _patient_changes(bearer(dev_service_key("sync"), 86400, sub="service:sync", roles=["sync-service"])),
        UNAUTHENTICATED,
        id="service-token-for-a-day",
    ),
    pytest.param(
        "a hospital app holding a 30-day admin token",
        _review_tasks(bearer(dev_private_key(), 30 * 86400, iss=DEV_ISSUER, sub="ops", roles=["admin"])),
        UNAUTHENTICATED,
        id="user-token-for-a-month",
    ),
    pytest.param(
        "the sync service with its own key and role (allowed)",
        _patient_changes(as_service("sync", "sync", ["sync-service"])),
        OK,
        id="sync-key-as-sync-ok",
    ),
]


@pytest.mark.parametrize(
    ("attacker", "call", "expected"), [*FORGED_PAGE_TOKENS, *CHARACTERS, *NAMES_AS_KEYS, *TOKENS]
)
async def test_attack(
    scene: Scene, mongo: AsyncMongoClient[dict[str, Any]], attacker: str, call: Call, expected: Expect
) -> None:
    if expected == OK:
        await call(scene)
        return
    before = await stored_counts(mongo)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(scene)
    error = refused.value
    assert error.code() == expected.code, f"{attacker}: {error.code().name} {error.details()}"
    assert "Traceback" not in (error.details() or "")
    if expected.field:
        assert violated_fields(error) == [expected.field], attacker
    assert await stored_counts(mongo) == before, f"{attacker}: a refused call wrote"


# --- a database dump gives no identifier back -----------------------------------------------------


async def test_a_dumps_request_digests_give_no_cccd_back(
    scene: Scene, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    """The digest stored for idempotency is keyed: with the database (and the request's other
    fields, all in the audit log or the dump) an attacker cannot try the 10^6 numbers left."""
    request = registration(scene.facility)
    await scene.identity.RegisterPatient(request, metadata=scene.registrar)
    payload = request.SerializeToString(deterministic=True)
    records = mongo["emr_identity"]["facility_records"]
    assert await records.count_documents({"request_fingerprint": hashlib.sha256(payload).hexdigest()}) == 0
    key = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION).derived_key(REQUEST_FINGERPRINT)
    assert await records.count_documents({"request_fingerprint": fingerprint(key, payload)}) == 1
