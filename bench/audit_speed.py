"""What the tamper-evident audit log costs, measured in one run on this machine (FerretDB on loopback):

1. Append throughput of the audit log (hash chain, group commit, signed checkpoints written
   meanwhile) against plain inserts of the same documents into the same database, at the same
   concurrency; the ratio (target >= 0.5).
2. The latency an identity GetPatient pays for its audit event: p50/p99 of the same calls on an
   identity server with its audit interceptor and on one without it (same code, same database).

    .venv/bin/python bench/audit_speed.py [--events 2000] [--concurrency 16] [--calls 400]

Prints its figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from emr.identity.v1 import identity_pb2, identity_pb2_grpc

from emr_audit.domain import (
    GENESIS_HASH,
    Action,
    Agent,
    AgentType,
    AuditEvent,
    Entity,
    EntityRole,
    Outcome,
    chain,
)
from emr_audit.repository import INDEXES, AuditRepository, event_document
from emr_audit.service import AuditLog
from emr_audit.signing import CheckpointSigner
from emr_devstack.processes import ManagedProcess, free_port, grpc_serving, wait_until
from emr_devstack.stack import Ports, Stack
from emr_devstack.tokens import caller_metadata
from emr_runtime.db import create_mongo_client, ensure_indexes

CHECKPOINT_EVERY_EVENTS = 500
CHECKPOINT_EVERY_SECONDS = 1.0


def synthetic_events(count: int) -> list[AuditEvent]:
    now = datetime.now(UTC).replace(microsecond=0)
    return [
        AuditEvent(
            event_id=str(uuid.uuid4()),
            action=Action.READ,
            outcome=Outcome.SUCCESS,
            occurred_at=now,
            actor_id=f"dr-bench-{index % 40}",
            actor_facility_code="79001",
            source_service="identity",
            operation="/emr.identity.v1.PatientIdentityService/GetPatient",
            patient_id=f"patient-{index % 500}",
            resource_type="Patient",
            resource_id=f"patient-{index % 500}",
            purpose_of_use="TREATMENT",
            request_id="",
            trace_id=uuid.uuid4().hex,
            agents=(Agent(AgentType.USER, f"dr-bench-{index % 40}", "physician", "79001", requestor=True),),
            entities=(Entity(EntityRole.PATIENT, f"patient-{index % 500}", "Patient"),),
        )
        for index in range(count)
    ]


async def run_concurrently(count: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Runs ``one(i)`` for i in 0..count-1 with ``concurrency`` workers; returns items per second."""
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            await one(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def append_throughput(mongodb_uri: str, events: int, concurrency: int) -> tuple[float, float]:
    client = create_mongo_client(mongodb_uri, "emr-bench")
    try:
        batch = synthetic_events(events)
        # Plain: the very documents the log stores (chained, hashed), one insert per event.
        plain_db = client[f"bench_plain_{uuid.uuid4().hex[:6]}"]
        await ensure_indexes(plain_db, INDEXES)
        received = datetime.now(UTC)
        stored = [event_document(e) for e in chain([e.received(received) for e in batch], 1, GENESIS_HASH)]
        plain = plain_db["events"]
        plain_rate = await run_concurrently(events, concurrency, lambda i: plain.insert_one(stored[i]))

        log_db = client[f"bench_log_{uuid.uuid4().hex[:6]}"]
        await ensure_indexes(log_db, INDEXES)
        log = AuditLog(AuditRepository(log_db), CheckpointSigner(Ed25519PrivateKey.generate()))
        checkpoints = asyncio.create_task(
            log.run_checkpoints(CHECKPOINT_EVERY_EVENTS, CHECKPOINT_EVERY_SECONDS, poll_seconds=0.2)
        )
        fresh = [replace(e, event_id=str(uuid.uuid4())) for e in batch]
        log_rate = await run_concurrently(events, concurrency, lambda i: log.append([fresh[i]]))
        checkpoints.cancel()
        written = await log_db["checkpoints"].count_documents({})
        report = await log.verify(0, 0)
        assert report.finding is None and report.checked_events == events, report
        print(f"    (audit log: {written} signed checkpoints written during the run; chain verified intact)")
        for name in (plain_db.name, log_db.name):
            await client.drop_database(name)
        return plain_rate, log_rate
    finally:
        await client.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def get_patient_latency(stack: Stack, calls: int) -> tuple[list[float], list[float]]:
    """Alternates the same GetPatient calls between identity with audit and identity without it."""
    without_port = free_port()
    without = ManagedProcess(
        "identity-without-audit",
        [sys.executable, str(Path(__file__).resolve()), "--serve-identity-without-audit"],
        {
            **stack.service_env("identity"),
            "IDENTITY_GRPC_PORT": str(without_port),
            "IDENTITY_METRICS_PORT": "0",
            "IDENTITY_HEALTH_PORT": "0",
        },
        stack.run_dir / "logs" / "identity-without-audit.log",
    ).start()
    stack.processes["identity-without-audit"] = without
    credentials = stack.client_tls.channel_credentials()
    wait_until(
        without, lambda: grpc_serving(f"127.0.0.1:{without_port}", credentials=credentials), 60, "SERVING"
    )
    metadata = caller_metadata("dr-bench", "79001", "TREATMENT", role="doctor")
    async with (
        stack.dev_channel(stack.target("identity")) as audited_channel,
        stack.dev_channel(f"127.0.0.1:{without_port}") as plain_channel,
    ):
        audited = identity_pb2_grpc.PatientIdentityServiceStub(audited_channel)
        plain = identity_pb2_grpc.PatientIdentityServiceStub(plain_channel)
        patient_ids = []
        for serial in range(20):
            registered = await plain.RegisterPatient(
                identity_pb2.RegisterPatientRequest(
                    request_id=str(uuid.uuid4()),
                    full_name="Lê Văn Bench",
                    birth_date="1980-01-01",
                    sex=identity_pb2.SEX_MALE,
                    facility_code="79001",
                    identifiers=[
                        identity_pb2.Identifier(
                            system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079080{serial:06d}"
                        )
                    ],
                ),
                metadata=metadata,
            )
            patient_ids.append(registered.patient.patient_id)
        samples: dict[str, list[float]] = {"with": [], "without": []}
        for call in range(calls + 20):  # the first 20 of each warm up connections and caches
            for name, stub in (("with", audited), ("without", plain)):
                request = identity_pb2.GetPatientRequest(patient_id=patient_ids[call % len(patient_ids)])
                started = time.perf_counter()
                await stub.GetPatient(request, metadata=metadata)
                if call >= 20:
                    samples[name].append((time.perf_counter() - started) * 1000)
    return samples["with"], samples["without"]


async def main(arguments: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="emr-audit-bench-") as run_dir:
        stack = Stack(run_dir=Path(run_dir), ports=Ports.free())
        try:
            stack.start_ferretdb()
            print(
                f"audit_speed: {arguments.events} events, {arguments.concurrency} concurrent appenders, FerretDB"
            )
            plain_rate, log_rate = await append_throughput(
                stack.effective_mongodb_uri, arguments.events, arguments.concurrency
            )
            print(f"  plain inserts of the same documents : {plain_rate:8.0f} events/s")
            print(
                f"  audit log (chain + checkpoints)     : {log_rate:8.0f} events/s"
                f"  (every {CHECKPOINT_EVERY_EVENTS} events or {CHECKPOINT_EVERY_SECONDS:g} s)"
            )
            print(f"  ratio audit/plain                   : {log_rate / plain_rate:8.2f}   (target >= 0.5)")
            sequential_plain, sequential_log = await append_throughput(stack.effective_mongodb_uri, 300, 1)
            print(
                f"  one appender at a time              : plain {sequential_plain:.0f}/s, audit log "
                f"{sequential_log:.0f}/s, ratio {sequential_log / sequential_plain:.2f}"
            )

            stack.start_service("audit")
            stack.start_service("identity")
            with_audit, without_audit = await get_patient_latency(stack, arguments.calls)
            p50w, p99w = percentile(with_audit, 0.5), percentile(with_audit, 0.99)
            p50o, p99o = percentile(without_audit, 0.5), percentile(without_audit, 0.99)
            print(f"identity GetPatient, {arguments.calls} calls each, sequential:")
            print(f"  without audit : p50 {p50o:6.2f} ms   p99 {p99o:6.2f} ms")
            print(f"  with audit    : p50 {p50w:6.2f} ms   p99 {p99w:6.2f} ms")
            print(f"  added by audit: p50 {p50w - p50o:+6.2f} ms   p99 {p99w - p99o:+6.2f} ms")
            print(
                f"  (mean with {statistics.fmean(with_audit):.2f} ms, without {statistics.fmean(without_audit):.2f} ms)"
            )
        finally:
            stack.stop()


def serve_identity_without_audit() -> None:
    """The identity service exactly as it runs, minus its audit interceptor (the baseline)."""
    from emr_identity.app import build
    from emr_identity.settings import IdentitySettings
    from emr_runtime.db import Database
    from emr_runtime.server import ServiceApp, run

    async def build_without_audit(settings: IdentitySettings, db: Database) -> ServiceApp:
        app = await build(settings, db)
        app.audit_sink = None
        app.background = ()
        return app

    run("identity", IdentitySettings(), build_without_audit)


if __name__ == "__main__":
    if "--serve-identity-without-audit" in sys.argv:
        serve_identity_without_audit()
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--events", type=int, default=2000)
        parser.add_argument("--concurrency", type=int, default=16)
        parser.add_argument("--calls", type=int, default=400)
        asyncio.run(main(parser.parse_args()))
