"""Records speed: what the cross-cutting features cost on writes, and whether timeline reads stay
flat as a patient's record grows.

Prints, in one run:
- CreateEncounter + 5 observations throughput at concurrency 32 with identity check, audit and
  tracing on, against the same with them off, and the ratio (target >= 0.6). The change feed is
  part of every write and stays on in both (it is how records reach sync).
- GetPatientTimeline p95 (first page of 50) for a patient with 2,000 entries against one with 10,
  and the ratio (target <= 2).

Runs FerretDB and the services as local processes on free loopback ports (the same launcher as
`make up`); takes a few minutes on 2 cores. Usage: .venv/bin/python bench/records_speed.py [--visits N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.processes import free_port
from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Ports, Stack
from emr_devstack.tokens import dev_admin_token
from emr_records.domain import ObservationContent, ObservationStatus, Quantity, ResourceInput, new_record
from emr_records.repository import ResourceRepository
from emr_runtime.channels import create_channel
from emr_runtime.clock import utc_now
from emr_runtime.fieldcrypt import FieldCrypt

CONCURRENCY = 32
# Clients retry UNAVAILABLE (every platform write is idempotent by request_id), as integrators should.
RECORDS_SERVICE = "emr.records.v1.ClinicalRecordsService"
IDENTITY_SERVICE = "emr.identity.v1.PatientIdentityService"


def stamp(offset_seconds: float) -> Timestamp:
    result = Timestamp()
    result.FromNanoseconds(int((time.time() + offset_seconds) * 1e9))
    return result


def encounter_request(patient_id: str) -> records_pb2.CreateEncounterRequest:
    return records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_IN_PROGRESS,
        start_time=stamp(-3600),
    )


def observation_request(
    patient_id: str, encounter_id: str, offset: float
) -> records_pb2.CreateResourceRequest:
    return records_pb2.CreateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                patient_id=patient_id,
                facility_code="79001",
                encounter_id=encounter_id,
                loinc_code="8867-4",
                status=records_pb2.OBSERVATION_STATUS_FINAL,
                value_quantity=records_pb2.Quantity(value=72, unit="/min"),
                effective_time=stamp(offset),
            )
        ),
    )


async def visit(stub: Any, patient_id: str) -> None:
    encounter = (await stub.CreateEncounter(encounter_request(patient_id))).encounter
    for index in range(5):
        await stub.CreateResource(observation_request(patient_id, encounter.encounter_id, -3000 + index))


async def write_throughput(target: str, patient_ids: list[str], visits: int) -> float:
    """Visits per second with CONCURRENCY clients sharing one channel."""
    async with create_channel(
        target, RECORDS_SERVICE, default_deadline=120, token=dev_admin_token()
    ) as channel:
        stub = records_pb2_grpc.ClinicalRecordsServiceStub(channel)
        await visit(stub, patient_ids[0])  # warm up connection and caches
        queue = list(range(visits))

        async def worker() -> None:
            while queue:
                index = queue.pop()
                await visit(stub, patient_ids[index % len(patient_ids)])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return visits / (time.perf_counter() - started)


async def timeline_p95(stub: Any, patient_id: str, calls: int) -> float:
    latencies = []
    request = records_pb2.GetPatientTimelineRequest(patient_id=patient_id, page_size=50)
    await stub.GetPatientTimeline(request)
    for _ in range(calls):
        started = time.perf_counter()
        await stub.GetPatientTimeline(request)
        latencies.append(time.perf_counter() - started)
    return statistics.quantiles(latencies, n=20)[18]


async def seed_timeline(stack: Stack, patient_id: str, entries: int) -> None:
    """Writes a patient's observations straight through the records repository: setting up 2,000
    entries through the API takes many minutes on FerretDB, and only reads are measured here. They
    never reach the change feed (no sync runs in this bench)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.effective_mongodb_uri, tz_aware=True)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # the stack's keys
    repository = ResourceRepository(client["emr_records"], crypt)
    now = utc_now()
    for index in range(entries):
        content = ObservationContent(
            loinc_code="8867-4",
            status=ObservationStatus.FINAL,
            effective_time=now - timedelta(minutes=index),
            value_quantity=Quantity(72, "/min"),
        )
        raw = ResourceInput(str(uuid.uuid4()), "", patient_id, "79001", "", content, "bench", "bench")
        record = new_record(raw, str(uuid.uuid4()), now)
        await repository.store_version(record)
        await repository.advance(record)
        await repository.mark_change_recorded(record)
    await client.close()


