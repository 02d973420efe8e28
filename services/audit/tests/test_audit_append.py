"""Unit tests of appending to the chain: what a refusal means, replays of stored events, and writers
that stop at any point (an in-memory log with the unique keys of the real one; no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emr_audit.domain import (
    Action,
    Agent,
    AgentType,
    AuditEvent,
    ChainVerifier,
    Outcome,
    Refusal,
    canonical_bytes,
    canonical_record,
    refusal_of,
)
from emr_audit.repository import AuditRepository
from emr_audit.service import AuditLog
from emr_audit.signing import CheckpointSigner

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def event(index: int) -> AuditEvent:
    return AuditEvent(
        event_id=f"evt-{index}",
        action=Action.READ,
        outcome=Outcome.SUCCESS,
        occurred_at=START + timedelta(seconds=index),
        actor_id="dr-1",
        actor_facility_code="79001",
        source_service="identity",
        operation="/emr.identity.v1.PatientIdentityService/GetPatient",
        patient_id="p-1",
        resource_type="Patient",
        resource_id="p-1",
        purpose_of_use="TREATMENT",
        request_id="",
        trace_id="",
        agents=(Agent(AgentType.USER, "dr-1", role="physician", requestor=True),),
    )


class Stopped(Exception):
    """A writer stopped (crash, timeout) at a chosen point."""


class MemoryLog:
    """The repository's append protocol over dicts: unique ``_id`` (sequence) and unique event_id
    on links, event_ids keyed by event_id, the tip hint. Counts event_id scans."""

    def __init__(self) -> None:
        self.links: dict[int, AuditEvent] = {}
        self.event_ids: dict[str, int] = {}
        self.hint: tuple[int, bytes] | None = None
        self.scans = 0
        self.stop_indexing = False
        self.stop_after_inserts: int | None = None

    async def tip_hint(self) -> tuple[int, bytes] | None:
        return self.hint

    async def advance_tip_hint(self, sequence: int, digest: bytes) -> None:
        if self.hint is None or self.hint[0] < sequence:
            self.hint = (sequence, digest)

    async def insert_link(self, link: AuditEvent) -> bool:
        if self.stop_after_inserts is not None:
            if self.stop_after_inserts == 0:
                raise Stopped
            self.stop_after_inserts -= 1
        if link.sequence in self.links or any(e.event_id == link.event_id for e in self.links.values()):
            return False
        self.links[link.sequence] = link
        return True

    async def event_id_at(self, sequence: int) -> str | None:
        found = self.links.get(sequence)
        return found.event_id if found else None

    async def link_at(self, sequence: int) -> tuple[str, bytes] | None:
        found = self.links.get(sequence)
        return (found.event_id, found.hash) if found else None

    async def indexed_sequence(self, event_id: str) -> int | None:
        return self.event_ids.get(event_id)

    async def index_event_ids(self, links: Sequence[tuple[str, int]]) -> None:
        if self.stop_indexing and links:
            raise Stopped
        for event_id, sequence in links:
            self.event_ids.setdefault(event_id, sequence)

    async def scan_sequence_of(self, event_id: str) -> int | None:
        self.scans += 1
        return next((s for s, e in self.links.items() if e.event_id == event_id), None)

    def assert_one_chain(self) -> None:
        assert sorted(self.links) == list(range(1, len(self.links) + 1)), "a gap in the chain"
        verifier = ChainVerifier(expected_sequence=1)
        for sequence in sorted(self.links):
            link = self.links[sequence]
            assert verifier.feed(
                sequence, canonical_bytes(canonical_record(link)), link.previous_hash, link.hash
            )
        assert verifier.finish(None) is None
        assert len({e.event_id for e in self.links.values()}) == len(self.links), "an event stored twice"
        # Every link at or before the hint is indexed, with its own sequence.
        for sequence in range(1, (self.hint or (0, b""))[0] + 1):
            assert self.event_ids[self.links[sequence].event_id] == sequence


def replica(memory: MemoryLog) -> AuditLog:
    return AuditLog(cast(AuditRepository, memory), CheckpointSigner(Ed25519PrivateKey.generate()))


async def settle(log: AuditLog) -> None:
    """Lets the replica's background hint update finish."""
    hint_writer: Any = log._hint_writer
    if hint_writer is not None:
        await hint_writer


