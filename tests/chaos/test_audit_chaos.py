"""Audit under a bad night: every call that succeeded has its audit event, stored once, in one chain
without a gap, and the spools of the callers drain within a bound.

1. The production incident: audit killed (-9) while doctors read patients, back a few seconds later,
   and FerretDB stalls (SIGSTOP) right after audit answers health, while the callers replay what
   they spooled meanwhile.
2. Two audit replicas on one database, one killed (-9) while both append, then restarted."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.processes import free_port
from emr_devstack.tokens import caller_metadata
from emr_runtime.audit import SPOOL_COLLECTION

FACILITY = "79101"
PATIENTS = 20
ENCOUNTERS = 10
DOCTORS = 4
WARM_UP_SECONDS = 2.0
OUTAGE_SECONDS = 6.0
STALL_SECONDS = 3.0
LOAD_AFTER_STALL_SECONDS = 3.0
# Audit's start-up (slow on a busy machine) plus the callers' reconnection (at most 2 s apart) and
# replay retry (at most 2 s apart while audit was unreachable).
FIRST_APPEND_WITHIN_SECONDS = 30.0
# Long enough for a call held by the stalled database to finish: it counts if it succeeded.
CALL_TIMEOUT_SECONDS = 10.0
DRAIN_WITHIN_SECONDS = 60.0
SPOOL_DEPTH = "emr_audit_spool_depth"

# (actor, service that recorded it, operation, patient): what one successful call leaves in the log.
CallKey = tuple[str, str, str, str]


def registration() -> identity_pb2.RegisterPatientRequest:
    """A different person each call: one name for all would put every registration in the same
    blocks, where they wait on each other's registration turn instead of loading audit."""
    serial = uuid.uuid4().int % 10**6
    return identity_pb2.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Nguyễn Thị Lan {uuid.uuid4().int % 10**9:09d}",
        birth_date="1978-11-02",
        sex=identity_pb2.SEX_FEMALE,
        facility_code=FACILITY,
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079178{serial:06d}")
        ],
    )


def encounter(patient_id: str) -> records_pb2.CreateEncounterRequest:
    start, end = Timestamp(), Timestamp()
    start.FromSeconds(int(time.time()) - 7200)
    end.FromSeconds(int(time.time()) - 600)
    return records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code=FACILITY,
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=start,
        end_time=end,
        reason="Khám định kỳ",
    )


@dataclass
class Ledger:
    """What the callers saw: the calls that returned OK, and how many did not."""

    succeeded: Counter[CallKey] = field(default_factory=Counter)
    failed: int = 0

    def total(self) -> int:
        return sum(self.succeeded.values())


async def call_logged(ledger: Ledger, key: CallKey, call: Awaitable[Any]) -> None:
    try:
        await call
    except grpc.aio.AioRpcError:
        ledger.failed += 1  # refused, timed out or unavailable: promised nothing
    else:
        ledger.succeeded[key] += 1


def operation_of(event: audit_pb2.AuditEvent) -> str:
    return event.operation.rsplit("/", 1)[1]


def recorded_calls(events: list[audit_pb2.AuditEvent], actors: set[str]) -> Counter[CallKey]:
    return Counter(
        (e.actor_id, e.source_service, operation_of(e), e.patient_id)
        for e in events
        if e.actor_id in actors and e.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
    )


def missing_events(succeeded: Counter[CallKey], recorded: Counter[CallKey]) -> int:
    """Successful calls without an event. A call that timed out at the caller may still have been
    served and recorded, so more events than successes is fine; fewer is not."""
    return sum(max(0, count - recorded[key]) for key, count in succeeded.items())


def duplicated_events(events: list[audit_pb2.AuditEvent]) -> int:
    return len(events) - len({e.event_id for e in events})


