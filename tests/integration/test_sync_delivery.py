"""National sync through real processes: records and identity, sync replicas of their own (own
database, fast retry settings) and an emulator of their own. Every test checks what the receiver
applied: every (resource, version) exactly once, each patient's in order. The failure scenarios (a
national outage, answers dropped after commit, replicas killed mid-drain) are the chaos suite's:
tests/chaos/test_sync_chaos.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_devstack.national import FACILITY_SIGNING_DIR
from emr_devstack.processes import ManagedProcess, free_port
from emr_devstack.stack import DEV_FIELD_ENCRYPTION, Stack
from emr_devstack.tokens import caller_metadata
from emr_records.repository import CHANGE_COUNTER
from emr_runtime.db import last_sequence
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import PageTokens
from emr_runtime.patients import PatientDirectory
from emr_sync.app import pipeline_config
from emr_sync.claim_signing import ClaimSigner
from emr_sync.claim_xml import ClaimDetails, claim_xml
from emr_sync.clients import ClientCredential, IdentityFeed, NationalClient, NationalCredentials, RecordsFeed
from emr_sync.domain import DeliveryKind, new_delivery
from emr_sync.repository import SyncRepository
from emr_sync.service import SyncService
from emr_sync.settings import SyncSettings
from emr_sync.synthetic import SYNTHETIC_DETAILS, encounter_backlog, synthetic_visits

T = TypeVar("T")
CLINICIAN = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
FAST_SYNC = {
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
}


async def eventually(probe: Callable[[], Awaitable[T | None]], within_seconds: float = 60.0) -> T:
    """Polls ``probe`` until it returns a value: asynchronous delivery has a deadline, not a delay."""
    deadline = time.monotonic() + within_seconds
    while True:
        value = await probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


@dataclass
class SyncSite:
    """Sync replicas and their national emulator, started for one test."""

    stack: Stack
    database: str
    emulator_port: int
    replicas: dict[str, tuple[ManagedProcess, int]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def start_replica(self, name: str) -> None:
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
            },
        )
        self.replicas[name] = (process, ports.sync)
        self.names.append(name)

    def stub(self, name: str) -> sync_pb2_grpc.NationalSyncServiceStub:
        # Kept: a channel with interceptors that nothing references is closed when collected.
        if name not in self.channels:
            self.channels[name] = self.stack.dev_channel(f"127.0.0.1:{self.replicas[name][1]}")
        return sync_pb2_grpc.NationalSyncServiceStub(self.channels[name])


@pytest.fixture
async def site(stack: Stack, mongo: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[SyncSite]:
    emulator_port = free_port()
    name = f"emulator-{uuid.uuid4().hex[:6]}"
    stack.start_service(
        "national_emulator",
        ports=stack.with_ports(national_emulator=emulator_port),
        name=name,
        # Tokens live 2 s, so every test also renews its token.
        extra_env={"NATIONAL_EMULATOR_TOKEN_TTL_SECONDS": "2", "NATIONAL_EMULATOR_LOG_LEVEL": "warning"},
    )
    result = SyncSite(stack, f"emr_sync_test_{uuid.uuid4().hex[:8]}", emulator_port)
    # These replicas start where the feed is now: what other tests wrote is not theirs to send.
    start = await last_sequence(mongo["emr_records"], CHANGE_COUNTER)
    await mongo[result.database]["cursors"].insert_one({"_id": "records", "after": start})
    # Identity's patient changes are test_sync_patient_changes.py's subject: these replicas take none
    # (a cursor past every sequence), so that what they deliver is each test's encounters.
    await mongo[result.database]["cursors"].insert_one({"_id": "identity", "after": 2**62})
    yield result
    for process_name in [*result.names, name]:
        stack.processes.pop(process_name).stop()


async def emulator(site: SyncSite, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(base_url=site.emulator_url) as http:
        response = await http.get(path, params=params)
        response.raise_for_status()
        return response.json()


async def register(identity: Any, facility_code: str, *, cccd: bool = True, bhyt: str = "") -> str:
    serial = uuid.uuid4().int % 10**6
    identifiers = [
        identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079092{serial:06d}")
        if cccd
        else identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_PASSPORT, value=f"C{serial:07d}")
    ]
    if bhyt:
        identifiers.append(identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value=bhyt))
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
            identifiers=identifiers,
        ),
        metadata=CLINICIAN,
    )
    return str(response.patient.patient_id)


async def finished_encounter(
    records: Any, patient_id: str, facility_code: str, *, bhyt: str = "", revisions: int = 0
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
            insurance=records_pb2.EncounterInsurance(bhyt_number=bhyt, benefit_level=4) if bhyt else None,
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


async def applied_encounters(site: SyncSite, patient_id: str) -> list[tuple[str, int]]:
    """The encounter versions the emulator applied for a patient, in the order it applied them."""
    held = await emulator(site, "/deliveries", patient_id=patient_id, kind="fhir")
    found = []
    for item in held["items"]:
        (encounter,) = [e for e in item["entries"] if e["resource_type"] == "Encounter"]
        found.append((encounter["id"], int(encounter["version"])))
    return found


async def status(site: SyncSite, name: str, facility_code: str) -> sync_pb2.GetSyncStatusResponse:
    response: sync_pb2.GetSyncStatusResponse = await site.stub(name).GetSyncStatus(
        sync_pb2.GetSyncStatusRequest(facility_code=facility_code)
    )
    return response


async def all_delivered(site: SyncSite, name: str, facility_code: str, expected: int) -> None:
    async def done() -> bool | None:
        current = await status(site, name, facility_code)
        return True if current.delivered == expected else None

    await eventually(done)


async def claims_held_back(site: SyncSite, name: str, facility_code: str, expected: int) -> None:
    """The claims of the facility's BHYT visit (and its check-in) are dead letters naming what
    Decision 130 requires and this thin visit lacks (a document the portal would refuse is never
    sent)."""

    async def dead() -> sync_pb2.ListDeadLettersResponse | None:
        page = await site.stub(name).ListDeadLetters(
            sync_pb2.ListDeadLettersRequest(facility_code=facility_code)
        )
        return page if len(page.dead_letters) == expected + 1 else None

    page = await eventually(dead)
    claims = [letter for letter in page.dead_letters if letter.delivery_id.startswith("Claim/Encounter/")]
    (checkin,) = [
        letter for letter in page.dead_letters if letter.delivery_id.startswith("CheckIn/Encounter/")
    ]
    assert len(claims) == expected
    for letter in claims:
        assert letter.reason.startswith("claim fails Decision 130 checks: HOSO[1].XML1[1].")
        assert "XML1[1].MA_DANTOC REQUIRED" in letter.reason  # registered without an ethnic group
    assert "XML0[1].MA_DOITUONG_KCB REQUIRED" in checkin.reason  # no patient category recorded


async def assert_exactly_once_in_order(site: SyncSite, expected: dict[str, list[tuple[str, int]]]) -> None:
    for patient_id, versions in expected.items():
        assert await applied_encounters(site, patient_id) == versions
    resources = await emulator(site, "/resources", resource_type="Encounter")
    ours = {pair for versions in expected.values() for pair in versions}
    held = [(r["id"], int(r["version"])) for r in resources["items"] if (r["id"], int(r["version"])) in ours]
    assert sorted(held) == sorted(ours)


async def test_rejected_payload_is_dead_lettered_and_the_rest_flows(
    site: SyncSite, identity: Any, records: Any, facility_code: str
) -> None:
    site.start_replica("dead-a")
    without_cccd = await register(identity, facility_code, cccd=False)
    rejected = await finished_encounter(records, without_cccd, facility_code)
    expected: dict[str, list[tuple[str, int]]] = {}
    for _ in range(3):
        patient_id = await register(identity, facility_code)
        expected[patient_id] = await finished_encounter(records, patient_id, facility_code, revisions=1)
    total = sum(len(v) for v in expected.values())

    await all_delivered(site, "dead-a", facility_code, total)
    await assert_exactly_once_in_order(site, expected)
    stub = site.stub("dead-a")

    async def dead_lettered() -> sync_pb2.ListDeadLettersResponse | None:
        page = await stub.ListDeadLetters(sync_pb2.ListDeadLettersRequest(facility_code=facility_code))
        return page if len(page.dead_letters) == 1 else None

    page = await eventually(dead_lettered)
    (letter,) = page.dead_letters
    assert letter.delivery_id == f"Encounter/{rejected[0][0]}/_history/1"
    assert letter.kind == sync_pb2.DELIVERY_KIND_FHIR_TRANSACTION
    assert letter.patient_id == without_cccd
    assert "CCCD" in letter.reason
    assert letter.attempts == 1
    assert letter.HasField("dead_time")
    assert (await status(site, "dead-a", facility_code)).dead_lettered == 1
    assert await applied_encounters(site, without_cccd) == []

    request = sync_pb2.RetryDeadLetterRequest(request_id=str(uuid.uuid4()), delivery_id=letter.delivery_id)
    assert (await stub.RetryDeadLetter(request)).delivery_id == letter.delivery_id

    async def rejected_again() -> sync_pb2.DeadLetter | None:
        again = await stub.ListDeadLetters(sync_pb2.ListDeadLettersRequest(facility_code=facility_code))
        return again.dead_letters[0] if again.dead_letters and again.dead_letters[0].attempts == 2 else None

    await eventually(rejected_again)
    # A repeated request returns its first result; the same id for another delivery is refused.
    assert (await stub.RetryDeadLetter(request)).delivery_id == letter.delivery_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RetryDeadLetter(
            sync_pb2.RetryDeadLetterRequest(
                request_id=request.request_id, delivery_id="Encounter/x/_history/1"
            )
        )
    assert refused.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.RetryDeadLetter(
            sync_pb2.RetryDeadLetterRequest(
                request_id=str(uuid.uuid4()), delivery_id="Encounter/x/_history/1"
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reconcile_resends_what_the_national_side_lost_and_replay_is_deduplicated(
    site: SyncSite, identity: Any, records: Any, facility_code: str
) -> None:
    site.start_replica("reconcile-a")
    started = datetime.now(UTC) - timedelta(seconds=1)
    bhyt = f"DN479{uuid.uuid4().int % 10**10:010d}"
    patient_id = await register(identity, facility_code, bhyt=bhyt)
    versions = await finished_encounter(records, patient_id, facility_code, bhyt=bhyt, revisions=2)
    await all_delivered(site, "reconcile-a", facility_code, len(versions))  # the bundles
    await claims_held_back(site, "reconcile-a", facility_code, len(versions))
    lost = f"Encounter/{versions[1][0]}/_history/{versions[1][1]}"
    async with httpx.AsyncClient(base_url=site.emulator_url) as http:
        assert (await http.post(f"/admin/forget/{lost}")).json() == {"forgotten": True}
    stub = site.stub("reconcile-a")
    request = sync_pb2.ReconcileRequest(
        request_id=str(uuid.uuid4()),
        start_time=stamp(started),
        end_time=stamp(datetime.now(UTC) + timedelta(seconds=1)),
    )
    outcome = await stub.Reconcile(request)
    assert outcome.requeued == 1
    assert list(outcome.requeued_delivery_ids) == [lost]
    assert outcome.checked >= len(versions)
    assert await stub.Reconcile(request) == outcome  # a repeat returns the first result

    async def resent() -> bool | None:
        return (
            True
            if lost in {i["idempotency_key"] for i in (await emulator(site, "/deliveries"))["items"]}
            else None
        )

    await eventually(resent)
    await all_delivered(site, "reconcile-a", facility_code, len(versions))
    # No claim reached the (strict) national side: each was held back as a dead letter.
    assert (await emulator(site, "/deliveries", patient_id=patient_id, kind="claim"))["count"] == 0

    # Replay re-sends what was committed since a time; the national side applies none of it twice.
    before = await emulator(site, "/stats")
    replayed = await stub.Replay(
        sync_pb2.ReplayRequest(request_id=str(uuid.uuid4()), from_time=stamp(started))
    )
    assert replayed.requeued >= len(versions)

    async def replay_done() -> bool | None:
        after = await emulator(site, "/stats")
        done = after["duplicates_received"] >= before["duplicates_received"] + replayed.requeued
        return True if done else None

    await eventually(replay_done)
    assert (await emulator(site, "/stats"))["held"] == before["held"]
    # Every version once; the lost one was applied again after its successors (it had been lost).
    applied = await applied_encounters(site, patient_id)
    assert sorted(applied) == sorted(versions)


async def test_one_replicas_concurrent_rounds_share_no_partition_and_send_each_delivery_once(
    site: SyncSite, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    # In process, so that both rounds start at the same moment, as a replica's rounds do on a backlog.
    settings = SyncSettings(partitions=8, partitions_per_round=4, replica_id="rounds", concurrency=8)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)
    repository = SyncRepository(mongo[site.database], crypt)
    # One encounter per patient: every partition has deliveries, so a shared one would be sent twice.
    queued = encounter_backlog(48, settings.partitions, per_patient=1)
    await repository.enqueue(queued)
    await repository.create_leases([f"partition:{p}" for p in range(settings.partitions)])
    unused = grpc.aio.insecure_channel("127.0.0.1:1")  # rounds read no feed and no patient
    national = NationalClient(
        site.emulator_url,
        10,
        NationalCredentials(
            {}, ClientCredential(settings.national_client_id, settings.national_client_secret)
        ),
        settings.national_token_path,
        timedelta(seconds=1),
        settings.concurrency,
    )
    service = SyncService(
        repository,
        RecordsFeed(unused),
        IdentityFeed(unused),
        PatientDirectory(unused, "sync", "NATIONAL_REPORTING"),
        national,
        pipeline_config(settings),
        PageTokens(crypt.derived_key(page_token_purpose("sync"))),
        crypt.derived_key(REQUEST_FINGERPRINT),
    )
    try:
        sent = await asyncio.gather(service.deliver_round(), service.deliver_round())
    finally:
        await national.close()
        await unused.close()
    # Four partitions each, none in both: every delivery is sent, and sent once.
    assert sum(sent) == len(queued)
    stats = await emulator(site, "/stats")
    assert (stats["held"], stats["duplicates_received"]) == (len(queued), 0)
    assert await mongo[site.database]["queue"].count_documents({}) == 0
    assert await mongo[site.database]["deliveries"].count_documents({"status": "delivered"}) == len(queued)


async def test_the_strict_emulator_holds_a_full_claim_and_refuses_a_thin_one_by_field(
    site: SyncSite, stack: Stack, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    """Two claims queued as intake would (bypassing intake's own check, to reach the emulator): the
    builder's full claim of a synthetic visit is held by the emulator, strict by default; the claim of
    the same kind of visit of a person registered without a nationality is refused, naming the field."""
    settings = SyncSettings(partitions=1, partitions_per_round=1, replica_id="claims", concurrency=2)
    crypt = FieldCrypt.from_variables(DEV_FIELD_ENCRYPTION)
    repository = SyncRepository(mongo[site.database], crypt)
    now = datetime.now(UTC)
    full, thin = synthetic_visits(2, per_patient=2, now=now)
    # The same visit of a person registered without a nationality (no CCCD said Vietnamese).
    without = identity_pb2.Patient()
    without.CopyFrom(thin.patient)
    without.nationality_code = ""
    thin = replace(thin, patient=without)
    queued = [
        new_delivery(
            DeliveryKind.CLAIM_XML,
            "Encounter",
            visit.encounter.encounter_id,
            1,
            visit.patient.patient_id,
            visit.encounter.facility_code,
            sequence,
            settings.partitions,
            claim_xml(visit.patient, visit.encounter, visit.resources, now, details),
            now,
            now,
        )
        for sequence, (visit, details) in enumerate(((full, SYNTHETIC_DETAILS), (thin, ClaimDetails())), 1)
    ]
    await repository.enqueue(queued)
    await repository.create_leases(["partition:0"])
    unused = grpc.aio.insecure_channel("127.0.0.1:1")  # the round reads no feed and no patient
    national = NationalClient(
        site.emulator_url,
        10,
        NationalCredentials(
            {}, ClientCredential(settings.national_client_id, settings.national_client_secret)
        ),
        settings.national_token_path,
        timedelta(seconds=1),
        settings.concurrency,
    )
    # Signed with the development key of the visits' facility, whose certificate the emulator reads.
    signer = ClaimSigner.from_directory(str(stack.run_dir / FACILITY_SIGNING_DIR), generate=True)
    service = SyncService(
        repository,
        RecordsFeed(unused),
        IdentityFeed(unused),
        PatientDirectory(unused, "sync", "NATIONAL_REPORTING"),
        national,
        pipeline_config(settings),
        PageTokens(crypt.derived_key(page_token_purpose("sync"))),
        crypt.derived_key(REQUEST_FINGERPRINT),
        signer=signer,
    )
    try:
        await service.deliver_round()
    finally:
        await national.close()
        await unused.close()
    held = await emulator(site, f"/deliveries/{queued[0].delivery_id}")
    assert held["content"]["MA_LK"] == full.encounter.encounter_id
    assert held["content"]["T_TONGCHI_BV"] != "0"
    deliveries = mongo[site.database]["deliveries"]
    assert (await deliveries.find_one({"_id": queued[0].delivery_id}) or {})["status"] == "delivered"
    refused = await deliveries.find_one({"_id": queued[1].delivery_id}) or {}
    assert refused["status"] == "dead"
    assert refused["last_error"].startswith("HTTP 422: HOSO[1].XML1[1].MA_QUOCTICH REQUIRED")
