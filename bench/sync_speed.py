"""Sync speed: how fast sync drains a backlog compared with how fast the national side can take it.

Prints, in one run:
- the emulator's raw ingest rate: the same FHIR transaction Bundles posted by a plain HTTP client
  (one token, an Idempotency-Key each, the same concurrency as sync);
- the rate at which sync drains a backlog of finished encounters (20,000 by default) queued during
  a national outage: from the end of the outage until every one is acknowledged;
- their ratio (target >= 0.6).

Runs FerretDB, identity, records, the national emulator and sync as local processes on free loopback
ports (the same launcher as `make up`). Takes several minutes on 2 cores.
Usage: .venv/bin/python bench/sync_speed.py [--encounters N] [--raw N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Ports, Stack
from emr_runtime.fieldcrypt import FieldCrypt
from emr_sync.repository import PAYLOAD_KIND

CONCURRENCY = 16
ENCOUNTERS_PER_PATIENT = 10
WRITERS = 8  # more concurrent writers make FerretDB's SQLite backend answer 'database is locked'
SYNC_ENV = {
    "SYNC_CONCURRENCY": str(CONCURRENCY),
    "SYNC_POLL_INTERVAL_SECONDS": "0.2",
    "SYNC_CIRCUIT_OPEN_SECONDS": "0.5",
    "SYNC_CIRCUIT_MAX_OPEN_SECONDS": "1",
    "SYNC_FIRST_RETRY_DELAY_SECONDS": "0.2",
    "SYNC_MAX_RETRY_DELAY_SECONDS": "1",
    "SYNC_METRICS_PORT": "0",
    # A stable name: the restarted replica takes its own leases back at once, not after they expire.
    "SYNC_REPLICA_ID": "bench-sync",
    "OTEL_SDK_DISABLED": "true",
}


def stamp(offset_seconds: float) -> Timestamp:
    result = Timestamp()
    result.FromNanoseconds(int((time.time() + offset_seconds) * 1e9))
    return result


async def register(stub: Any, index: int) -> str:
    response = await stub.RegisterPatient(
        identity_pb2.RegisterPatientRequest(
            request_id=str(uuid.uuid4()),
            full_name="Phạm Văn Bảy",
            birth_date="1985-07-20",
            sex=identity_pb2.SEX_MALE,
            facility_code="79001",
            identifiers=[
                identity_pb2.Identifier(
                    system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079085{index:06d}"
                )
            ],
        )
    )
    return str(response.patient.patient_id)


async def create_backlog(stack: Stack, encounters: int) -> None:
    """Patients and finished encounters, written by WRITERS concurrent clients."""
    patients = max(encounters // ENCOUNTERS_PER_PATIENT, 1)
    async with (
        stack.dev_channel(stack.target("identity")) as identity_channel,
        stack.dev_channel(stack.target("records")) as records_channel,
    ):
        identity = identity_pb2_grpc.PatientIdentityServiceStub(identity_channel)
        records = records_pb2_grpc.ClinicalRecordsServiceStub(records_channel)
        patient_ids: list[str] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(patients):
            queue.put_nowait(index)

        async def registrar() -> None:
            while not queue.empty():
                patient_ids.append(await register(identity, queue.get_nowait()))

        await asyncio.gather(*(registrar() for _ in range(WRITERS)))
        work: asyncio.Queue[str] = asyncio.Queue()
        for number in range(encounters):
            work.put_nowait(patient_ids[number % len(patient_ids)])

        async def create(patient_id: str) -> None:
            request = records_pb2.CreateEncounterRequest(
                request_id=str(uuid.uuid4()),
                patient_id=patient_id,
                facility_code="79001",
                encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
                status=records_pb2.ENCOUNTER_STATUS_FINISHED,
                start_time=stamp(-3600),
                end_time=stamp(-600),
                reason="Khám sức khỏe",
            )
            for attempt in range(5):
                try:
                    await records.CreateEncounter(request)
                    return
                except grpc.aio.AioRpcError as error:
                    # FerretDB's SQLite backend sometimes answers "database is locked" under
                    # concurrent writes; the same request_id makes the retry safe.
                    if error.code() != grpc.StatusCode.INTERNAL or attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

        async def writer() -> None:
            while not work.empty():
                await create(work.get_nowait())

        # One write first: concurrent first writes race to create records' sequence counter.
        await create(work.get_nowait())
        await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def sync_status(stack: Stack) -> sync_pb2.GetSyncStatusResponse:
    async with stack.dev_channel(stack.target("sync")) as channel:
        response: sync_pb2.GetSyncStatusResponse = await sync_pb2_grpc.NationalSyncServiceStub(
            channel
        ).GetSyncStatus(sync_pb2.GetSyncStatusRequest())
        return response


async def wait_for(stack: Stack, done: Any, what: str, within_seconds: float = 3600) -> None:
    deadline = time.monotonic() + within_seconds
    while not done(await sync_status(stack)):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.25)


async def raw_ingest_rate(stack: Stack, payloads: list[bytes]) -> float:
    """Bundles per second a plain client gets accepted, at sync's concurrency."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=stack.url("national_emulator"), limits=limits, timeout=30) as http:
        token_response = await http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=("emr-platform", "dev-secret")
        )
        token = token_response.json()["access_token"]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for payload in payloads:
            queue.put_nowait(payload)

        async def poster() -> None:
            while not queue.empty():
                response = await http.post(
                    "/fhir",
                    content=queue.get_nowait(),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": f"raw-{uuid.uuid4()}",
                        "Content-Type": "application/fhir+json",
                    },
                )
                response.raise_for_status()

        started = time.monotonic()
        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
        return len(payloads) / (time.monotonic() - started)


