"""Fixtures for cross-service tests: the real platform (FerretDB and every service as processes on
free loopback ports), started once per test session, and stubs to call it."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from emr.sync.v1 import sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from pymongo import AsyncMongoClient

from emr_devstack.processes import StartupError
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import caller_metadata
from emr_runtime.db import SEQUENCE_CLAIMS


class TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on loopback: every service of the test platform exports its
    spans here, so that tests can follow a trace across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[tuple[str, Any]] = []

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self._spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: bytes) -> list[tuple[str, Any]]:
        with self._lock:
            return [(service, span) for service, span in self._spans if span.trace_id == trace_id]


@pytest.fixture(scope="session")
def trace_collector() -> Iterator[tuple[TraceCollector, int]]:
    collector = TraceCollector()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(grace=None)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, trace_collector: tuple[TraceCollector, int]
) -> Iterator[Stack]:
    _, collector_port = trace_collector
    platform = Stack(
        run_dir=Path(tmp_path_factory.mktemp("stack")),
        ports=Ports.free(),
        sync_poll_interval=0.2,
        environment={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # Grants, revocations and registrations made by a test count at once in the next call.
            "RECORDS_ACCESS_CACHE_SECONDS": "0",
        },
    )
    try:
        platform.start()
    except StartupError:
        platform.stop()
        raise
    yield platform
    codes = platform.stop()
    # Every gRPC service must stop cleanly on SIGTERM.
    assert all(codes[name] == 0 for name in ("audit", "identity", "records", "sync") if name in codes), codes


@pytest.fixture(scope="session")
async def channels(stack: Stack) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    # Calls that name no caller act as a development admin (emr_devstack.tokens).
    opened = {
        name: stack.dev_channel(stack.target(name)) for name in ("identity", "records", "audit", "sync")
    }
    yield opened
    for channel in opened.values():
        await channel.close()


@pytest.fixture(scope="session")
def identity(channels: dict[str, grpc.aio.Channel]) -> identity_pb2_grpc.PatientIdentityServiceStub:
    return identity_pb2_grpc.PatientIdentityServiceStub(channels["identity"])


@pytest.fixture(scope="session")
def records(channels: dict[str, grpc.aio.Channel]) -> records_pb2_grpc.ClinicalRecordsServiceStub:
    return records_pb2_grpc.ClinicalRecordsServiceStub(channels["records"])


@pytest.fixture(scope="session")
def audit(channels: dict[str, grpc.aio.Channel]) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(channels["audit"])


@pytest.fixture(scope="session")
def sync(channels: dict[str, grpc.aio.Channel]) -> sync_pb2_grpc.NationalSyncServiceStub:
    return sync_pb2_grpc.NationalSyncServiceStub(channels["sync"])


@pytest.fixture(scope="session")
async def mongo(stack: Stack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """Direct database access, to check what was (not) written."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.effective_mongodb_uri, tz_aware=True)
    yield client
    await client.close()


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None, "error carries no google.rpc.Status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


@pytest.fixture
def bad_fields() -> Callable[[grpc.aio.AioRpcError], list[str]]:
    return violated_fields


_facility_counter = iter(range(10_000, 99_999))


@pytest.fixture
def facility_code() -> str:
    """A facility code of this test alone, so that per-facility counts are this test's."""
    return f"{next(_facility_counter):05d}"


# What an insurance claim needs of a person beyond the demographics (a current address: a ward of the
# province, no district); the nationality is Vietnamese by default when a CCCD is registered.
CLAIM_PROFILE: dict[str, str] = {
    "province_code": "79",
    "ethnicity_code": "01",
    "occupation_code": "00",
    "address": "1 Đường Thử, Phường Thử, TP Thử",
    "commune_code": "26734",
}


def synthetic_registration(
    registering_facility: str, /, **overrides: Any
) -> identity_pb2.RegisterPatientRequest:
    """A valid registration of a synthetic person (never real data), a different person each call:
    the name ends in a number of its own, so two calls never look like one person (or like twins)
    to the matcher; pass ``full_name`` and ``identifiers`` to register one person again."""
    serial = uuid.uuid4().int % 10**6
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "full_name": f"Trần Thị Thu Hà {uuid.uuid4().int % 10**9:09d}",
        "birth_date": "1992-03-14",
        "sex": identity_pb2.SEX_FEMALE,
        "facility_code": registering_facility,
        # CCCD: province 079, century/sex digit 1 (1900s, female), birth year 92, then 6 digits.
        "identifiers": [
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079192{serial:06d}")
        ],
        **CLAIM_PROFILE,
    }
    fields.update(overrides)
    return identity_pb2.RegisterPatientRequest(**fields)


