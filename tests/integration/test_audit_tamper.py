"""Tampering with the stored log, directly in the database, is detected: an edited, deleted,
inserted or reordered event document, a consistently rewritten stretch, a cut tail, a forged
checkpoint. Each kind is applied to a pristine log, checked, then undone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc

from emr_audit.domain import chain
from emr_audit.repository import event_document, event_from_document
from emr_devstack.processes import free_port

EVENTS = 30
Tamper = Callable[[Any], Awaitable[None]]


def synthetic_event(index: int) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        event_id=f"tamper-{index:03d}",
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        source_service="records",
        actor_id=f"dr-{index % 4}",
        actor_facility_code="79001",
        patient_id=f"patient-{index % 5}",
        resource_type="Encounter",
        resource_id=f"enc-{index}",
        operation="/emr.records.v1.ClinicalRecordsService/GetEncounter",
    )
    event.occurred_time.FromDatetime(datetime.now(UTC))
    return event


async def edit(events: Any) -> None:
    await events.update_one({"_id": 12}, {"$set": {"actor_id": "dr-innocent"}})


async def edit_and_rehash(events: Any) -> None:
    """Edits event 12 and recomputes its hash; the next event still links to the old hash."""
    stored = event_from_document(await events.find_one({"_id": 12}))
    forged = chain([replace(stored, purpose_of_use="RESEARCH")], 12, stored.previous_hash)[0]
    await events.replace_one({"_id": 12}, event_document(forged))


async def rewrite_stretch(events: Any) -> None:
    """Rewrites events 12..30 with a fully recomputed chain: only the signed checkpoint can tell."""
    stored = [event_from_document(d) async for d in events.find({"_id": {"$gte": 12}}).sort("_id", 1)]
    forged = chain(
        [replace(e, outcome=stored[0].outcome, actor_id="dr-innocent") for e in stored],
        12,
        stored[0].previous_hash,
    )
    for event in forged:
        await events.replace_one({"_id": event.sequence}, event_document(event))


async def delete(events: Any) -> None:
    await events.delete_one({"_id": 12})


async def delete_tail(events: Any) -> None:
    await events.delete_many({"_id": {"$gte": EVENTS - 1}})


async def insert(events: Any) -> None:
    """Inserts a well-formed event at position 12, moving 12.. one place up."""
    moved = await events.find({"_id": {"$gte": 12}}).sort("_id", -1).to_list(None)
    for document in moved:
        await events.delete_one({"_id": document["_id"]})
        await events.insert_one({**document, "_id": document["_id"] + 1})
    before = event_from_document(await events.find_one({"_id": 11}))
    intruder = chain([replace(before, event_id="tamper-intruder", actor_id="dr-intruder")], 12, before.hash)[
        0
    ]
    await events.insert_one(event_document(intruder))


async def reorder(events: Any) -> None:
    first = await events.find_one({"_id": 12})
    second = await events.find_one({"_id": 13})
    await events.delete_many({"_id": {"$in": [12, 13]}})
    await events.insert_many([{**second, "_id": 12}, {**first, "_id": 13}])


async def forge_checkpoint(events: Any) -> None:
    checkpoints = events.database["checkpoints"]
    await checkpoints.update_one({"_id": 1}, {"$set": {"last_sequence": 10}})


MISSING = audit_pb2.INTEGRITY_FINDING_KIND_MISSING_EVENTS
ALTERED = audit_pb2.INTEGRITY_FINDING_KIND_ALTERED_EVENT


@pytest.mark.parametrize(
    ("tamper", "first_bad", "problem", "kind"),
    [
        (edit, 12, "stored hash does not match", ALTERED),
        (edit_and_rehash, 12, "rewritten", ALTERED),
        (rewrite_stretch, 1, "differs from the log", audit_pb2.INTEGRITY_FINDING_KIND_CHECKPOINT_MISMATCH),
        (delete, 12, "event 12 is missing (next stored is 13)", MISSING),
        (delete_tail, EVENTS - 1, f"events {EVENTS - 1}..{EVENTS} are missing", MISSING),
        (insert, 13, "stored hash does not match", ALTERED),
        (reorder, 12, "stored hash does not match", ALTERED),
        (forge_checkpoint, 1, "signature is invalid", audit_pb2.INTEGRITY_FINDING_KIND_BAD_SIGNATURE),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
async def test_tampering_is_detected_at_the_first_bad_sequence(
    tamper: Tamper,
    first_bad: int,
    problem: str,
    kind: int,
    tampered_log: tuple[audit_pb2_grpc.AuditServiceStub, Any],
) -> None:
    audit, events = tampered_log
    pristine = await events.database["events"].find().to_list(None)
    pristine_checkpoints = await events.database["checkpoints"].find().to_list(None)
    before = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert before.intact and before.checked_events == EVENTS and before.checked_checkpoints >= 1

    await tamper(events)
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert not verdict.intact
    assert verdict.first_bad_sequence == first_bad, verdict.problem
    assert problem in verdict.problem
    assert verdict.finding_kind == kind, verdict
    if kind == MISSING:
        last_missing = EVENTS if tamper is delete_tail else first_bad
        assert (verdict.missing_from_sequence, verdict.missing_through_sequence) == (first_bad, last_missing)
    else:
        assert (verdict.missing_from_sequence, verdict.missing_through_sequence) == (0, 0)

    await events.delete_many({})
    await events.insert_many(pristine)
    await events.database["checkpoints"].delete_many({})
    await events.database["checkpoints"].insert_many(pristine_checkpoints)
    assert (await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())).intact


@pytest.fixture(scope="module")
async def tampered_log(stack: Any, mongo: Any) -> AsyncIterator[tuple[audit_pb2_grpc.AuditServiceStub, Any]]:
    """One audit instance with its own database: 30 events under one checkpoint, and no more
    checkpoints (so that restoring the documents restores the log exactly)."""
    database = f"emr_audit_tamper_{uuid.uuid4().hex[:8]}"
    ports = stack.with_ports(audit=free_port())
    env = {
        "AUDIT_MONGODB_DATABASE": database,
        "AUDIT_CHECKPOINT_EVERY_EVENTS": str(EVENTS),
        "AUDIT_CHECKPOINT_INTERVAL_SECONDS": "3600",
    }
    name = f"audit-{database}"
    process = stack.start_service("audit", ports, name=name, extra_env=env)
    channel = stack.dev_channel(f"127.0.0.1:{ports.audit}")
    audit = audit_pb2_grpc.AuditServiceStub(channel)
    try:
        await audit.AppendEvents(
            audit_pb2.AppendEventsRequest(events=[synthetic_event(i) for i in range(EVENTS)])
        )
        deadline = time.monotonic() + 30
        while await mongo[database]["checkpoints"].count_documents({}) == 0:
            assert time.monotonic() < deadline, "no checkpoint was written"
            await asyncio.sleep(0.1)
        yield audit, mongo[database]["events"]
    finally:
        await channel.close()
        process.stop()
        stack.processes.pop(name, None)