async def measure(stack: Stack, encounters: int, raw: int) -> None:
    started = time.monotonic()
    await create_backlog(stack, encounters)
    print(f"backlog: {encounters} finished encounters written in {time.monotonic() - started:.0f}s")
    # Sync starts during a national outage: it queues everything and can send nothing.
    stack.start_service("national_emulator", extra_env={"NATIONAL_EMULATOR_LOG_LEVEL": "warning"})
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        (await http.put("/admin/faults", json={"outage_seconds": 24 * 3600})).raise_for_status()
    stack.start_service("sync", extra_env=SYNC_ENV)
    await wait_for(stack, lambda s: s.pending + s.in_flight >= encounters, "intake")
    queued = await sync_status(stack)
    print(
        f"  queued by sync during an outage after {time.monotonic() - started:.0f}s; "
        f"oldest pending {queued.oldest_pending_age_seconds:.0f}s, reachable={queued.national_reachable}"
    )

    # Sync stops; the national side comes back; a plain client measures what it can take.
    stack.processes["sync"].stop()
    del stack.processes["sync"]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.effective_mongodb_uri)
    cursor = client["emr_sync"]["payloads"].find({}).limit(raw)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # payloads are stored sealed
    payloads = [crypt.unseal(PAYLOAD_KIND, bytes(document["body"])) async for document in cursor]
    await client.close()
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        (await http.put("/admin/faults", json={"outage_seconds": 0})).raise_for_status()
    raw_rate = await raw_ingest_rate(stack, payloads)

    stack.start_service("sync", extra_env=SYNC_ENV)
    drain_started = time.monotonic()
    await wait_for(stack, lambda s: s.delivered >= encounters, "drain")
    drain_rate = encounters / (time.monotonic() - drain_started)
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        stats = (await http.get("/stats")).json()
    print(
        f"national emulator raw ingest (plain client, concurrency {CONCURRENCY}): {raw_rate:8.1f} bundles/s"
    )
    print(f"sync draining a backlog of {encounters} encounters:             {drain_rate:8.1f} bundles/s")
    print(f"ratio sync/raw: {drain_rate / raw_rate:.2f}  (target >= 0.6)")
    print(f"emulator: {stats['held']} held, {stats['duplicates_received']} duplicates received")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encounters", type=int, default=20_000, help="backlog size")
    parser.add_argument("--raw", type=int, default=5_000, help="bundles the plain client posts")
    args = parser.parse_args()
    stack = Stack(run_dir=Path(tempfile.mkdtemp(prefix="sync-bench-")), ports=Ports.free())
    try:
        stack.start_ferretdb()
        stack.start_service("audit")
        stack.start_service("identity")
        # The backlog is the subject here, not the cost of writing it: skip records' own checks.
        stack.start_service(
            "records",
            extra_env={
                "RECORDS_VERIFY_PATIENTS": "false",
                "RECORDS_AUDIT_ENABLED": "false",
                "OTEL_SDK_DISABLED": "true",
            },
        )
        asyncio.run(measure(stack, args.encounters, args.raw))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
