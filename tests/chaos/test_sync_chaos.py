"""National sync on a bad night: the national side down for a while, answers lost after commit, a
sync replica killed (kill -9) mid-drain, one of two replicas killed mid-batch. Each scenario runs on
its own platform (the ``chaos`` fixture) with sync replicas of its own (fast retry settings, their own
database) in place of the platform's sync, and checks what the national side applied: every
submission exactly once (nothing lost, nothing applied twice), each patient's encounter versions in
order. Its figures: changes written, delivered, resends the national side deduplicated, lost, the
seconds the backlog took to drain."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.processes import free_port
from emr_devstack.stack import Ports
from emr_devstack.tokens import caller_metadata

T = TypeVar("T")
CLINICIAN = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
# The scenario's replicas keep their state apart from the platform's own sync (stopped first).
SYNC_DATABASE = "emr_sync_chaos"
FAST_SYNC = {
    "SYNC_MONGODB_DATABASE": SYNC_DATABASE,
    "SYNC_POLL_INTERVAL_SECONDS": "0.1",
    "SYNC_LEASE_SECONDS": "1.5",
    "SYNC_FIRST_RETRY_DELAY_SECONDS": "0.1",
    "SYNC_MAX_RETRY_DELAY_SECONDS": "0.5",
    "SYNC_CIRCUIT_FAILURE_THRESHOLD": "3",
    "SYNC_CIRCUIT_OPEN_SECONDS": "0.2",
    "SYNC_CIRCUIT_MAX_OPEN_SECONDS": "0.5",
    "SYNC_HTTP_TIMEOUT_SECONDS": "3",
    "SYNC_DEFAULT_RETRY_AFTER_SECONDS": "0.5",
    "SYNC_PARTITIONS": "8",
    "SYNC_PARTITIONS_PER_ROUND": "4",
    "SYNC_BACKLOG_METRICS_INTERVAL_SECONDS": "0.5",
}
DRAIN_DEADLINE_SECONDS = 45.0
# Latency of every national answer while a replica is killed: each patient's deliveries (sent one
# after another) take seconds, so the kill surely lands mid-drain.
SLOW_NATIONAL_MS = 500


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within_seconds: float = DRAIN_DEADLINE_SECONDS
) -> T:
    """Polls ``probe`` until it returns a value: asynchronous delivery has a deadline, not a delay."""
    deadline = time.monotonic() + within_seconds
    while True:
        value = await probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)


@dataclass
class NationalSync:
    """The scenario's sync replicas (each restartable on its ports and settings) and the platform's
    national emulator."""

    chaos: Any
    mongo: AsyncMongoClient[dict[str, Any]]
    facility_code: str
    ports: dict[str, Ports] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    expected: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def emulator_url(self) -> str:
        return str(self.chaos.stack.url("national_emulator"))

    @property
    def database(self) -> Any:
        return self.mongo[SYNC_DATABASE]

    def start(self, name: str, **settings: str) -> None:
        """Starts (or starts again, after a kill) the replica ``name``: same ports, same replica id,
        FAST_SYNC with ``settings`` (SYNC_* variables) on top."""
        stack = self.chaos.stack
        ports = self.ports.setdefault(name, stack.with_ports(sync=free_port()))
        stack.start_service(
            "sync",
            ports=ports,
            name=name,
            extra_env={
                **FAST_SYNC,
                "SYNC_REPLICA_ID": name,
                "SYNC_METRICS_PORT": str(ports.sync_metrics),
                **settings,
            },
        )

    def stub(self, name: str) -> sync_pb2_grpc.NationalSyncServiceStub:
        # Kept: a channel with interceptors that nothing references is closed when collected.
        if name not in self.channels:
            self.channels[name] = self.chaos.stack.dev_channel(f"127.0.0.1:{self.ports[name].sync}")
        return sync_pb2_grpc.NationalSyncServiceStub(self.channels[name])

    async def status(self, name: str) -> sync_pb2.GetSyncStatusResponse:
        response: sync_pb2.GetSyncStatusResponse = await self.stub(name).GetSyncStatus(
            sync_pb2.GetSyncStatusRequest(facility_code=self.facility_code)
        )
        return response

    async def pending_gauge(self, name: str) -> float | None:
        """The replica's emr_sync_pending_deliveries for the scenario's facility, None when not reported."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.ports[name].sync_metrics}/metrics")).text
        series = f'emr_sync_pending_deliveries{{facility_code="{self.facility_code}"}} '
        for line in text.splitlines():
            if line.startswith(series):
                return float(line.removeprefix(series))
        return None

    async def faults(self, **faults: Any) -> None:
        async with httpx.AsyncClient(base_url=self.emulator_url) as http:
            (await http.put("/admin/faults", json=faults)).raise_for_status()

    async def emulator(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.emulator_url) as http:
            response = await http.get(path, params=params)
            response.raise_for_status()
            return response.json()

    @property
    def total(self) -> int:
        """Deliveries the scenario's writes make: each patient's registration and encounter versions."""
        return sum(1 + len(versions) for versions in self.expected.values())

    async def write(self, patients: int, visits: int, revisions: int) -> None:
        """Registers ``patients`` patients (or takes those already written when 0) and gives each
        ``visits`` finished visits of ``revisions`` + 1 versions."""
        identity = identity_pb2_grpc.PatientIdentityServiceStub(self.chaos.channel("identity"))
        records = records_pb2_grpc.ClinicalRecordsServiceStub(self.chaos.channel("records"))
        for _ in range(patients):
            self.expected[await register(identity, self.facility_code)] = []
        for patient_id, versions in self.expected.items():
            for _ in range(visits):
                versions += await finished_encounter(records, patient_id, self.facility_code, revisions)

    async def all_delivered(self, name: str) -> sync_pb2.GetSyncStatusResponse:
        async def done() -> sync_pb2.GetSyncStatusResponse | None:
            current = await self.status(name)
            return current if current.delivered == self.total else None

        return await eventually(done)

    async def check_exactly_once_in_order(self, figures: Any) -> None:
        """What the national side applied: each patient once and its encounter versions once each, in
        order; no other submission. Figures first, so that a failed run shows them too."""
        stats = await self.emulator("/stats")
        figures["changes_written"] = self.total
        figures["delivered"] = stats["held"]
        applied_keys = [key for key, _ in await self._applied_transactions()]
        figures["duplicates_applied"] = len(applied_keys) - len(set(applied_keys))
        figures["resends_deduplicated"] = stats["duplicates_received"]
        applied: dict[str, tuple[int, list[tuple[str, int]]]] = {}
        for patient_id in self.expected:
            held = await self.emulator("/deliveries", patient_id=patient_id, kind="fhir")
            patients, encounters = 0, []
            for item in held["items"]:
                found = [e for e in item["entries"] if e["resource_type"] == "Encounter"]
                if found:
                    encounters.append((found[0]["id"], int(found[0]["version"])))
                else:
                    patients += 1
            applied[patient_id] = (patients, encounters)
        figures["lost"] = sum(
            (patients == 0) + len(set(self.expected[p]) - set(encounters))
            for p, (patients, encounters) in applied.items()
        )
        for patient_id, versions in self.expected.items():
            assert applied[patient_id] == (1, versions), patient_id
        assert figures["duplicates_applied"] == 0
        assert stats["held"] == self.total
        resources = await self.emulator("/resources", resource_type="Encounter")
        held_versions = sorted((r["id"], int(r["version"])) for r in resources["items"])
        assert held_versions == sorted(pair for versions in self.expected.values() for pair in versions)

    async def _applied_transactions(self) -> list[tuple[str, str]]:
        """(key, transaction id) of the submissions the national side applied, in the order it applied them."""
        held = await self.emulator("/deliveries")
        return [(item["idempotency_key"], item["transaction_id"]) for item in held["items"]]

    async def receipts_match(self) -> None:
        """The receipt kept locally for every delivery is the national side's transaction id of the
        submission it applied (the first), not of a resend."""
        national = {key: transaction for key, transaction in await self._applied_transactions()}
        checked = 0
        async for local in self.database["deliveries"].find({"status": "delivered"}):
            assert local["transaction_id"] == national[local["_id"]], local["_id"]
            assert local["receipts"][-1]["transaction_id"] == national[local["_id"]]
            checked += 1
        assert checked == len(national)

    async def listed_in_flight(self, owner: str) -> set[str]:
        """What ``owner`` lists as being sent, in every partition it holds or held."""
        listed: set[str] = set()
        async for document in self.database["in_flight"].find({"owner": owner}):
            listed |= {entry["_id"] for entry in document.get("deliveries", [])}
        return listed

    async def sending(self, owner: str) -> bool | None:
        """True while ``owner`` holds a live partition lease and lists deliveries of it in flight."""
        async for listed in self.database["in_flight"].find({"owner": owner}):
            lease = await self.database["leases"].find_one({"_id": listed["_id"]})
            live = lease is not None and lease["owner"] == owner and lease["expires_at"] > datetime.now(UTC)
            if live and listed.get("deliveries"):
                return True
        return None


