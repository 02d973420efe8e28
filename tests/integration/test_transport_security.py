"""Transport security and hardening: mutual TLS on every API port (no plaintext, no certificate, no
foreign CA), health alone (no reflection) on the plaintext health port, message size, field length
and timestamp limits, default deadlines, per-client-application rate limits, and no secret echoed in
errors or logs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_status import rpc_status

from emr_devstack.certs import ensure_dev_certificates, tls_files
from emr_devstack.processes import free_port
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata, issue_token
from emr_runtime.caller import PURPOSE_OF_USE_KEY

CALLER = caller_metadata("dr-synthetic-07", "79001", "TREATMENT")


def as_application(name: str) -> list[tuple[str, str]]:
    """A caller whose token names ``name`` as its client application (the rate limit's key)."""
    token = issue_token("dr-synthetic-07", "79001", client_application=name)
    return [("authorization", f"Bearer {token}"), (PURPOSE_OF_USE_KEY, "TREATMENT")]


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPatient(identity_pb2.GetPatientRequest(patient_id="p-1"), timeout=5)
    return caught.value.code()


async def test_api_ports_refuse_plaintext_and_callers_without_a_platform_certificate(
    stack: Stack, tmp_path: Path
) -> None:
    target = stack.target("identity")
    async with grpc.aio.insecure_channel(target) as plaintext:
        assert await refused(plaintext) == grpc.StatusCode.UNAVAILABLE
    ca_only = grpc.ssl_channel_credentials(root_certificates=stack.client_tls.ca.read_bytes())
    async with grpc.aio.secure_channel(target, ca_only) as without_certificate:
        assert await refused(without_certificate) == grpc.StatusCode.UNAVAILABLE
    foreign = tls_files(ensure_dev_certificates(tmp_path / "foreign"), "client")
    foreign_cert = grpc.ssl_channel_credentials(
        root_certificates=stack.client_tls.ca.read_bytes(),
        private_key=foreign.key.read_bytes(),
        certificate_chain=foreign.cert.read_bytes(),
    )
    async with grpc.aio.secure_channel(target, foreign_cert) as foreign_ca:
        assert await refused(foreign_ca) == grpc.StatusCode.UNAVAILABLE
    # The platform's own client certificate gets through to the service (which knows no such patient).
    async with stack.dev_channel(target) as trusted:
        assert await refused(trusted) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", ["identity", "records", "audit", "sync"])
async def test_health_port_is_plaintext_and_serves_health_alone(stack: Stack, service: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{getattr(stack.ports, f'{service}_health')}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert await refused(channel) == grpc.StatusCode.UNIMPLEMENTED
        # No reflection either: the unauthenticated port tells nothing about the API (the API port,
        # behind mutual TLS, has it).
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        assert await reflection.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_too_long_fields_bad_times_and_garbage_bytes_name_the_field(
    identity: Any, records: Any, bad_fields: Any, channels: dict[str, grpc.aio.Channel]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.GetPatient(identity_pb2.GetPatientRequest(patient_id="p" * 129), metadata=CALLER)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["patient_id"]

    request = records_pb2.ListObservationsRequest(patient_id="p-1")
    request.start_time.nanos = -1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records.ListObservations(request, metadata=CALLER)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["start_time"]

    raw: Any = channels["identity"].unary_unary("/emr.identity.v1.PatientIdentityService/GetPatient")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff\xff", metadata=CALLER, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["request"]


@pytest.fixture(scope="module")
async def strict_records(stack: Stack) -> AsyncIterator[records_pb2_grpc.ClinicalRecordsServiceStub]:
    """A records instance with tight limits: 64 KiB messages, 3 calls saved up per application and
    almost no refill, a one-second default deadline for streams."""
    ports = stack.with_ports(records=free_port())
    name = f"records-strict-{uuid.uuid4().hex[:6]}"
    process = stack.start_service(
        "records",
        ports,
        name=name,
        extra_env={
            "RECORDS_MAX_MESSAGE_BYTES": "65536",
            "RECORDS_RATE_LIMIT_PER_SECOND": "0.001",
            "RECORDS_RATE_LIMIT_BURST": "3",
            "RECORDS_STREAM_DEFAULT_DEADLINE_SECONDS": "1",
        },
    )
    async with stack.dev_channel(f"127.0.0.1:{ports.records}") as channel:
        yield records_pb2_grpc.ClinicalRecordsServiceStub(channel)
    assert process.stop() == 0
    stack.processes.pop(name, None)


async def test_rate_limit_is_per_client_application(
    strict_records: records_pb2_grpc.ClinicalRecordsServiceStub,
) -> None:
    request = records_pb2.GetEncounterRequest(encounter_id="enc-unknown")
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await strict_records.GetEncounter(request, metadata=as_application("his-a"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # let through, answered
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await strict_records.GetEncounter(request, metadata=as_application("his-a"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    assert status is not None and status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    # Another application has its own bucket; so has the development client (emr-dev).
    for metadata in (as_application("his-b"), CALLER):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await strict_records.GetEncounter(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stream_without_a_deadline_gets_the_default(
    strict_records: records_pb2_grpc.ClinicalRecordsServiceStub,
) -> None:
    changes = strict_records.StreamChanges(
        records_pb2.StreamChangesRequest(), metadata=as_application("feed-reader")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in changes:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_oversized_message_is_refused_before_the_service_sees_it(
    strict_records: records_pb2_grpc.ClinicalRecordsServiceStub, stored_documents: Any
) -> None:
    request = records_pb2.CreateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(
            document_reference=records_pb2.DocumentReference(
                patient_id="p-1", facility_code="79001", content_type="text/plain", content=b"x" * 100_000
            )
        ),
    )
    before = await stored_documents()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await strict_records.CreateResource(request, metadata=as_application("uploader"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await stored_documents() == before


async def test_no_secret_is_echoed_in_answers_or_logs(identity: Any, stack: Stack) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    metadata = [*CALLER, ("authorization", f"Bearer {secret}"), ("x-api-key", secret)]
    answers = []
    for request in (
        identity_pb2.GetPatientRequest(patient_id=secret),
        identity_pb2.GetPatientRequest(patient_id=secret * 10),
        identity_pb2.GetPatientRequest(patient_id=""),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.GetPatient(request, metadata=metadata)
        answers.append(f"{caught.value.details()} {caught.value.trailing_metadata()}")
    assert not [answer for answer in answers if secret in answer]
    private_keys = [tls_files(stack.certs_dir, name).key.read_text() for name in ("identity", "client")]
    for log in (stack.run_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert secret not in text, log.name
        assert not [key for key in private_keys if key.strip().splitlines()[1] in text], log.name
