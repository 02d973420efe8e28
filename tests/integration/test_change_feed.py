"""The change feed never skips a write: a consumer that polls throughout, while a slow writer holds
a feed position open and fast writers commit after it, sees every change exactly once, in order."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from emr.records.v1 import records_pb2, records_pb2_grpc

from emr_devstack.processes import free_port
from emr_devstack.stack import DEV_FIELD_ENCRYPTION
from emr_records.domain import ObservationContent, ObservationStatus, Quantity, ResourceInput, new_record
from emr_records.repository import ChangeFeedRepository, ResourceRepository
from emr_runtime.clock import utc_now
from emr_runtime.fieldcrypt import FieldCrypt

DATABASE = "emr_records_feed"
SETTLE_SECONDS = 3.0


@pytest.fixture(scope="module")
async def feed_records(stack: Any) -> AsyncIterator[records_pb2_grpc.ClinicalRecordsServiceStub]:
    """A records instance of its own database, with a short hole timeout."""
    ports = stack.with_ports(records=free_port())
    process = stack.start_service(
        "records",
        ports,
        name="records-feed",
        extra_env={
            "RECORDS_MONGODB_DATABASE": DATABASE,
            "RECORDS_CHANGE_SETTLE_SECONDS": str(SETTLE_SECONDS),
            "RECORDS_VERIFY_PATIENTS": "false",
        },
    )
    async with stack.dev_channel(f"127.0.0.1:{ports.records}") as channel:
        yield records_pb2_grpc.ClinicalRecordsServiceStub(channel)
    assert process.stop() == 0


def observation_request(patient_id: str) -> records_pb2.CreateResourceRequest:
    effective = records_pb2.Observation().effective_time
    effective.FromSeconds(int(time.time()) - 60)
    return records_pb2.CreateResourceRequest(
        request_id=str(uuid.uuid4()),
        resource=records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                patient_id=patient_id,
                facility_code="79001",
                loinc_code="8867-4",
                status=records_pb2.OBSERVATION_STATUS_FINAL,
                value_quantity=records_pb2.Quantity(value=72, unit="/min"),
                effective_time=effective,
            )
        ),
    )


class Consumer:
    """Polls ListChanges from a cursor, as sync does, recording what it is handed."""

    def __init__(self, stub: Any, after: int) -> None:
        self.stub = stub
        self.after = after
        self.seen: list[tuple[int, str, int]] = []

    async def poll_once(self) -> int:
        page = await self.stub.ListChanges(
            records_pb2.ListChangesRequest(after_sequence=self.after, limit=50)
        )
        self.seen.extend((c.sequence, c.resource_id, c.resource_version) for c in page.changes)
        self.after = page.next_after_sequence
        return len(page.changes)

    async def poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(0.02)

    async def poll_until(self, expected: set[tuple[str, int]], within_seconds: float = 30) -> None:
        deadline = time.monotonic() + within_seconds
        while not expected <= {(rid, version) for _, rid, version in self.seen}:
            assert time.monotonic() < deadline, f"missing {expected - {(r, v) for _, r, v in self.seen}}"
            await self.poll_once()
            await asyncio.sleep(0.02)


async def head_of_feed(stub: Any) -> int:
    after = 0
    while True:
        page = await stub.ListChanges(records_pb2.ListChangesRequest(after_sequence=after, limit=1000))
        if page.next_after_sequence == after:
            return after
        after = page.next_after_sequence


def slow_observation(patient_id: str) -> Any:
    content = ObservationContent(
        loinc_code="8480-6",
        status=ObservationStatus.FINAL,
        effective_time=utc_now(),
        value_quantity=Quantity(120, "mm[Hg]"),
    )
    raw = ResourceInput(str(uuid.uuid4()), "", patient_id, "79001", "", content, "slow", "slow-writer")
    return new_record(raw, str(uuid.uuid4()), utc_now())


async def test_consumer_never_misses_a_write_that_commits_late(feed_records: Any, mongo: Any) -> None:
    db = mongo[DATABASE]
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # the stack's keys
    resources, feed = ResourceRepository(db, crypt), ChangeFeedRepository(db)
    patient_id = str(uuid.uuid4())
    consumer = Consumer(feed_records, await head_of_feed(feed_records))

    # The slow writer stores its version and takes a feed position, then stalls.
    slow = slow_observation(patient_id)
    await resources.store_version(slow)
    await resources.advance(slow)
    hole = await feed.reserve()

    fast_ids: list[str] = []

    async def fast_writer() -> None:
        for _ in range(6):
            created = await feed_records.CreateResource(observation_request(patient_id))
            fast_ids.append(created.resource.observation.observation_id)

    polling = asyncio.ensure_future(consumer.poll_forever())  # the consumer polls throughout
    await asyncio.gather(fast_writer(), fast_writer())
    # Only now does the slow write commit, after every fast one; if a tombstone closed its position
    # meanwhile, it takes a new one, exactly as the service's own writer does.
    if not await feed.write(hole, slow):
        await feed.append(slow)
    await resources.mark_change_recorded(slow)
    polling.cancel()

    expected = {(rid, 1) for rid in fast_ids} | {(slow.resource_id, 1)}
    await consumer.poll_until(expected)
    handed_out = [(rid, version) for _, rid, version in consumer.seen]
    assert sorted(set(handed_out)) == sorted(expected)
    assert len(handed_out) == len(expected), "a change was handed out twice"
    sequences = [sequence for sequence, _, _ in consumer.seen]
    assert sequences == sorted(sequences)


async def test_an_abandoned_position_is_skipped_after_the_settle_time(feed_records: Any, mongo: Any) -> None:
    db = mongo[DATABASE]
    feed = ChangeFeedRepository(db)
    consumer = Consumer(feed_records, await head_of_feed(feed_records))
    abandoned = await feed.reserve()  # a writer that died after taking its position
    created = await feed_records.CreateResource(observation_request(str(uuid.uuid4())))
    observation_id = created.resource.observation.observation_id

    # While the hole is young, nothing after it is handed out ...
    assert await consumer.poll_once() == 0
    # ... and once it is older than the settle time, it is closed and the feed moves on.
    await consumer.poll_until({(observation_id, 1)})
    tombstone = await db["changes"].find_one({"_id": str(abandoned)})
    assert tombstone is not None
    assert tombstone["tombstone"] is True
    assert [rid for _, rid, _ in consumer.seen] == [observation_id]


async def test_stream_sends_changes_as_they_commit(feed_records: Any) -> None:
    stream = feed_records.StreamChanges(
        records_pb2.StreamChangesRequest(after_sequence=await head_of_feed(feed_records))
    )
    created = [await feed_records.CreateResource(observation_request(str(uuid.uuid4()))) for _ in range(3)]
    received = []
    async with asyncio.timeout(30):
        async for message in stream:
            received.append(message.change)
            if len(received) == len(created):
                break
    stream.cancel()
    assert [c.resource_id for c in received] == [c.resource.observation.observation_id for c in created]
    assert [c.resource.observation for c in received] == [c.resource.observation for c in created]
    assert [c.sequence for c in received] == sorted(c.sequence for c in received)