class SpoolWatch:
    """Samples the spool depth of some services while the scenario runs; keeps each one's peak."""

    def __init__(self, probes: Any, metrics_ports: dict[str, int]) -> None:
        self._probes = probes
        self._ports = metrics_ports
        self.peaks = dict.fromkeys(metrics_ports, 0.0)

    async def sample(self) -> dict[str, float | None]:
        depths = {
            name: await self._probes.metric_value(port, SPOOL_DEPTH) for name, port in self._ports.items()
        }
        for name, depth in depths.items():
            if depth is not None:
                self.peaks[name] = max(self.peaks[name], depth)
        return depths

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            await asyncio.sleep(0.2)


async def spools_drained(
    chaos: Any, watch: SpoolWatch, databases: list[str], within_seconds: float
) -> tuple[float, int]:
    """(seconds waited, events left): polls until every watched spool is empty, by its gauge and
    by its collection, or the bound passes (then the events still spooled are counted)."""
    started = time.monotonic()
    mongo = chaos.mongo()
    try:
        while True:
            depths = await watch.sample()
            left = sum([await mongo[d][SPOOL_COLLECTION].count_documents({}) for d in databases])
            if left == 0 and all(depth == 0 for depth in depths.values()):
                return time.monotonic() - started, 0
            if time.monotonic() - started > within_seconds:
                return time.monotonic() - started, left
            await asyncio.sleep(0.2)
    finally:
        await mongo.close()


async def stall_on_first_append(chaos: Any, probes: Any) -> float:
    """Waits for the restarted audit to receive its first AppendEvents, then pauses FerretDB
    ``STALL_SECONDS`` under it; returns the seconds from the start of the wait to the stall."""
    started = time.monotonic()
    deadline = started + FIRST_APPEND_WITHIN_SECONDS
    port = chaos.stack.ports.audit_metrics
    while not await probes.metric_sum(port, "grpc_server_started_total", grpc_method="AppendEvents"):
        assert time.monotonic() < deadline, "no append reached the restarted audit"
        await asyncio.sleep(0.02)
    waited = time.monotonic() - started
    await chaos.pause_database(STALL_SECONDS)
    return waited


async def chain_verdict(
    audit: audit_pb2_grpc.AuditServiceStub, events: list[audit_pb2.AuditEvent]
) -> tuple[bool, str]:
    """(one chain, problem): sequences 1..N without a gap, VerifyIntegrity intact over all N."""
    if [e.sequence for e in events] != list(range(1, len(events) + 1)):
        return False, "the sequences have a gap or a double"
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest(), timeout=60)
    if not verdict.intact:
        return False, verdict.problem
    if verdict.checked_events != len(events):
        return False, f"verify checked {verdict.checked_events} of {len(events)} events"
    return True, ""


