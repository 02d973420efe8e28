"""Writes through a bad night: records or identity killed (kill -9) mid-run and restarted, FerretDB
stopped (SIGSTOP) for seconds, while clients keep writing. The clients retry as a real one does:
every write carries a request_id, and on UNAVAILABLE or DEADLINE_EXCEEDED the same request is sent
again after a short back-off, within a deadline per call. A write is acknowledged when a call
answered OK. What users were promised: every acknowledged write readable (lost = 0), none applied
twice (duplicates = 0), each patient's writes in the change feed in the order they were made, the
feed without gaps, an audit event for every successful registration, the audit chain intact."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from emr.audit.v1 import audit_pb2, audit_pb2_grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.stack import DEV_FIELD_ENCRYPTION
from emr_devstack.tokens import caller_metadata
from emr_identity.domain import IdentifierSystem, identifier_key
from emr_identity.repository import stored_key
from emr_runtime.fieldcrypt import FieldCrypt

FACILITY = "79001"
CLINICIAN = caller_metadata("dr-synthetic-02", FACILITY, "TREATMENT")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
REGISTER_PATIENT = "/emr.identity.v1.PatientIdentityService/RegisterPatient"
CREATE_ENCOUNTER = "/emr.records.v1.ClinicalRecordsService/CreateEncounter"
# Every wait of a scenario is a poll bounded by this.
SETTLE_DEADLINE_SECONDS = 30.0
# A whole platform per test: on a 2-core machine that other work loads, its start alone took 70 s
# and 300 writes took 100 s (a median call of 3.5 s), beyond the suite's default of 300 s a test.
pytestmark = pytest.mark.timeout(600)


# --- a client that retries ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One attempt of a call: when it started and ended (monotonic) and the status it got."""

    started: float
    ended: float
    code: grpc.StatusCode

    def overlaps(self, start: float, end: float) -> bool:
        return self.started < end and self.ended > start


@dataclass
class RetryingClient:
    """Sends a request until it is answered: the same request (same request_id) again on
    UNAVAILABLE or DEADLINE_EXCEEDED, after a short back-off, within ``call_deadline`` seconds; each
    attempt within ``attempt_timeout``. Any other status ends the call (and fails the scenario)."""

    attempt_timeout: float = 5.0
    call_deadline: float = 60.0
    calls: int = 0
    retries: int = 0
    acknowledged: int = 0
    attempts: list[Attempt] = field(default_factory=list)

    async def call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        self.calls += 1
        deadline = time.monotonic() + self.call_deadline
        backoff = 0.05
        while True:
            started = time.monotonic()
            timeout = max(0.1, min(self.attempt_timeout, deadline - started))
            try:
                response = await method(request, metadata=CLINICIAN, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                self.attempts.append(Attempt(started, time.monotonic(), error.code()))
                if error.code() not in RETRYABLE or time.monotonic() >= deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                continue
            self.attempts.append(Attempt(started, time.monotonic(), grpc.StatusCode.OK))
            self.acknowledged += 1
            return response

    def median_ok_seconds(self) -> float:
        """The median latency of the attempts that were answered OK."""
        answered = sorted(a.ended - a.started for a in self.attempts if a.code == grpc.StatusCode.OK)
        return answered[len(answered) // 2] if answered else 0.0

    def codes(self) -> Counter[str]:
        return Counter(attempt.code.name for attempt in self.attempts)


# --- synthetic writes --------------------------------------------------------------------------

_GIVEN_NAMES = ("An", "Bình", "Chi", "Dung", "Giang", "Hạnh", "Khánh", "Lan", "Mai", "Ngọc", "Phương")


def person_registration(serial: int) -> identity_pb2.RegisterPatientRequest:
    """A distinct synthetic person: own name, birth date and CCCD (province 079, a woman born in
    1990, serial last)."""
    given = random.choice(_GIVEN_NAMES)
    letters = "".join(random.choices("bcdghklmnpqrstvx", k=6)).capitalize()
    return identity_pb2.RegisterPatientRequest(
        request_id=str(uuid.uuid4()),
        full_name=f"Nguyễn {letters} {given}",
        birth_date=f"1990-{serial % 12 + 1:02d}-{serial % 28 + 1:02d}",
        sex=identity_pb2.SEX_FEMALE,
        facility_code=FACILITY,
        identifiers=[
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079190{serial % 10**6:06d}"
            )
        ],
    )


def serials(count: int) -> list[int]:
    """Distinct CCCD serials, unlike any other scenario's (each scenario has its own platform anyway)."""
    return random.sample(range(10**6), count)


def _seconds_ago(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time()) - seconds)
    return stamp