async def measure(stack: Stack, off_target: str, visits: int) -> None:
    async with create_channel(
        stack.target("identity"), IDENTITY_SERVICE, default_deadline=120, token=dev_admin_token()
    ) as channel:
        identity = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        patient_ids = []
        for index in range(CONCURRENCY):
            response = await identity.RegisterPatient(
                identity_pb2.RegisterPatientRequest(
                    request_id=str(uuid.uuid4()),
                    full_name=f"Bệnh Nhân Thử {index}",
                    birth_date="1980-01-01",
                    sex=identity_pb2.SEX_UNKNOWN,
                    facility_code="79001",
                )
            )
            patient_ids.append(response.patient.patient_id)

    on_runs, off_runs = [], []
    for _ in range(2):  # alternate, so that neither configuration always runs on a warmer database
        off_runs.append(await write_throughput(off_target, patient_ids, visits))
        on_runs.append(await write_throughput(stack.target("records"), patient_ids, visits))
    on, off = statistics.median(on_runs), statistics.median(off_runs)
    print(
        f"writes: visit = CreateEncounter + 5 observations, {visits} visits per run, concurrency {CONCURRENCY}"
    )
    print(f"  features on  (identity check, audit, tracing, change feed): {on:8.1f} visits/s  runs {on_runs}")
    print(
        f"  features off (change feed only):                             {off:8.1f} visits/s  runs {off_runs}"
    )
    print(f"  ratio on/off: {on / off:.2f}  (target >= 0.6)")

    async with create_channel(
        stack.target("records"), RECORDS_SERVICE, default_deadline=120, token=dev_admin_token()
    ) as channel:
        stub = records_pb2_grpc.ClinicalRecordsServiceStub(channel)
        big = await register(stack, "Đỗ Văn Nhiều", "1961-07-21")
        await seed_timeline(stack, big, 2000)
        small = await register(stack, "Lý Thị Ít", "1994-11-03")
        await seed_timeline(stack, small, 10)
        big_p95 = await timeline_p95(stub, big, 300)
        small_p95 = await timeline_p95(stub, small, 300)
        print("timeline: GetPatientTimeline, first page of 50, 300 calls each")
        print(f"  patient with {await count_entries(stub, big)} entries: p95 {big_p95 * 1000:.2f} ms")
        print(f"  patient with {await count_entries(stub, small)} entries: p95 {small_p95 * 1000:.2f} ms")
        print(f"  ratio: {big_p95 / small_p95:.2f}  (target <= 2)")


async def register(stack: Stack, full_name: str, birth_date: str) -> str:
    """A new synthetic person; names and birth dates differ so that identity never links two."""
    async with create_channel(
        stack.target("identity"), IDENTITY_SERVICE, default_deadline=120, token=dev_admin_token()
    ) as channel:
        identity = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        response = await identity.RegisterPatient(
            identity_pb2.RegisterPatientRequest(
                request_id=str(uuid.uuid4()),
                full_name=full_name,
                birth_date=birth_date,
                sex=identity_pb2.SEX_UNKNOWN,
                facility_code="79001",
            )
        )
        return str(response.patient.patient_id)


async def count_entries(stub: Any, patient_id: str) -> int:
    total, token = 0, ""
    while True:
        page = await stub.GetPatientTimeline(
            records_pb2.GetPatientTimelineRequest(patient_id=patient_id, page_size=200, page_token=token)
        )
        total += len(page.entries)
        token = page.next_page_token
        if not token:
            return total


def main() -> None:
    # SIGTERM (timeout, Ctrl-C in a pipeline) still stops the processes this bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--visits", type=int, default=300, help="visits per throughput run")
    args = parser.parse_args()
    stack = Stack(run_dir=Path(tempfile.mkdtemp(prefix="records-bench-")), ports=Ports.free())
    # This process calls the services with the development client certificate (create_channel reads TLS_*).
    os.environ.update(stack.client_tls.env())
    try:
        stack.start_ferretdb()
        for service in ("audit", "identity", "records"):
            stack.start_service(service)
        off_port = free_port()
        stack.start_service(
            "records",
            stack.with_ports(records=off_port, records_metrics=free_port()),
            name="records-features-off",
            extra_env={
                "RECORDS_MONGODB_DATABASE": "emr_records_features_off",
                "RECORDS_VERIFY_PATIENTS": "false",
                "RECORDS_AUDIT_ENABLED": "false",
                "OTEL_SDK_DISABLED": "true",
            },
        )
        asyncio.run(measure(stack, f"127.0.0.1:{off_port}", args.visits))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