@pytest.fixture
def registration() -> Callable[..., identity_pb2.RegisterPatientRequest]:
    return synthetic_registration


# --- synthetic clinical data through the real APIs --------------------------------------------

CLINICIAN = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
SYNTHETIC_DOCUMENT = "Giấy ra viện — synthetic".encode()


def timestamp(offset_seconds: float) -> Timestamp:
    """Now plus ``offset_seconds`` (negative: in the past), to the second."""
    result = Timestamp()
    result.FromSeconds(int(time.time() + offset_seconds))
    return result


class Clinical:
    """Creates synthetic patients, encounters and resources of every type through the real APIs."""

    timestamp = staticmethod(timestamp)
    claim_profile = CLAIM_PROFILE

    def __init__(self, identity: Any, records: Any) -> None:
        self.identity = identity
        self.records = records

    async def patient(self, facility: str) -> str:
        registered = await self.identity.RegisterPatient(synthetic_registration(facility), metadata=CLINICIAN)
        return str(registered.patient.patient_id)

    async def encounter(self, patient_id: str, facility: str, started_seconds_ago: float = 7200) -> str:
        created = await self.records.CreateEncounter(
            records_pb2.CreateEncounterRequest(
                request_id=str(uuid.uuid4()),
                patient_id=patient_id,
                facility_code=facility,
                encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
                status=records_pb2.ENCOUNTER_STATUS_FINISHED,
                start_time=timestamp(-started_seconds_ago),
                end_time=timestamp(-started_seconds_ago + 3600),
                reason="Sốt cao 3 ngày",
                department="Khoa Nội tổng hợp",
                practitioner_id="prac-synthetic-01",
                discharge_disposition="home",
                insurance=records_pb2.EncounterInsurance(bhyt_number="DN4790123456789", benefit_level=4),
            ),
            metadata=CLINICIAN,
        )
        return str(created.encounter.encounter_id)

    async def claimable_visit(
        self, patient_id: str, facility_code: str, bhyt: str, metadata: Any = CLINICIAN
    ) -> records_pb2.Encounter:
        """A BHYT-paid outpatient examination with every fact its claim needs: opened, given its primary
        diagnosis, then finished (the claim is built from the finished version, so the diagnosis is
        recorded first). Returns the finished version."""
        now = time.time()

        def at(offset_seconds: float) -> Timestamp:
            result = Timestamp()
            result.FromSeconds(int(now + offset_seconds))
            return result

        opened = (
            await self.records.CreateEncounter(
                records_pb2.CreateEncounterRequest(
                    request_id=str(uuid.uuid4()),
                    patient_id=patient_id,
                    facility_code=facility_code,
                    encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
                    visit_type=records_pb2.VISIT_TYPE_EXAMINATION,
                    status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
                    start_time=at(-3600),
                    reason="Khám định kỳ",
                    department="K01",
                    insurance=records_pb2.EncounterInsurance(bhyt_number=bhyt, benefit_level=4),
                    admission=records_pb2.EncounterAdmission(
                        reason="Khám định kỳ", admission_diagnosis="Viêm họng", visit_subject_code="1.1"
                    ),
                    departments=[records_pb2.EncounterDepartment(department_code="K01")],
                    weight_kg="60.5",
                    medical_record_number=f"PK-{uuid.uuid4().hex[:12]}",
                    treatment_method="Nội khoa",
                ),
                metadata=metadata,
            )
        ).encounter
        await self.records.CreateResource(
            records_pb2.CreateResourceRequest(
                request_id=str(uuid.uuid4()),
                resource=records_pb2.ClinicalResource(
                    condition=records_pb2.Condition(
                        patient_id=patient_id,
                        facility_code=facility_code,
                        encounter_id=opened.encounter_id,
                        icd10_code="J02.9",
                        clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
                        role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
                        recorded_time=at(-1800),
                    )
                ),
            ),
            metadata=metadata,
        )
        finished = records_pb2.ClinicalResource(encounter=opened)
        finished.encounter.status = records_pb2.ENCOUNTER_STATUS_FINISHED
        finished.encounter.end_time.CopyFrom(at(-300))
        finished.encounter.discharge.CopyFrom(
            records_pb2.EncounterDischarge(
                discharge_diagnosis="Viêm họng cấp",
                outcome=records_pb2.TREATMENT_OUTCOME_CURED,
                kind=records_pb2.DISCHARGE_KIND_DISCHARGED,
            )
        )
        updated = await self.records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()), resource=finished, expected_version=opened.version
            ),
            metadata=metadata,
        )
        encounter: records_pb2.Encounter = updated.resource.encounter
        return encounter

    async def create(self, resource: records_pb2.ClinicalResource) -> records_pb2.ClinicalResource:
        request = records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4()), resource=resource)
        created: records_pb2.ClinicalResource = (
            await self.records.CreateResource(request, metadata=CLINICIAN)
        ).resource
        return created

    @staticmethod
    def every_resource(
        patient_id: str, facility: str, encounter_id: str
    ) -> list[records_pb2.ClinicalResource]:
        """One valid resource of each type but Encounter, attached to the encounter, in the order
        observation, condition, medication request, procedure, document."""
        common: dict[str, Any] = {
            "patient_id": patient_id,
            "facility_code": facility,
            "encounter_id": encounter_id,
        }
        return [
            records_pb2.ClinicalResource(
                observation=records_pb2.Observation(
                    **common,
                    loinc_code="8867-4",
                    status=records_pb2.OBSERVATION_STATUS_FINAL,
                    value_quantity=records_pb2.Quantity(value=88, unit="/min"),
                    reference_range=records_pb2.ReferenceRange(
                        low=records_pb2.Quantity(value=60, unit="/min"),
                        high=records_pb2.Quantity(value=100, unit="/min"),
                    ),
                    interpretation="N",
                    effective_time=timestamp(-3600),
                )
            ),
            records_pb2.ClinicalResource(
                condition=records_pb2.Condition(
                    **common,
                    icd10_code="J18.9",
                    clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
                    role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
                    onset_time=timestamp(-86400 * 3),
                    recorded_time=timestamp(-3000),
                )
            ),
            records_pb2.ClinicalResource(
                medication_request=records_pb2.MedicationRequest(
                    **common,
                    drug_code="VD-12345-10",
                    drug_name="Amoxicillin 500mg",
                    status=records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE,
                    dose=records_pb2.Quantity(value=500, unit="mg"),
                    route="oral",
                    doses_per_day=3,
                    duration_days=7,
                    quantity=records_pb2.Quantity(value=21, unit="{capsule}"),
                    authored_time=timestamp(-2400),
                )
            ),
            records_pb2.ClinicalResource(
                procedure=records_pb2.Procedure(
                    **common,
                    code="87.44",
                    status=records_pb2.PROCEDURE_STATUS_COMPLETED,
                    performed_start_time=timestamp(-1800),
                    performed_end_time=timestamp(-1700),
                    performer_id="ktv-synthetic-01",
                )
            ),
            records_pb2.ClinicalResource(
                document_reference=records_pb2.DocumentReference(
                    **common,
                    type_code="18842-5",
                    status=records_pb2.DOCUMENT_STATUS_CURRENT,
                    content_type="text/plain",
                    content=SYNTHETIC_DOCUMENT,
                    signature=records_pb2.DocumentSignature(
                        signer_id="dr-synthetic-02",
                        certificate_thumbprint=hashlib.sha256(b"synthetic certificate").hexdigest(),
                        algorithm="ES256",
                        signed_time=timestamp(-600),
                    ),
                    document_time=timestamp(-900),
                )
            ),
        ]


