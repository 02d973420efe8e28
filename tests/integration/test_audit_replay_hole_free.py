"""A spool replayed while the database stalls drains, stores every event exactly once and leaves the
chain without a gap: the first batch is slow (FerretDB paused while it is in flight). A 3 s stall is
the one seen in production (the old 2 s deadline gave up, audit stored the batch anyway, and every
retry was all duplicates); a stall longer than the grown deadline makes the recorder give up here
too, and the retries of what audit stored meanwhile must still go through."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient

from emr_devstack.processes import ManagedProcess, free_port
from emr_devstack.stack import Stack
from emr_devstack.tokens import issue_token
from emr_runtime.audit import SPOOL_COLLECTION, AuditRecorder, replay_deadline

SPOOLED = 1100
DRAIN_WITHIN_SECONDS = 90.0


class StallOnFirstAppend(grpc.aio.UnaryUnaryClientInterceptor):
    """Pauses FerretDB (SIGSTOP) for ``seconds`` just before the first AppendEvents leaves: the
    recorder has read its batch, audit receives it and stalls on the database past the caller's
    deadline, then stores it. Adds a development admin token to every call."""

    def __init__(self, ferretdb: ManagedProcess, seconds: float) -> None:
        self._ferretdb = ferretdb
        self._seconds = seconds
        self._authorization = f"Bearer {issue_token('dev-admin')}"
        self.stalled_at: float | None = None

    def resume(self) -> None:
        self._ferretdb.signal(signal.SIGCONT)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if self.stalled_at is None and method.endswith("/AppendEvents"):
            self.stalled_at = time.monotonic()
            self._ferretdb.signal(signal.SIGSTOP)
            asyncio.get_running_loop().call_later(self._seconds, self.resume)
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", self._authorization)
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return await continuation(details, request)


def synthetic_event(actor: str, index: int) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        actor_id=actor,
        actor_facility_code="79001",
        purpose_of_use="TREATMENT",
        source_service="identity",
        operation="/emr.identity.v1.PatientIdentityService/GetPatient",
        resource_type="Patient",
        patient_id=f"p-replay-{index}",
        resource_id=f"p-replay-{index}",
        retention_class=audit_pb2.AUDIT_RETENTION_CLASS_STANDARD,
        agents=[
            audit_pb2.AuditAgent(
                type=audit_pb2.AUDIT_AGENT_TYPE_USER, who=actor, role="doctor", requestor=True
            )
        ],
    )
    event.occurred_time.GetCurrentTime()
    return event


def replay_failures(reason: str) -> float:
    return REGISTRY.get_sample_value("emr_audit_spool_replay_failures_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("pause_seconds", [3.0, replay_deadline(2.0, 200, 0) + 1.0])
async def test_a_replay_slowed_by_a_database_stall_drains_once_each_without_a_gap(
    pause_seconds: float,
    stack: Stack,
    service_instance: Any,
    audit_database: str,
    open_channel: Any,
    mongo: AsyncMongoClient[dict[str, Any]],
    tools: Any,
) -> None:
    audit_service = service_instance("audit", tools.audit_env(audit_database, every_events=500))
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(audit_service.target))
    db = mongo[f"emr_replay_{uuid.uuid4().hex[:8]}"]
    actor = f"dr-replay-{uuid.uuid4().hex[:6]}"

    # Nobody answers at this address: the first event makes the recorder spool, the rest queue behind.
    dead = AuditRecorder(open_channel(f"127.0.0.1:{free_port()}"), db, "identity", append_timeout=0.5)
    events = [synthetic_event(actor, index) for index in range(SPOOLED)]
    for event in events:
        await dead.record(event)
    spool = db[SPOOL_COLLECTION]
    assert await spool.count_documents({}) == SPOOLED

    timed_out_before = replay_failures("deadline_exceeded")
    stall = StallOnFirstAppend(stack.processes["ferretdb"], pause_seconds)
    channel = grpc.aio.secure_channel(
        audit_service.target, stack.client_tls.channel_credentials(), interceptors=[stall]
    )
    recorder = AuditRecorder(channel, db, "identity", replay_interval=0.2)
    await recorder.open()
    started = time.monotonic()
    replay = asyncio.create_task(recorder.replay_forever())
    try:

        async def drained() -> bool | None:
            return True if await spool.count_documents({}) == 0 else None

        await tools.poll_until(drained, within_seconds=DRAIN_WITHIN_SECONDS)
        seconds = time.monotonic() - started
    finally:
        stall.resume()  # never leave the stack's database paused
        replay.cancel()
        await asyncio.gather(replay, return_exceptions=True)
        await channel.close()
    assert stall.stalled_at is not None, "no append was stalled: nothing was tested"
    timed_out = replay_failures("deadline_exceeded") - timed_out_before
    if pause_seconds > replay_deadline(2.0, 200, 0):
        assert timed_out >= 1  # the stalled replay gave up, visibly

    stored = await tools.all_events(audit, actor_id=actor)
    stored_ids = [event.event_id for event in stored]
    print(
        f"\nspooled {SPOOLED} events; FerretDB paused {pause_seconds:.0f} s under the first replayed "
        f"append; drained {len(stored_ids)} stored events in {seconds:.1f} s; "
        f"{timed_out:.0f} replays timed out"
    )
    assert sorted(stored_ids) == sorted(event.event_id for event in events)  # each exactly once
    assert [e.event_id for e in stored] == [e.event_id for e in events]  # in spool order
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert verdict.intact, verdict.problem
    assert verdict.checked_events == SPOOLED
    assert [e.sequence for e in stored] == list(range(1, SPOOLED + 1))  # no gap


async def test_replaying_events_already_stored_answers_their_sequences(
    service_instance: Any, audit_database: str, open_channel: Any, tools: Any
) -> None:
    audit_service = service_instance("audit", tools.audit_env(audit_database))
    audit = audit_pb2_grpc.AuditServiceStub(open_channel(audit_service.target))
    actor = f"dr-again-{uuid.uuid4().hex[:6]}"
    events = [synthetic_event(actor, index) for index in range(300)]
    first = await audit.AppendEvents(audit_pb2.AppendEventsRequest(events=events[:200]))
    # Half already stored, half new: the stored keep their sequences, the new follow in order.
    again = await audit.AppendEvents(audit_pb2.AppendEventsRequest(events=events[100:300]), timeout=5.0)
    assert list(again.sequences[:100]) == list(first.sequences[100:200])
    assert list(again.sequences[100:]) == list(range(201, 301))
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert verdict.intact, verdict.problem
    assert verdict.checked_events == 300