def encounter_request(patient_id: str, index: int) -> records_pb2.CreateEncounterRequest:
    """The patient's ``index``-th encounter; later ones start later (all in the past)."""
    start = 200_000 - index * 60
    return records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code=FACILITY,
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=_seconds_ago(start),
        end_time=_seconds_ago(start - 30),
        reason="Khám định kỳ — synthetic",
        department="Khoa Khám bệnh",
        practitioner_id="prac-synthetic-01",
        discharge_disposition="home",
    )


@dataclass
class EncounterWriters:
    """One writer per patient, each creating its patient's encounters one after another (the next
    only once the previous one was acknowledged)."""

    stub: records_pb2_grpc.ClinicalRecordsServiceStub
    client: RetryingClient
    # patient id -> acknowledged encounter ids, in the order they were created
    written: dict[str, list[str]] = field(default_factory=dict)
    # acknowledged encounter id -> the request_id that created it
    request_ids: dict[str, str] = field(default_factory=dict)

    async def write(self, patient_id: str, count: int | None, stop: asyncio.Event | None = None) -> None:
        acknowledged = self.written.setdefault(patient_id, [])
        index = 0
        while (count is None or index < count) and not (stop is not None and stop.is_set()):
            request = encounter_request(patient_id, index)
            created = await self.client.call(self.stub.CreateEncounter, request)
            acknowledged.append(created.encounter.encounter_id)
            self.request_ids[created.encounter.encounter_id] = request.request_id
            index += 1

    @property
    def acknowledged(self) -> int:
        return sum(len(ids) for ids in self.written.values())

    def audited_as(self) -> set[tuple[str, str, str]]:
        """What audit must hold of the acknowledged encounters: (operation, request_id, patient)."""
        return {
            (CREATE_ENCOUNTER, self.request_ids[encounter_id], patient_id)
            for patient_id, encounter_ids in self.written.items()
            for encounter_id in encounter_ids
        }