@pytest.fixture
async def national_sync(chaos: Any, facility_code: str) -> AsyncIterator[NationalSync]:
    # The platform's own sync would deliver the same changes from its own state: it is stopped
    # before anything is written, and the scenario's replicas take the feeds from their start.
    chaos.stack.processes.pop("sync").stop()
    client = chaos.mongo()
    site = NationalSync(chaos, client, facility_code)
    try:
        yield site
    finally:
        for opened in site.channels.values():
            await opened.close()
        await client.close()


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


async def register(identity: Any, facility_code: str) -> str:
    serial = uuid.uuid4().int % 10**6
    # A different person each time (identity links registrations that look alike); born in 1992, male,
    # as the CCCD's century/sex and year digits say.
    given = ("Tám", "Bình", "Cường", "Dũng", "Hải", "Khoa", "Lâm", "Minh", "Nam", "Phúc", "Quang", "Sơn")
    response = await identity.RegisterPatient(
        identity_pb2.RegisterPatientRequest(
            request_id=str(uuid.uuid4()),
            full_name=f"Lê Văn {given[serial % len(given)]} {serial:06d}",
            birth_date=f"1992-{serial % 12 + 1:02d}-{serial % 28 + 1:02d}",
            sex=identity_pb2.SEX_MALE,
            facility_code=facility_code,
            identifiers=[
                identity_pb2.Identifier(
                    system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079092{serial:06d}"
                )
            ],
        ),
        metadata=CLINICIAN,
    )
    return str(response.patient.patient_id)


