"""Identity's patient change feed and its way to the national system, through real processes.

The feed never skips a change (a consumer polling throughout, while a slow writer holds a position
open and concurrent registrations commit after it, is handed every change once, in order); sync
takes it with a durable cursor of its own and sends each person change once, per patient in order:
registrations, an update, a merge (the merged person inactive, replaced by the survivor) and its
unmerge; a sync replica killed mid-stream loses nothing and sends nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from pymongo import AsyncMongoClient

from emr_devstack.processes import ManagedProcess, free_port
from emr_devstack.stack import Stack
from emr_identity.domain import PatientChangeKind
from emr_identity.repository import PATIENT_CHANGE_COUNTER, PatientChangeRepository
from emr_runtime.db import last_sequence

FEED_DATABASE = "emr_identity_feed"
SETTLE_SECONDS = 3.0
SKIPPED = 2**62  # a cursor past every sequence: that feed is not this test's


def person(facility_code: str) -> identity_pb2.RegisterPatientRequest:
    """A new synthetic person each time (distinct CCCD, name and birth date: never linked)."""
    serial = uuid.uuid4().int % 10**6
    given = ("An", "Bảo", "Châu", "Dung", "Giang", "Hạnh", "Khánh", "Linh", "Mai", "Ngân", "Oanh", "Phương")
    return identity_pb2.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Phạm Thị {given[serial % len(given)]} {serial:06d}",
        birth_date=f"1995-{serial % 12 + 1:02d}-{serial % 28 + 1:02d}",
        sex=identity_pb2.SEX_FEMALE,
        facility_code=facility_code,
        # CCCD: province 079, century/sex 1 (1900s, female), birth year 95, then 6 digits.
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079195{serial:06d}")
        ],
    )


# --- the feed itself: gap-free under concurrent writers ------------------------------------------


@pytest.fixture(scope="module")
async def feed_identity(stack: Stack) -> AsyncIterator[identity_pb2_grpc.PatientIdentityServiceStub]:
    """An identity instance of its own database, with a short hole timeout."""
    ports = stack.with_ports(identity=free_port())
    process = stack.start_service(
        "identity",
        ports,
        name="identity-feed",
        extra_env={
            "IDENTITY_MONGODB_DATABASE": FEED_DATABASE,
            "IDENTITY_CHANGE_SETTLE_SECONDS": str(SETTLE_SECONDS),
        },
    )
    async with stack.dev_channel(f"127.0.0.1:{ports.identity}") as channel:
        yield identity_pb2_grpc.PatientIdentityServiceStub(channel)
    assert process.stop() == 0


class Consumer:
    """Polls ListPatientChanges from a cursor, as sync does, recording what it is handed."""

    def __init__(self, stub: Any, after: int) -> None:
        self.stub = stub
        self.after = after
        self.seen: list[tuple[int, str]] = []

    async def poll_once(self) -> int:
        page = await self.stub.ListPatientChanges(
            identity_pb2.ListPatientChangesRequest(after_sequence=self.after, limit=50)
        )
        self.seen.extend((c.sequence, c.patient_id) for c in page.changes)
        self.after = page.next_after_sequence
        return len(page.changes)

    async def poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(0.02)

    async def poll_until(self, count: int, within_seconds: float = 30) -> None:
        """Polls until ``count`` changes were handed out in all."""
        deadline = time.monotonic() + within_seconds
        while len(self.seen) < count:
            assert time.monotonic() < deadline, f"{len(self.seen)} of {count} changes handed out"
            await self.poll_once()
            await asyncio.sleep(0.02)


async def test_consumer_never_misses_a_patient_change_that_commits_late(
    feed_identity: Any, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    db = mongo[FEED_DATABASE]
    feed = PatientChangeRepository(db)
    consumer = Consumer(feed_identity, await last_sequence(db, PATIENT_CHANGE_COUNTER))
    # A slow writer takes a feed position for a person it has just stored, then stalls.
    slow = await feed_identity.RegisterPatient(person("79001"))
    slow_id = slow.patient.patient_id
    await consumer.poll_until(1)  # its registration, handed out before the stall
    hole = await feed.reserve()
    registered: list[str] = []

    async def registrar() -> None:
        for _ in range(8):
            response = await feed_identity.RegisterPatient(person("79001"))
            assert response.outcome == identity_pb2.REGISTRATION_OUTCOME_CREATED
            registered.append(response.patient.patient_id)

    polling = asyncio.ensure_future(consumer.poll_forever())  # the consumer polls throughout
    await asyncio.gather(registrar(), registrar(), registrar())
    # Only now does the slow change commit, after every fast one; if a tombstone closed its
    # position meanwhile, it takes a new one, exactly as the service's own writer does.
    key = f"slow:{uuid.uuid4()}"
    if not await feed.write(hole, PatientChangeKind.UPDATED, slow_id, key):
        await feed.append(PatientChangeKind.UPDATED, slow_id, key)
    polling.cancel()

    await consumer.poll_until(1 + len(registered) + 1)
    handed_out = [patient_id for _, patient_id in consumer.seen]
    assert len(registered) == 24
    assert sorted(handed_out) == sorted([slow_id, *registered, slow_id]), "a change was lost or repeated"
    sequences = [sequence for sequence, _ in consumer.seen]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)


async def test_an_abandoned_patient_change_position_is_skipped_after_the_settle_time(
    feed_identity: Any, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    db = mongo[FEED_DATABASE]
    consumer = Consumer(feed_identity, await last_sequence(db, PATIENT_CHANGE_COUNTER))
    abandoned = await PatientChangeRepository(db).reserve()  # a writer that died after taking its position
    registered = await feed_identity.RegisterPatient(person("79001"))

    # While the hole is young, nothing after it is handed out ...
    assert await consumer.poll_once() == 0
    # ... and once it is older than the settle time, it is closed and the feed moves on.
    await consumer.poll_until(1)
    tombstone = await db["patient_changes"].find_one({"_id": str(abandoned)})
    assert tombstone is not None
    assert tombstone["tombstone"] is True
    assert [patient_id for _, patient_id in consumer.seen] == [registered.patient.patient_id]


async def test_a_repeated_request_adds_no_change(
    feed_identity: Any, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    db = mongo[FEED_DATABASE]
    consumer = Consumer(feed_identity, await last_sequence(db, PATIENT_CHANGE_COUNTER))
    request = person("79001")
    first = await feed_identity.RegisterPatient(request)
    again = await feed_identity.RegisterPatient(request)
    assert again.patient.patient_id == first.patient.patient_id
    marker = await feed_identity.RegisterPatient(person("79001"))  # a later change, to know we saw all
    # A second change of the repeat would come before the marker's.
    await consumer.poll_until(2)
    assert [patient_id for _, patient_id in consumer.seen] == [
        first.patient.patient_id,
        marker.patient.patient_id,
    ]


# --- sync: the person changes reach the national system once each, in order ------------------------

FAST_SYNC = {
    "SYNC_POLL_INTERVAL_SECONDS": "0.1",
    "SYNC_LEASE_SECONDS": "1.5",
    "SYNC_FIRST_RETRY_DELAY_SECONDS": "0.1",
    "SYNC_MAX_RETRY_DELAY_SECONDS": "0.5",
    "SYNC_CIRCUIT_FAILURE_THRESHOLD": "3",
    "SYNC_CIRCUIT_OPEN_SECONDS": "0.2",
    "SYNC_CIRCUIT_MAX_OPEN_SECONDS": "0.5",
    "SYNC_PARTITIONS": "8",
    "SYNC_PARTITIONS_PER_ROUND": "8",
}


@dataclass
class PatientSync:
    """Sync replicas on a database of their own (cursors: identity's feed from now on, records' feed
    not at all) and a national emulator of their own."""

    stack: Stack
    mongo: AsyncMongoClient[dict[str, Any]]
    database: str
    emulator_url: str
    start_cursor: int
    poll_until: Callable[..., Awaitable[Any]]
    processes: dict[str, tuple[ManagedProcess, int]]

    def start_replica(self, name: str, **env: str) -> None:
        ports = self.stack.with_ports(sync=free_port())
        process = self.stack.start_service(
            "sync",
            ports=ports,
            name=name,
            extra_env={
                **FAST_SYNC,
                "SYNC_MONGODB_DATABASE": self.database,
                "SYNC_NATIONAL_URL": self.emulator_url,
                "SYNC_REPLICA_ID": name,
                "SYNC_METRICS_PORT": "0",
                **env,
            },
        )
        self.processes[name] = (process, ports.sync)

    async def status(self, name: str) -> sync_pb2.GetSyncStatusResponse:
        async with self.stack.dev_channel(f"127.0.0.1:{self.processes[name][1]}") as channel:
            response: sync_pb2.GetSyncStatusResponse = await sync_pb2_grpc.NationalSyncServiceStub(
                channel
            ).GetSyncStatus(sync_pb2.GetSyncStatusRequest())
            return response

    async def cursor(self) -> int:
        document = await self.mongo[self.database]["cursors"].find_one({"_id": "identity"})
        return int(document["after"]) if document else 0

    async def emulator(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.emulator_url) as http:
            response = await http.get(path, params=params)
            response.raise_for_status()
            return response.json()

    async def faults(self, **faults: Any) -> None:
        async with httpx.AsyncClient(base_url=self.emulator_url) as http:
            (await http.put("/admin/faults", json=faults)).raise_for_status()

    async def applied(self, patient_id: str) -> list[str]:
        """The idempotency keys of the patient's Patient deliveries, in the order applied."""
        held = await self.emulator("/deliveries", patient_id=patient_id, kind="fhir")
        return [item["idempotency_key"] for item in held["items"]]

    async def applied_exactly(self, expected: dict[str, int]) -> dict[str, list[str]]:
        """Waits until each patient has its expected number of deliveries applied."""

        async def done() -> dict[str, list[str]] | None:
            found = {patient_id: await self.applied(patient_id) for patient_id in expected}
            return found if {p: len(keys) for p, keys in found.items()} == expected else None

        found: dict[str, list[str]] = await self.poll_until(done, 60.0)
        return found

    async def patient(self, key: str) -> dict[str, Any]:
        """The Patient resource a delivery (``Patient/<id>/_history/<version>``) carried."""
        _, patient_id, _, version = key.split("/")
        held = await self.emulator("/resources", resource_type="Patient", resource_id=patient_id)
        (resource,) = [item["resource"] for item in held["items"] if item["version"] == version]
        return dict(resource)