async def test_audit_killed_under_read_load_then_a_database_stall_loses_no_event(
    chaos: Any, chaos_figures: Any, audit_probes: Any
) -> None:
    identity = identity_pb2_grpc.PatientIdentityServiceStub(chaos.channel("identity"))
    records = records_pb2_grpc.ClinicalRecordsServiceStub(chaos.channel("records"))
    registrar = caller_metadata(f"dr-registrar-{uuid.uuid4().hex[:6]}", FACILITY, "TREATMENT", role="doctor")
    patients = [
        (await identity.RegisterPatient(registration(), metadata=registrar)).patient.patient_id
        for _ in range(PATIENTS)
    ]
    for patient_id in patients[:ENCOUNTERS]:
        await records.CreateEncounter(encounter(patient_id), metadata=registrar)

    ledger = Ledger()
    stop = asyncio.Event()

    async def doctor(actor: str, first: int) -> None:
        metadata = caller_metadata(actor, FACILITY, "TREATMENT", role="doctor")
        for patient_id in itertools.islice(itertools.cycle(patients), first, None):
            if stop.is_set():
                return
            await call_logged(
                ledger,
                (actor, "identity", "GetPatient", patient_id),
                identity.GetPatient(
                    identity_pb2.GetPatientRequest(patient_id=patient_id),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
            )
            await call_logged(
                ledger,
                (actor, "records", "ListEncounters", patient_id),
                records.ListEncounters(
                    records_pb2.ListEncountersRequest(patient_id=patient_id),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
            )

    doctors = {f"dr-ward-{n}-{uuid.uuid4().hex[:6]}" for n in range(DOCTORS)}
    watch = SpoolWatch(
        audit_probes,
        {"identity": chaos.stack.ports.identity_metrics, "records": chaos.stack.ports.records_metrics},
    )
    load = [
        asyncio.create_task(doctor(actor, n * PATIENTS // DOCTORS)) for n, actor in enumerate(sorted(doctors))
    ]
    sampler = asyncio.create_task(watch.run(stop))
    try:
        await asyncio.sleep(WARM_UP_SECONDS)
        before_outage = ledger.total()
        chaos.kill("audit")
        await asyncio.sleep(OUTAGE_SECONDS)
        during_outage = ledger.total() - before_outage
        # Started in a thread: the doctors keep calling while audit boots. The database stalls
        # as soon as the first append reaches the new audit: the callers' replay is in flight.
        restarted = asyncio.create_task(asyncio.to_thread(chaos.restart, "audit"))
        try:
            chaos_figures["stall_after_restart_seconds"] = await stall_on_first_append(chaos, audit_probes)
        finally:
            await restarted
        await asyncio.sleep(LOAD_AFTER_STALL_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*load, sampler)

    chaos_figures["successful_reads"] = ledger.total()
    chaos_figures["failed_reads"] = ledger.failed
    chaos_figures["reads_during_outage"] = during_outage
    chaos_figures["spooled_peak_identity"] = int(watch.peaks["identity"])
    chaos_figures["spooled_peak_records"] = int(watch.peaks["records"])
    assert during_outage > 0 and watch.peaks["identity"] > 0, "nothing was read while audit was down"

    drain_seconds, left = await spools_drained(
        chaos, watch, ["emr_identity", "emr_records"], within_seconds=DRAIN_WITHIN_SECONDS
    )
    chaos_figures["drain_seconds"] = drain_seconds
    chaos_figures["spooled_left"] = left

    audit = audit_pb2_grpc.AuditServiceStub(chaos.channel("audit"))
    events = await audit_probes.audit_events(audit)
    missing = missing_events(ledger.succeeded, recorded_calls(events, doctors))
    duplicates = duplicated_events(events)
    intact, problem = await chain_verdict(audit, events)
    chaos_figures["audit_events"] = len(events)
    chaos_figures["missing"] = missing
    chaos_figures["duplicates"] = duplicates
    chaos_figures["chain_intact"] = intact
    if problem:
        chaos_figures["chain_problem"] = problem
    assert left == 0, f"{left} events still spooled after {DRAIN_WITHIN_SECONDS:.0f} s"
    assert missing == 0
    assert duplicates == 0
    assert intact, problem


CLERKS_PER_IDENTITY = 3
REPLICA_OUTAGE_SECONDS = 4.0
LOAD_AFTER_RESTART_SECONDS = 3.0


async def test_one_of_two_audit_replicas_killed_under_append_load_keeps_one_chain(
    chaos: Any, chaos_figures: Any, audit_probes: Any
) -> None:
    stack = chaos.stack
    # A second audit replica on the same database, and a second identity replica (same database)
    # that records through it: each replica takes live appends from its own identity.
    replica_ports = stack.with_ports(audit=free_port())
    stack.start_service("audit", replica_ports, name="audit-b")
    identity_b_ports = stack.with_ports(identity=free_port())
    stack.start_service(
        "identity",
        identity_b_ports,
        name="identity-b",
        extra_env={"IDENTITY_AUDIT_TARGET": f"127.0.0.1:{replica_ports.audit}"},
    )
    identities = {
        "audit": identity_pb2_grpc.PatientIdentityServiceStub(chaos.channel("identity")),
        "audit-b": identity_pb2_grpc.PatientIdentityServiceStub(
            chaos.channel_to(f"127.0.0.1:{identity_b_ports.identity}")
        ),
    }
    ledger = Ledger()
    stop = asyncio.Event()

    async def clerk(actor: str, identity: identity_pb2_grpc.PatientIdentityServiceStub) -> None:
        metadata = caller_metadata(actor, FACILITY, "TREATMENT", role="doctor")
        while not stop.is_set():
            try:
                registered = await identity.RegisterPatient(
                    registration(), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError:
                ledger.failed += 1
                continue
            patient_id = registered.patient.patient_id
            ledger.succeeded[(actor, "identity", "RegisterPatient", patient_id)] += 1
            await call_logged(
                ledger,
                (actor, "identity", "GetPatient", patient_id),
                identity.GetPatient(
                    identity_pb2.GetPatientRequest(patient_id=patient_id),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                ),
            )

    clerks = {
        f"clerk-{replica}-{n}-{uuid.uuid4().hex[:6]}": identity
        for replica, identity in identities.items()
        for n in range(CLERKS_PER_IDENTITY)
    }
    watch = SpoolWatch(
        audit_probes,
        {
            "identity": stack.ports.identity_metrics,
            "identity-b": identity_b_ports.identity_metrics,
            "records": stack.ports.records_metrics,
        },
    )
    load = [asyncio.create_task(clerk(actor, identity)) for actor, identity in clerks.items()]
    sampler = asyncio.create_task(watch.run(stop))
    try:
        await asyncio.sleep(WARM_UP_SECONDS)
        chaos.kill("audit")  # mid-append: the other replica must carry the chain on
        await asyncio.sleep(REPLICA_OUTAGE_SECONDS)
        await asyncio.to_thread(chaos.restart, "audit")
        await asyncio.sleep(LOAD_AFTER_RESTART_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*load, sampler)

    chaos_figures["successful_calls"] = ledger.total()
    chaos_figures["failed_calls"] = ledger.failed
    chaos_figures["spooled_peak_identity"] = int(watch.peaks["identity"])
    assert watch.peaks["identity"] > 0, "nothing was spooled while the replica was down"
    drain_seconds, left = await spools_drained(
        chaos, watch, ["emr_identity", "emr_records"], within_seconds=DRAIN_WITHIN_SECONDS
    )
    chaos_figures["drain_seconds"] = drain_seconds
    chaos_figures["spooled_left"] = left
    assert left == 0, f"{left} events still spooled after {DRAIN_WITHIN_SECONDS:.0f} s"

    replicas = [
        audit_pb2_grpc.AuditServiceStub(chaos.channel("audit")),
        audit_pb2_grpc.AuditServiceStub(chaos.channel_to(f"127.0.0.1:{replica_ports.audit}")),
    ]
    events = await audit_probes.audit_events(replicas[1])
    missing = missing_events(ledger.succeeded, recorded_calls(events, set(clerks)))
    duplicates = duplicated_events(events)
    chaos_figures["audit_events"] = len(events)
    chaos_figures["missing"] = missing
    chaos_figures["duplicates"] = duplicates
    assert missing == 0
    assert duplicates == 0

    mongo = chaos.mongo()
    try:
        documents = (
            await mongo["emr_audit"]["events"]
            .find({}, {"_id": 1, "event_id": 1, "previous_hash": 1, "hash": 1})
            .sort("_id", 1)
            .to_list(None)
        )
    finally:
        await mongo.close()
    assert [d["_id"] for d in documents] == list(range(1, len(documents) + 1))  # no gap, no double
    assert sorted(d["event_id"] for d in documents) == sorted(e.event_id for e in events)
    assert documents[0]["previous_hash"] == bytes(32)
    forks = sum(later["previous_hash"] != earlier["hash"] for earlier, later in itertools.pairwise(documents))
    chaos_figures["forks"] = forks
    assert forks == 0
    for replica in replicas:
        intact, problem = await chain_verdict(replica, events)
        assert intact, problem