async def finished_encounter(
    records: Any, patient_id: str, facility_code: str, revisions: int
) -> list[tuple[str, int]]:
    """A finished visit (and ``revisions`` further versions of it): its (id, version) pairs."""
    now = datetime.now(UTC)
    created = await records.CreateEncounter(
        records_pb2.CreateEncounterRequest(
            request_id=str(uuid.uuid4()),
            patient_id=patient_id,
            facility_code=facility_code,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=stamp(now - timedelta(hours=1)),
            end_time=stamp(now - timedelta(minutes=5)),
            reason="Khám định kỳ",
            department="K01",
        ),
        metadata=CLINICIAN,
    )
    encounter = created.encounter
    versions = [(encounter.encounter_id, int(encounter.version))]
    for revision in range(revisions):
        encounter.reason = f"Khám định kỳ, bổ sung {revision + 1}"
        updated = await records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()),
                resource=records_pb2.ClinicalResource(encounter=encounter),
                expected_version=encounter.version,
            ),
            metadata=CLINICIAN,
        )
        encounter = updated.resource.encounter
        versions.append((encounter.encounter_id, int(encounter.version)))
    return versions


async def queued_everything(site: NationalSync, name: str) -> sync_pb2.GetSyncStatusResponse:
    async def queued() -> sync_pb2.GetSyncStatusResponse | None:
        current = await site.status(name)
        return current if current.pending + current.in_flight == site.total else None

    return await eventually(queued)


async def test_national_outage_backlog_ages_then_drains_exactly_once_in_patient_order(
    national_sync: NationalSync, chaos_figures: Any
) -> None:
    site = national_sync
    await site.faults(outage_seconds=3600)
    site.start("sync-a")
    site.start("sync-b")
    await site.write(patients=4, visits=3, revisions=1)

    async def backlog_queued() -> sync_pb2.GetSyncStatusResponse | None:
        current = await site.status("sync-a")
        queued = current.pending + current.in_flight == site.total and current.failed > 0
        return current if queued and not current.national_reachable else None

    first = await eventually(backlog_queued)
    assert first.delivered == 0
    assert first.HasField("oldest_pending_time")
    assert "503" in first.last_error

    async def gauge_shows_backlog() -> float | None:
        pending = await site.pending_gauge("sync-b")
        return pending if pending == site.total else None

    await eventually(gauge_shows_backlog)

    async def older() -> sync_pb2.GetSyncStatusResponse | None:
        current = await site.status("sync-b")
        return (
            current if current.oldest_pending_age_seconds > first.oldest_pending_age_seconds + 0.5 else None
        )

    aged = await eventually(older)
    assert aged.oldest_pending_time == first.oldest_pending_time
    assert aged.delivered == 0
    chaos_figures["backlog_age_seconds"] = aged.oldest_pending_age_seconds

    await site.faults(outage_seconds=0)
    outage_ended = time.monotonic()
    await site.all_delivered("sync-a")
    chaos_figures["drain_seconds"] = time.monotonic() - outage_ended
    await site.check_exactly_once_in_order(chaos_figures)
    final = await site.status("sync-b")
    assert (final.pending, final.in_flight, final.dead_lettered) == (0, 0, 0)
    assert not final.HasField("oldest_pending_time")
    assert final.national_reachable
    assert final.HasField("last_delivered_time")

    async def gauge_drained() -> bool | None:
        return True if await site.pending_gauge("sync-a") == 0 else None

    await eventually(gauge_drained)