@pytest.fixture
async def patient_sync(
    stack: Stack, mongo: AsyncMongoClient[dict[str, Any]], tools: Any
) -> AsyncIterator[PatientSync]:
    emulator_port = free_port()
    emulator_name = f"emulator-{uuid.uuid4().hex[:6]}"
    stack.start_service(
        "national_emulator",
        ports=stack.with_ports(national_emulator=emulator_port),
        name=emulator_name,
        extra_env={"NATIONAL_EMULATOR_LOG_LEVEL": "warning"},
    )
    identity_db = stack.service_env("identity").get("IDENTITY_MONGODB_DATABASE", "emr_identity")
    start = await last_sequence(mongo[identity_db], PATIENT_CHANGE_COUNTER)
    database = f"emr_sync_patients_{uuid.uuid4().hex[:8]}"
    await mongo[database]["cursors"].insert_many(
        [{"_id": "identity", "after": start}, {"_id": "records", "after": SKIPPED}]
    )
    site = PatientSync(
        stack, mongo, database, f"http://127.0.0.1:{emulator_port}", start, tools.poll_until, {}
    )
    yield site
    for name in [*site.processes, emulator_name]:
        stack.processes.pop(name).stop()


def history_version(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


async def test_registrations_merge_and_unmerge_reach_the_national_side_once_each_in_order(
    patient_sync: PatientSync, identity: Any, facility_code: str
) -> None:
    patient_sync.start_replica("persons-a")
    survivor, merged, updated = [
        (await identity.RegisterPatient(person(facility_code))).patient for _ in range(3)
    ]
    applied = await patient_sync.applied_exactly(
        {survivor.patient_id: 1, merged.patient_id: 1, updated.patient_id: 1}
    )
    for patient in (survivor, merged, updated):
        (key,) = applied[patient.patient_id]
        assert key.startswith(f"Patient/{patient.patient_id}/_history/")
        sent = await patient_sync.patient(key)
        assert sent["active"] is True
        assert sent["name"][0]["text"] == patient.full_name
        assert {"system": "urn:emr-platform:sid:cccd", "value": patient.identifiers[0].value}.items() <= sent[
            "identifier"
        ][0].items()

    await identity.UpdatePatient(
        identity_pb2.UpdatePatientRequest(
            request_id=str(uuid.uuid4()),
            patient_id=updated.patient_id,
            expected_version=1,
            full_name=f"{updated.full_name} Hoa",
            birth_date=updated.birth_date,
            sex=updated.sex,
        )
    )
    merge = identity_pb2.MergePatientsRequest(
        request_id=str(uuid.uuid4()),
        survivor_patient_id=survivor.patient_id,
        merged_patient_id=merged.patient_id,
        reason="duplicate registration",
    )
    await identity.MergePatients(merge)
    await identity.MergePatients(merge)  # a repeated request changes nothing more
    applied = await patient_sync.applied_exactly(
        {survivor.patient_id: 2, merged.patient_id: 2, updated.patient_id: 2}
    )
    renamed = await patient_sync.patient(applied[updated.patient_id][1])
    assert renamed["name"][0]["text"] == f"{updated.full_name} Hoa"
    gone = await patient_sync.patient(applied[merged.patient_id][1])
    assert gone["active"] is False
    assert gone["link"] == [{"other": {"reference": f"Patient/{survivor.patient_id}"}, "type": "replaced-by"}]
    kept = await patient_sync.patient(applied[survivor.patient_id][1])
    assert kept["active"] is True
    assert kept["link"] == [{"other": {"reference": f"Patient/{merged.patient_id}"}, "type": "replaces"}]

    await identity.UnmergePatients(
        identity_pb2.UnmergePatientsRequest(
            request_id=str(uuid.uuid4()), merged_patient_id=merged.patient_id, reason="not the same person"
        )
    )
    applied = await patient_sync.applied_exactly(
        {survivor.patient_id: 3, merged.patient_id: 3, updated.patient_id: 2}
    )
    restored = await patient_sync.patient(applied[merged.patient_id][2])
    assert restored["active"] is True
    assert "link" not in restored
    assert "link" not in await patient_sync.patient(applied[survivor.patient_id][2])

    # Each (Patient, version) once, each patient's in feed order; nothing was received twice.
    for keys in applied.values():
        versions = [history_version(key) for key in keys]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert (await patient_sync.emulator("/stats"))["duplicates_received"] == 0
    status = await patient_sync.status("persons-a")
    assert status.identity_cursor == max(history_version(k) for keys in applied.values() for k in keys)
    assert status.delivered == 8
    assert (status.pending, status.in_flight, status.dead_lettered) == (0, 0, 0)


async def test_sync_killed_mid_stream_resumes_from_its_identity_cursor(
    patient_sync: PatientSync, identity: Any, facility_code: str
) -> None:
    # Registered first, then taken one change per intake round: the replica is surely mid-stream
    # when it is killed. The national side is down meanwhile, so nothing it took was sent yet.
    registered = [
        (await identity.RegisterPatient(person(facility_code))).patient.patient_id for _ in range(30)
    ]
    await patient_sync.faults(outage_seconds=3600)
    patient_sync.start_replica("stream-a", SYNC_BATCH_SIZE="1")

    async def some_taken() -> int | None:
        cursor = await patient_sync.cursor()
        return cursor if cursor >= patient_sync.start_cursor + 3 else None

    await patient_sync.poll_until(some_taken)
    process, _ = patient_sync.processes["stream-a"]
    process.signal(signal.SIGKILL)
    process.wait(10)
    taken = await patient_sync.cursor()
    assert taken < patient_sync.start_cursor + len(registered), "the replica was not mid-stream"

    await patient_sync.faults(outage_seconds=0)
    patient_sync.start_replica("stream-b")
    applied = await patient_sync.applied_exactly(dict.fromkeys(registered, 1))
    assert all(len(keys) == 1 for keys in applied.values())
    assert (await patient_sync.emulator("/stats"))["duplicates_received"] == 0

    async def caught_up() -> sync_pb2.GetSyncStatusResponse | None:
        status = await patient_sync.status("stream-b")
        return status if status.pending == 0 and status.in_flight == 0 else None

    status = await patient_sync.poll_until(caught_up)
    assert status.delivered == len(registered)
    assert status.identity_cursor == patient_sync.start_cursor + len(registered)