@dataclass
class Registrations:
    """Registrations sent through a retrying client: request_id -> (request, acknowledged patient
    ids: one per acknowledged call, all the same when nothing was registered twice)."""

    stub: identity_pb2_grpc.PatientIdentityServiceStub
    client: RetryingClient
    requests: dict[str, identity_pb2.RegisterPatientRequest] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)

    async def register(self, request: identity_pb2.RegisterPatientRequest) -> None:
        self.requests[request.request_id] = request
        response = await self.client.call(self.stub.RegisterPatient, request)
        self.answers.setdefault(request.request_id, []).append(response.patient.patient_id)

    async def register_all(
        self, requests: list[identity_pb2.RegisterPatientRequest], concurrency: int
    ) -> None:
        queue: asyncio.Queue[identity_pb2.RegisterPatientRequest] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        async def worker() -> None:
            while not queue.empty():
                await self.register(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def patient_of(self, request_id: str) -> str:
        return self.answers[request_id][0]

    def audited_as(self) -> set[tuple[str, str, str]]:
        """What audit must hold of the acknowledged registrations: (operation, request_id, patient)."""
        return {(REGISTER_PATIENT, request_id, self.patient_of(request_id)) for request_id in self.answers}


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Polls ``condition`` (every 10 ms) until it holds; fails naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


async def kill_and_restart(chaos: Any, service: str) -> float:
    """kill -9 of ``service``, then a restart on its ports and database; the seconds it was away.
    The restart waits in a thread: the writers keep calling (and retrying) meanwhile."""
    killed = time.monotonic()
    chaos.kill(service)
    await asyncio.to_thread(chaos.restart, service)
    return time.monotonic() - killed


# --- what is checked afterwards ----------------------------------------------------------------


@dataclass(frozen=True)
class FeedReading:
    """The records change feed read from the start, as a consumer sees it."""

    changes: list[records_pb2.Change]
    cursor: int
    tombstones: set[int]


async def read_feed_until(
    stub: records_pb2_grpc.ClinicalRecordsServiceStub, mongo: Any, expected: set[str]
) -> FeedReading:
    """Polls ListChanges from the start (as sync does) until every expected resource id was handed
    out; holes left by a killed writer hold the run back until the settle time closes them."""
    changes: list[records_pb2.Change] = []
    cursor = 0
    deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
    while not expected <= {change.resource_id for change in changes}:
        missing = len(expected - {change.resource_id for change in changes})
        assert time.monotonic() < deadline, f"{missing} acknowledged writes never reached the change feed"
        page = await stub.ListChanges(records_pb2.ListChangesRequest(after_sequence=cursor, limit=1000))
        changes.extend(page.changes)
        if page.next_after_sequence == cursor:
            await asyncio.sleep(0.2)
        cursor = page.next_after_sequence
    handed_out = {change.sequence for change in changes}
    absent = [str(sequence) for sequence in range(1, cursor + 1) if sequence not in handed_out]
    tombstones = {
        int(document["_id"])
        async for document in mongo["emr_records"]["changes"].find(
            {"_id": {"$in": absent}, "tombstone": True}, {"_id": 1}
        )
    }
    return FeedReading(changes, cursor, tombstones)


def assert_feed_gap_free(feed: FeedReading) -> None:
    """Sequences strictly increasing; every position up to the cursor handed out or closed by a
    tombstone; no change (resource, version) handed out twice."""
    sequences = [change.sequence for change in feed.changes]
    assert sequences == sorted(set(sequences)), "the feed handed out positions out of order or twice"
    gaps = set(range(1, feed.cursor + 1)) - set(sequences) - feed.tombstones
    assert not gaps, f"positions skipped without a tombstone: {sorted(gaps)[:10]}"
    versions = Counter((change.resource_id, change.resource_version) for change in feed.changes)
    twice = [key for key, seen in versions.items() if seen > 1]
    assert not twice, f"changes handed out twice: {twice[:5]}"


async def check_encounters(
    stub: records_pb2_grpc.ClinicalRecordsServiceStub, mongo: Any, writers: EncounterWriters
) -> tuple[int, int]:
    """Every acknowledged encounter readable; each patient's encounters exactly its acknowledged
    ones; the change feed gap-free with each patient's encounters in the order they were written.
    Returns (lost, duplicates)."""
    # Read back through ListEncounters (a page of a patient's encounters at a time, not one audited
    # read each). Applied twice: an encounter listed twice, or one that no acknowledged request made
    # (every call is acknowledged in the end, so a second application of a request would be one).
    lost = duplicates = 0
    listed_ids: set[str] = set()
    listed_newest_first: dict[str, list[str]] = {}
    for patient_id, encounter_ids in writers.written.items():
        listed = listed_newest_first[patient_id] = await list_encounters(stub, patient_id)
        lost += len(set(encounter_ids) - set(listed))
        duplicates += len(listed) - len(set(listed)) + len(set(listed) - set(encounter_ids))
        listed_ids |= set(listed)

    feed = await read_feed_until(stub, mongo, listed_ids)
    assert_feed_gap_free(feed)
    for patient_id, encounter_ids in writers.written.items():
        in_feed = [
            c.resource_id
            for c in feed.changes
            if c.patient_id == patient_id and c.resource_type == "Encounter"
        ]
        assert in_feed == encounter_ids, f"patient {patient_id}: the feed's order is not the writer's"
        listed = listed_newest_first[patient_id][::-1]
        assert listed == encounter_ids, f"patient {patient_id}: the list's order is not the writer's"
    return lost, duplicates


async def list_encounters(stub: records_pb2_grpc.ClinicalRecordsServiceStub, patient_id: str) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await stub.ListEncounters(
            records_pb2.ListEncountersRequest(patient_id=patient_id, page_size=100, page_token=token),
            metadata=CLINICIAN,
        )
        ids.extend(encounter.encounter_id for encounter in page.encounters)
        token = page.next_page_token
        if not token:
            return ids


async def check_registrations(
    stub: identity_pb2_grpc.PatientIdentityServiceStub, mongo: Any, registrations: Registrations
) -> tuple[int, int]:
    """Every acknowledged registration readable (by id and by its CCCD); one person per request_id
    and per CCCD. Returns (lost, duplicates)."""
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)  # the platform's keys
    persons = mongo["emr_identity"]["persons"]
    lost = duplicates = 0
    for request_id, patient_ids in registrations.answers.items():
        duplicates += len(set(patient_ids)) - 1  # a repeat of a request answered another person
        patient_id = patient_ids[0]
        try:
            got = await stub.GetPatient(
                identity_pb2.GetPatientRequest(patient_id=patient_id), metadata=CLINICIAN
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            lost += 1
            continue
        assert got.patient.patient_id == patient_id
        cccd = registrations.requests[request_id].identifiers[0]
        claim_key = stored_key(crypt, identifier_key(IdentifierSystem.CCCD, cccd.value))
        duplicates += await persons.count_documents({"claim_keys": claim_key}) - 1
    return lost, duplicates


async def audited_successes(
    audit: audit_pb2_grpc.AuditServiceStub, mongo: Any, expected: set[tuple[str, str, str]]
) -> float:
    """Waits until the spools of identity and records are drained and audit holds a SUCCESS event
    of every acknowledged call ``(operation, request_id, patient id)``; returns the seconds waited."""
    started = time.monotonic()
    spools = [mongo[database]["audit_spool"] for database in ("emr_identity", "emr_records")]
    while True:
        audited = {
            (event.operation, event.request_id, event.patient_id)
            for event in await all_audit_events(audit)
            if event.outcome == audit_pb2.AUDIT_OUTCOME_SUCCESS
        }
        spooled = sum([await spool.count_documents({}) for spool in spools])
        if expected <= audited and spooled == 0:
            return time.monotonic() - started
        assert time.monotonic() - started < SETTLE_DEADLINE_SECONDS, (
            f"{len(expected - audited)} successful calls without an audit event; "
            f"{spooled} events still spooled"
        )
        await asyncio.sleep(1.0)


async def all_audit_events(audit: audit_pb2_grpc.AuditServiceStub) -> list[audit_pb2.AuditEvent]:
    events: list[audit_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await audit.QueryEvents(
            audit_pb2.QueryEventsRequest(actor_id="dr-synthetic-02", page_size=500, page_token=token)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def register_patients(stub: identity_pb2_grpc.PatientIdentityServiceStub, count: int) -> list[str]:
    registered = await asyncio.gather(
        *(stub.RegisterPatient(person_registration(serial), metadata=CLINICIAN) for serial in serials(count))
    )
    return [r.patient.patient_id for r in registered]


# --- the scenarios -----------------------------------------------------------------------------


@pytest.fixture
async def mongo(chaos: Any) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """Direct access to the scenario's own database, to count what was stored."""
    client = chaos.mongo()
    yield client
    await client.close()


ENCOUNTER_PATIENTS = 10
ENCOUNTERS_PER_PATIENT = 30


async def test_records_killed_during_encounter_writes_loses_and_doubles_nothing(
    chaos: Any, chaos_figures: Any, mongo: Any
) -> None:
    identity = identity_pb2_grpc.PatientIdentityServiceStub(chaos.channel("identity"))
    records = records_pb2_grpc.ClinicalRecordsServiceStub(chaos.channel("records"))
    audit = audit_pb2_grpc.AuditServiceStub(chaos.channel("audit"))
    patients = await register_patients(identity, ENCOUNTER_PATIENTS)
    client = RetryingClient()
    writers = EncounterWriters(records, client)
    total = ENCOUNTER_PATIENTS * ENCOUNTERS_PER_PATIENT

    async def break_records() -> float:
        await until(lambda: writers.acknowledged >= total // 3, 120, "a third of the encounters written")
        return await kill_and_restart(chaos, "records")

    restart_seconds, *_ = await asyncio.gather(
        break_records(), *(writers.write(p, ENCOUNTERS_PER_PATIENT) for p in patients)
    )
    chaos_figures["calls"] = client.calls
    chaos_figures["retries"] = client.retries
    chaos_figures["acknowledged"] = client.acknowledged
    chaos_figures["restart_seconds"] = restart_seconds
    chaos_figures["median_call_seconds"] = client.median_ok_seconds()
    lost, duplicates = await check_encounters(records, mongo, writers)
    chaos_figures["lost"] = lost
    chaos_figures["duplicates"] = duplicates
    chaos_figures["audit_drain_seconds"] = await audited_successes(audit, mongo, writers.audited_as())

    assert client.acknowledged == client.calls == total
    assert client.retries > 0, "the kill interrupted no call: the scenario tested nothing"
    assert lost == 0
    assert duplicates == 0


REGISTRATIONS = 40
REPEATED = 5


async def test_identity_killed_during_registrations_loses_and_doubles_nobody(
    chaos: Any, chaos_figures: Any, mongo: Any
) -> None:
    identity = identity_pb2_grpc.PatientIdentityServiceStub(chaos.channel("identity"))
    audit = audit_pb2_grpc.AuditServiceStub(chaos.channel("audit"))
    client = RetryingClient()
    registrations = Registrations(identity, client)
    requests = [person_registration(serial) for serial in serials(REGISTRATIONS)]
    # A few requests sent twice at once, as a client that gave up on an answer and sent it again.
    twins = requests[:REPEATED] + requests

    async def break_identity() -> float:
        await until(lambda: client.acknowledged >= REGISTRATIONS // 3, 120, "a third registered")
        return await kill_and_restart(chaos, "identity")

    restart_seconds, _ = await asyncio.gather(break_identity(), registrations.register_all(twins, 8))
    # ... and a few again after their answer.
    for request in requests[-REPEATED:]:
        await registrations.register(request)
    chaos_figures["calls"] = client.calls
    chaos_figures["retries"] = client.retries
    chaos_figures["acknowledged"] = client.acknowledged
    chaos_figures["restart_seconds"] = restart_seconds
    lost, duplicates = await check_registrations(identity, mongo, registrations)
    chaos_figures["lost"] = lost
    chaos_figures["duplicates"] = duplicates
    chaos_figures["audit_drain_seconds"] = await audited_successes(audit, mongo, registrations.audited_as())

    assert client.acknowledged == client.calls == len(twins) + REPEATED
    assert client.retries > 0, "the kill interrupted no call: the scenario tested nothing"
    assert lost == 0
    assert duplicates == 0


PAUSE_SECONDS = 3.0


async def test_database_paused_during_writes_answers_clearly_and_loses_nothing(
    chaos: Any, chaos_figures: Any, mongo: Any
) -> None:
    identity = identity_pb2_grpc.PatientIdentityServiceStub(chaos.channel("identity"))
    records = records_pb2_grpc.ClinicalRecordsServiceStub(chaos.channel("records"))
    audit = audit_pb2_grpc.AuditServiceStub(chaos.channel("audit"))
    patients = await register_patients(identity, 6)
    client = RetryingClient(attempt_timeout=4.0, call_deadline=45.0)
    writers = EncounterWriters(records, client)
    registrations = Registrations(identity, client)
    stop = asyncio.Event()
    pause: list[float] = []

    unused_serials = iter(serials(1000))

    async def register_until_stopped() -> None:
        while not stop.is_set():
            await registrations.register(person_registration(next(unused_serials)))

    async def stall_database() -> None:
        await until(lambda: client.acknowledged >= 20, 60, "writes under way before the pause")
        started = time.monotonic()
        await chaos.pause_database(PAUSE_SECONDS)
        pause.extend((started, time.monotonic()))
        # The writes go on for a while after the database is back, then stop.
        resumed_at = client.acknowledged
        await until(lambda: client.acknowledged >= resumed_at + 20, 60, "writes after the pause")
        stop.set()

    await asyncio.gather(
        stall_database(),
        *(writers.write(p, None, stop) for p in patients),
        *(register_until_stopped() for _ in range(3)),
    )
    during = [attempt for attempt in client.attempts if attempt.overlaps(*pause)]
    codes = Counter(attempt.code.name for attempt in during)
    max_latency = max(attempt.ended - attempt.started for attempt in client.attempts)
    chaos_figures["calls"] = client.calls
    chaos_figures["acknowledged"] = client.acknowledged
    chaos_figures["retries"] = client.retries
    chaos_figures["attempts_during_pause"] = len(during)
    chaos_figures["statuses_during_pause"] = dict(sorted(codes.items()))
    chaos_figures["max_latency_seconds"] = max_latency

    encounters_lost, encounter_duplicates = await check_encounters(records, mongo, writers)
    patients_lost, patient_duplicates = await check_registrations(identity, mongo, registrations)
    chaos_figures["lost"] = encounters_lost + patients_lost
    chaos_figures["duplicates"] = encounter_duplicates + patient_duplicates
    chaos_figures["audit_drain_seconds"] = await audited_successes(
        audit, mongo, writers.audited_as() | registrations.audited_as()
    )
    verdict = await audit.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())

    assert during, "no call was in flight during the pause: the scenario tested nothing"
    assert set(client.codes()) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, client.codes()
    # No attempt hangs past its deadline (gRPC's own timer, plus what a loaded machine adds).
    assert max_latency < client.attempt_timeout + 1.0
    assert client.acknowledged == client.calls
    assert encounters_lost == patients_lost == 0
    assert encounter_duplicates == patient_duplicates == 0
    assert verdict.intact, (verdict.first_bad_sequence, verdict.problem)
