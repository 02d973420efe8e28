"""Sync speed: how fast sync drains a backlog compared with how fast the national side can take it.

Prints, in one run:
- the emulator's raw ingest rate: the same FHIR transaction Bundles posted by a plain HTTP client
  (one token, an Idempotency-Key each, the same concurrency as sync);
- the rate at which sync drains a backlog of finished encounters (20,000 by default): from the start
  of the sync process until the emulator holds every one and sync has recorded every receipt;
- their ratio (target >= 0.6), against the faster of two raw runs (before and after the drain).

The backlog is written straight into sync's queue through its repository (SyncRepository.enqueue,
what intake does after building payloads), made by emr_sync.synthetic.encounter_backlog with intake's
own Bundle function (one synthetic patient per 10 encounters): writing 20,000
encounters through the identity and records APIs takes far longer on FerretDB than the drain itself,
and only the drain is measured here. Sync then sends them to the emulator over real HTTP.

Runs FerretDB, records (an empty feed for sync's intake), the national emulator and sync as local
processes on free loopback ports (the same launcher as `make up`). Several minutes on 2 cores.
Usage: .venv/bin/python bench/sync_speed.py [--encounters N] [--raw N]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from fhir.resources.R4B.bundle import Bundle
from pymongo import AsyncMongoClient

from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Ports, Stack
from emr_runtime.fieldcrypt import FieldCrypt
from emr_sync.domain import Delivery
from emr_sync.repository import SyncRepository
from emr_sync.settings import SyncSettings
from emr_sync.synthetic import SyntheticVisit, check_claim_totals, encounter_backlog

CONCURRENCY = 16
ENCOUNTERS_PER_PATIENT = 10
SEED_CHUNK = 1000
SYNC_ENV = {
    "SYNC_CONCURRENCY": str(CONCURRENCY),
    "SYNC_POLL_INTERVAL_SECONDS": "0.2",
    "SYNC_BACKLOG_METRICS_INTERVAL_SECONDS": "30",
    "SYNC_METRICS_PORT": "0",
    "SYNC_REPLICA_ID": "bench-sync",
    "OTEL_SDK_DISABLED": "true",
}


async def seed(stack: Stack, deliveries: list[Delivery]) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.effective_mongodb_uri, tz_aware=True)
    repository = SyncRepository(
        client[SyncSettings().mongodb_database], FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)
    )
    for start in range(0, len(deliveries), SEED_CHUNK):
        await repository.enqueue(deliveries[start : start + SEED_CHUNK])
    await client.close()


async def sync_status(stack: Stack) -> sync_pb2.GetSyncStatusResponse:
    async with stack.dev_channel(stack.target("sync")) as channel:
        response: sync_pb2.GetSyncStatusResponse = await sync_pb2_grpc.NationalSyncServiceStub(
            channel
        ).GetSyncStatus(sync_pb2.GetSyncStatusRequest(), timeout=60)
        return response


async def emulator_held(stack: Stack) -> int:
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        return int((await http.get("/stats")).json()["held"])


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


async def poll(probe: Any, what: str, every: float, within_seconds: float = 7200) -> None:
    deadline = time.monotonic() + within_seconds
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(every)


async def measure(stack: Stack, encounters: int, raw: int) -> None:
    started = time.monotonic()
    claims_checked = 0

    def check_claim(visit: SyntheticVisit) -> None:
        nonlocal claims_checked
        check_claim_totals(visit)  # raises unless every XML1 total is the sum of the claim's lines
        claims_checked += 1

    deliveries = encounter_backlog(encounters, SyncSettings().partitions, ENCOUNTERS_PER_PATIENT, check_claim)
    assert claims_checked == encounters
    Bundle.model_validate_json(deliveries[0].payload)  # what intake checks; one shows the shape holds
    await seed(stack, deliveries)
    print(
        f"backlog: {encounters} finished encounters queued through SyncRepository.enqueue "
        f"in {time.monotonic() - started:.0f}s; claims checked (XML1 totals = sums of the lines): "
        f"{claims_checked}"
    )
    payloads = [bytes(d.payload) for d in deliveries[:raw]]
    raw_rate = await raw_ingest_rate(stack, payloads)
    held_before = await emulator_held(stack)

    drain_started = time.monotonic()
    stack.start_service("sync", extra_env=SYNC_ENV)

    async def all_held() -> bool:
        return await emulator_held(stack) >= held_before + encounters

    # The emulator's count is cheap to ask; sync's status reads its whole queue, so it is asked last.
    await poll(all_held, "emulator holding the backlog", 0.5)
    held_after = time.monotonic() - drain_started

    async def all_recorded() -> bool:
        return (await sync_status(stack)).delivered >= encounters

    await poll(all_recorded, "sync recording every receipt", 0.5)
    drain_seconds = time.monotonic() - drain_started
    drain_rate = encounters / drain_seconds
    # Measured again after the drain: a short run is at the mercy of whatever else the machine does,
    # and the ratio is taken against the faster of the two.
    raw_rate_after = await raw_ingest_rate(stack, payloads)
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        stats = (await http.get("/stats")).json()
    final = await sync_status(stack)
    print(
        f"national emulator raw ingest (plain client, concurrency {CONCURRENCY}, {raw} bundles): "
        f"{max(raw_rate, raw_rate_after):8.1f} bundles/s  (before the drain {raw_rate:.1f}, after {raw_rate_after:.1f})"
    )
    raw_rate = max(raw_rate, raw_rate_after)
    print(
        f"sync draining a backlog of {encounters} encounters:                       {drain_rate:8.1f} bundles/s"
        f"  ({drain_seconds:.0f}s from sync's start to every receipt recorded; the emulator held all "
        f"after {held_after:.0f}s)"
    )
    print(f"ratio sync/raw: {drain_rate / raw_rate:.2f}  (target >= 0.6)")
    print(
        f"emulator: {stats['held']} held ({2 * raw} from the plain client), "
        f"{stats['duplicates_received']} duplicates received; sync: {final.delivered} delivered, "
        f"{final.pending} pending, {final.dead_lettered} dead-lettered"
    )


def main() -> None:
    # SIGTERM (timeout, Ctrl-C in a pipeline) still stops the processes this bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encounters", type=int, default=20_000, help="backlog size")
    parser.add_argument("--raw", type=int, default=5_000, help="bundles the plain client posts")
    args = parser.parse_args()
    stack = Stack(run_dir=Path(tempfile.mkdtemp(prefix="sync-bench-")), ports=Ports.free())
    try:
        stack.start_ferretdb()
        # Sync's intake reads the (empty) records feed; the backlog is already in its queue.
        stack.start_service(
            "records",
            extra_env={
                "RECORDS_VERIFY_PATIENTS": "false",
                "RECORDS_AUDIT_ENABLED": "false",
                "OTEL_SDK_DISABLED": "true",
            },
        )
        stack.start_service("national_emulator", extra_env={"NATIONAL_EMULATOR_LOG_LEVEL": "warning"})
        asyncio.run(measure(stack, args.encounters, min(args.raw, args.encounters)))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