@pytest.fixture
def clinical(identity: Any, records: Any) -> Clinical:
    return Clinical(identity, records)


async def count_stored_documents(mongo: Any) -> dict[str, int]:
    """What the identity and records services hold, collection by collection: a refused call must
    leave this unchanged. Work in the background is left out: audit spools and their counter and
    numbers (audited
    reads of sync; any audited call while audit is slow),
    tombstones that close abandoned feed positions, and sync's queue (fed later from earlier tests)."""
    counts: dict[str, int] = {}
    for database in ("emr_identity", "emr_records"):
        for collection in await mongo[database].list_collection_names():
            if collection in ("audit_spool", "audit_spool_rejected"):
                continue
            query: dict[str, Any] = {}
            if collection == "changes":
                query = {"tombstone": {"$ne": True}}
            elif collection == "counters":
                query = {"_id": {"$ne": "audit_spool"}}  # the spool's position counter
            elif collection == SEQUENCE_CLAIMS:
                # Numbers claimed by others than the spool ("audit_spool:<n>").
                query = {"$or": [{"_id": {"$lt": "audit_spool:"}}, {"_id": {"$gte": "audit_spool;"}}]}
            count = await mongo[database][collection].count_documents(query)
            if count:  # a collection made on the side (the spool's counter) holds nothing of interest
                counts[f"{database}.{collection}"] = count
    return counts


@pytest.fixture
def stored_documents(mongo: Any) -> Callable[[], Any]:
    return lambda: count_stored_documents(mongo)