async def test_commit_then_drop_and_throttling_apply_nothing_twice_and_lose_nothing(
    national_sync: NationalSync, chaos_figures: Any
) -> None:
    site = national_sync
    await site.faults(drop_after_commit_rate=0.5, throttle_rate=0.1, retry_after_seconds=1, error_rate=0.1)
    site.start("sync-a")
    started = time.monotonic()
    await site.write(patients=4, visits=3, revisions=0)

    await site.all_delivered("sync-a")
    chaos_figures["drain_seconds"] = time.monotonic() - started
    await site.check_exactly_once_in_order(chaos_figures)
    # Answers were lost after commit, and the resends were deduplicated.
    assert chaos_figures["resends_deduplicated"] > 0
    await site.receipts_match()


async def test_sync_killed_mid_drain_restarts_and_resends_only_what_was_in_flight(
    national_sync: NationalSync, chaos_figures: Any
) -> None:
    site = national_sync
    # Queued during an outage, then sent slowly: the replica is surely mid-drain when it is killed.
    await site.faults(outage_seconds=3600)
    site.start("sync-a")
    await site.write(patients=6, visits=2, revisions=1)
    await queued_everything(site, "sync-a")
    await site.faults(outage_seconds=0, latency_ms=SLOW_NATIONAL_MS)
    drain_started = time.monotonic()

    async def mid_drain() -> bool | None:
        # Some applied already, some listed in flight: deliveries are on the wire.
        applied = (await site.emulator("/stats"))["held"]
        return True if 0 < applied < site.total and await site.sending("sync-a") else None

    await eventually(mid_drain)
    site.chaos.kill("sync-a")
    # The dead replica's lists are frozen: what it may have sent without settling it.
    in_flight_at_kill = await site.listed_in_flight("sync-a")
    assert in_flight_at_kill, "nothing was in flight when the replica was killed"
    applied_at_kill = (await site.emulator("/stats"))["held"]
    assert applied_at_kill < site.total, "the replica was not mid-drain"

    site.start("sync-a")
    await site.all_delivered("sync-a")
    chaos_figures["drain_seconds"] = time.monotonic() - drain_started
    chaos_figures["in_flight_at_kill"] = len(in_flight_at_kill)
    await site.check_exactly_once_in_order(chaos_figures)
    # A resend is only of what was on the wire when the replica died; nothing settled is sent again.
    assert chaos_figures["resends_deduplicated"] <= len(in_flight_at_kill)
    await site.receipts_match()


async def test_one_of_two_replicas_killed_mid_batch_the_other_finishes_and_the_killed_one_resends_nothing(
    national_sync: NationalSync, chaos_figures: Any
) -> None:
    site = national_sync
    chaos = site.chaos
    await site.faults(outage_seconds=3600)
    # Two partitions a round (two rounds at once): neither replica can hold all eight, both drain.
    site.start("sync-a", SYNC_PARTITIONS_PER_ROUND="2")
    site.start("sync-b", SYNC_PARTITIONS_PER_ROUND="2")
    await site.write(patients=8, visits=2, revisions=1)
    await queued_everything(site, "sync-b")
    await site.faults(outage_seconds=0, latency_ms=SLOW_NATIONAL_MS)
    drain_started = time.monotonic()

    async def both_sending() -> bool | None:
        return True if await site.sending("sync-a") and await site.sending("sync-b") else None

    chaos_figures["stage"] = "waiting for both replicas to send"
    await eventually(both_sending)
    chaos.kill("sync-a")
    in_flight_at_kill = await site.listed_in_flight("sync-a")
    applied_at_kill = (await site.emulator("/stats"))["held"]
    assert applied_at_kill < site.total, "the replicas were not mid-drain"

    # sync-b takes over sync-a's partitions once their leases lapse, and finishes.
    chaos_figures["stage"] = f"takeover ({applied_at_kill} of {site.total} applied at the kill)"
    await site.all_delivered("sync-b")
    chaos_figures["drain_seconds"] = time.monotonic() - drain_started
    chaos_figures["in_flight_at_kill"] = len(in_flight_at_kill)
    await site.check_exactly_once_in_order(chaos_figures)
    resends_after_takeover = chaos_figures["resends_deduplicated"]
    assert resends_after_takeover <= len(in_flight_at_kill)
    await site.receipts_match()

    # The killed replica comes back alone (sync-b stopped): it takes every partition and the feeds,
    # sends the next visits, and sends nothing it had sent before.
    chaos_figures["stage"] = "the killed replica back alone"
    chaos.stack.processes.pop("sync-b").stop()
    await site.faults(latency_ms=0)
    site.start("sync-a", SYNC_PARTITIONS_PER_ROUND="2")
    await site.write(patients=0, visits=1, revisions=0)
    await site.all_delivered("sync-a")
    await site.check_exactly_once_in_order(chaos_figures)
    assert chaos_figures["resends_deduplicated"] == resends_after_takeover
    await site.receipts_match()
    chaos_figures["stage"] = "done"