@pytest.mark.parametrize(
    ("indexed", "holder", "expected"),
    [
        (7, None, Refusal.ALREADY_STORED),
        (7, "evt-other", Refusal.ALREADY_STORED),
        (None, "evt-1", Refusal.STORED_THERE),
        (None, "evt-other", Refusal.POSITION_TAKEN),
        (None, None, Refusal.UNINDEXED),
    ],
)
def test_a_refusal_is_read_from_the_index_and_the_holder_of_the_position(
    indexed: int | None, holder: str | None, expected: Refusal
) -> None:
    assert refusal_of("evt-1", indexed, holder) is expected


async def test_replaying_stored_events_answers_their_sequences_with_one_lookup_each_and_no_scan() -> None:
    memory = MemoryLog()
    log = replica(memory)
    first = await log.append([event(i) for i in range(200)])
    await settle(log)
    again = await log.append([event(i) for i in range(100, 300)])
    await settle(log)
    assert again[:100] == first[100:]
    assert again[100:] == list(range(201, 301))
    assert memory.scans == 0
    memory.assert_one_chain()


async def test_a_replica_restarted_on_a_lagging_hint_finds_the_tip_and_keeps_each_event_once() -> None:
    memory = MemoryLog()
    await replica(memory).append([event(i) for i in range(50)])
    memory.hint = (10, memory.links[10].hash)  # the hint update was lost
    restarted = replica(memory)
    sequences = await restarted.append([event(i) for i in range(40, 60)])
    await settle(restarted)
    assert sequences == list(range(41, 61))
    assert memory.scans == 0
    memory.assert_one_chain()


@pytest.mark.parametrize("stop_after", [0, 1, 7, 19])
async def test_a_writer_stopped_while_linking_leaves_a_prefix_and_a_retry_completes_it(
    stop_after: int,
) -> None:
    memory = MemoryLog()
    await replica(memory).append([event(i) for i in range(5)])
    memory.stop_after_inserts = stop_after
    with pytest.raises(Stopped):
        await replica(memory).append([event(i) for i in range(5, 25)])
    assert sorted(memory.links) == list(range(1, 6 + stop_after))  # a prefix, nothing after a hole
    memory.stop_after_inserts = None
    retried = replica(memory)
    sequences = await retried.append([event(i) for i in range(5, 25)])
    await settle(retried)
    assert sequences == list(range(6, 26))
    assert memory.scans == 0
    memory.assert_one_chain()


async def test_a_writer_stopped_before_indexing_leaves_events_a_retry_finds_without_a_scan() -> None:
    memory = MemoryLog()
    await replica(memory).append([event(i) for i in range(5)])
    memory.stop_indexing = True
    with pytest.raises(Stopped):
        await replica(memory).append([event(i) for i in range(5, 15)])
    assert sorted(memory.links) == list(range(1, 16))
    assert memory.hint is not None and memory.hint[0] <= 5  # the hint never passes unindexed links
    memory.stop_indexing = False
    # Another replica links new events first (it steps past the hint, indexing), then the retry.
    other = replica(memory)
    assert await other.append([event(100)]) == [16]
    retried = replica(memory)
    assert await retried.append([event(i) for i in range(5, 15)]) == list(range(6, 16))
    await settle(other)
    await settle(retried)
    assert memory.scans == 0
    memory.assert_one_chain()


async def test_an_event_stored_before_the_index_existed_is_found_once_by_a_scan_then_indexed() -> None:
    memory = MemoryLog()
    log = replica(memory)
    await log.append([event(i) for i in range(3)])
    await settle(log)
    memory.event_ids.clear()  # a log written before event_ids existed
    restarted = replica(memory)
    assert await restarted.append([event(1)]) == [2]
    assert memory.scans == 1
    assert await restarted.append([event(1)]) == [2]
    assert memory.scans == 1


async def test_two_replicas_appending_in_turn_keep_one_chain() -> None:
    memory = MemoryLog()
    first, second = replica(memory), replica(memory)
    for round_ in range(5):
        await first.append([event(round_ * 10 + i) for i in range(5)])
        await second.append([event(round_ * 10 + i) for i in range(3, 8)])
    await settle(first)
    await settle(second)
    assert memory.scans == 0
    assert len(memory.links) == 40
    memory.assert_one_chain()
