"""SIGTERM drains: calls in flight finish, the process exits 0, and a restarted service serves."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.processes import free_port

SERVICE = "emr.identity.v1.PatientIdentityService"


async def started_calls(metrics_port: int, method: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_method") == method:
                return sample.value
    return 0.0


async def test_sigterm_lets_in_flight_calls_finish_then_exits_zero(
    stack: Any, registration: Any, facility_code: str
) -> None:
    ports = stack.with_ports(identity=free_port(), audit=free_port())
    audit_process = stack.start_service(
        "audit", ports, name="audit-drain", extra_env={"AUDIT_MONGODB_DATABASE": "emr_audit_drain"}
    )
    identity_env = {
        "IDENTITY_MONGODB_DATABASE": "emr_identity_drain",
        "IDENTITY_AUDIT_TARGET": f"127.0.0.1:{ports.audit}",
    }
    identity_process = stack.start_service("identity", ports, name="identity-drain", extra_env=identity_env)
    target = f"127.0.0.1:{ports.identity}"

    # A frozen audit service holds every RegisterPatient in flight until its audit append times
    # out (then the event is spooled and the call succeeds): calls are provably in flight.
    audit_process.signal(signal.SIGSTOP)
    try:
        async with stack.dev_channel(target) as channel:
            stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
            requests = [registration(facility_code) for _ in range(4)]
            calls = [asyncio.ensure_future(stub.RegisterPatient(r, timeout=30)) for r in requests]
            deadline = time.monotonic() + 10
            while await started_calls(ports.identity_metrics, "RegisterPatient") < len(calls):
                assert time.monotonic() < deadline, "calls never reached the server"
                await asyncio.sleep(0.05)
            assert not any(call.done() for call in calls)

            identity_process.signal(signal.SIGTERM)
            responses = await asyncio.gather(*calls)
        assert [r.outcome for r in responses] == [identity_pb2.REGISTRATION_OUTCOME_CREATED] * 4
        assert identity_process.wait(timeout=20) == 0
    finally:
        audit_process.signal(signal.SIGCONT)

    # Restarted on the same port and database, it serves what it stored before the stop, and the
    # audit events spooled during the freeze reach the audit service.
    stack.start_service("identity", ports, name="identity-drain-restarted", extra_env=identity_env)
    async with (
        stack.dev_channel(target) as channel,
        stack.dev_channel(f"127.0.0.1:{ports.audit}") as audit_channel,
    ):
        stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        audit = audit_pb2_grpc.AuditServiceStub(audit_channel)
        for response in responses:
            fetched = await stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=response.patient.patient_id)
            )
            assert fetched.patient == response.patient
        deadline = time.monotonic() + 20
        for response in responses:
            while True:
                page = await audit.QueryEvents(
                    audit_pb2.QueryEventsRequest(patient_id=response.patient.patient_id)
                )
                if any(e.operation == f"/{SERVICE}/RegisterPatient" for e in page.events):
                    break
                assert time.monotonic() < deadline, "spooled audit event never arrived"
                await asyncio.sleep(0.1)
