"""Claims on the real platform: sync signs an insurance visit's claim with its facility's key and sends
it with that facility's national client; the emulator verifies it against the facility's certificate
and answers a transaction code, which GetSyncStatus shows. A tampered, unsigned or foreign claim is
refused with the field named, and a facility without a key has its claim dead-lettered, never sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from emr.sync.v1 import sync_pb2, sync_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient

from emr_claims import build, sample
from emr_devstack.national import FACILITY_SIGNING_DIR, dev_client
from emr_devstack.processes import free_port, poll_until
from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata
from emr_records.repository import CHANGE_COUNTER
from emr_runtime.db import last_sequence
from emr_sync.claim_signing import load_signing_key, sign_claim

# Deliveries and receipts of a real round may take a while on a busy machine.
DELIVERED_WITHIN_SECONDS = 60.0
CLINICIAN = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
# Facilities of the development clients file (emr_devstack.national): each has its own client.
SIGNED_FACILITY, OTHER_FACILITY = "79002", "79001"


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


async def insurance_visit(clinical: Any, facility_code: str) -> str:
    """A registered patient's finished BHYT-paid visit with what its claim needs; the claim's
    delivery id."""
    encounter = await insurance_encounter(clinical, facility_code)
    return f"Claim/Encounter/{encounter.encounter_id}/_history/{encounter.version}"


async def insurance_encounter(clinical: Any, facility_code: str) -> records_pb2.Encounter:
    """A registered patient's finished BHYT-paid visit with what its claim needs."""
    serial = uuid.uuid4().int % 10**6
    bhyt = f"DN479{uuid.uuid4().int % 10**10:010d}"
    registered = await clinical.identity.RegisterPatient(
        identity_pb2.RegisterPatientRequest(
            request_id=str(uuid.uuid4()),
            full_name=f"Phạm Văn Ký {serial:06d}",
            birth_date=f"1992-{serial % 12 + 1:02d}-{serial % 28 + 1:02d}",
            sex=identity_pb2.SEX_MALE,
            facility_code=facility_code,
            identifiers=[
                identity_pb2.Identifier(
                    system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079092{serial:06d}"
                ),
                identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value=bhyt),
            ],
            # What the claim needs of the person (nationality: Vietnamese, from the CCCD).
            **clinical.claim_profile,
        ),
        metadata=CLINICIAN,
    )
    encounter: records_pb2.Encounter = await clinical.claimable_visit(
        registered.patient.patient_id, facility_code, bhyt, CLINICIAN
    )
    return encounter


async def token_of(http: httpx.AsyncClient, facility_code: str) -> str:
    client = dev_client(facility_code)
    answer = await http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def a_claim(facility_code: str) -> bytes:
    """A full claim (every table, totals that add up: the strict checks pass) of ``facility_code``."""
    rows = sample.claim_rows()
    link_key = str(uuid.uuid4())
    for table_rows in rows.values():
        for row in table_rows:
            row["MA_LK"] = link_key
            if "MA_CSKCB" in row:
                row["MA_CSKCB"] = facility_code
    return build.submission(facility_code, [sample.claim_documents(rows)], datetime.now(UTC).date())


async def post_claim(http: httpx.AsyncClient, token: str, body: bytes) -> httpx.Response:
    return await http.post(
        "/claims",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": f"test-{uuid.uuid4()}",
            "Content-Type": "application/xml",
        },
    )


def refused_field(answer: httpx.Response) -> tuple[int, str, str]:
    (issue,) = answer.json()["issue"]
    return answer.status_code, issue["expression"][0], issue["diagnostics"]


async def test_an_insurance_visits_claim_arrives_signed_and_its_receipt_shows_in_sync_status(
    stack: Stack,
    clinical: Any,
    sync: sync_pb2_grpc.NationalSyncServiceStub,
    bad_fields: Callable[[grpc.aio.AioRpcError], list[str]],
) -> None:
    claim_id = await insurance_visit(clinical, SIGNED_FACILITY)

    async def receipt() -> sync_pb2.DeliveryReceipt | None:
        status = await sync.GetSyncStatus(
            sync_pb2.GetSyncStatusRequest(facility_code=SIGNED_FACILITY, delivery_ids=[claim_id])
        )
        return status.receipts[0] if status.receipts else None

    held = await poll_until(receipt, DELIVERED_WITHIN_SECONDS)
    assert (held.delivery_id, held.kind) == (claim_id, sync_pb2.DELIVERY_KIND_CLAIM_XML)
    assert held.facility_code == SIGNED_FACILITY and held.HasField("delivered_time")
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        accepted = (await http.get(f"/deliveries/{claim_id}")).json()
    # The emulator accepts a claim only once its signature verified against 79002's certificate.
    assert held.transaction_id and held.transaction_id == accepted["transaction_id"]
    status = await sync.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code=SIGNED_FACILITY))
    assert status.last_receipt.transaction_id
    # Receipts of another facility are not shown under this one's filter.
    other = await sync.GetSyncStatus(
        sync_pb2.GetSyncStatusRequest(facility_code=OTHER_FACILITY, delivery_ids=[claim_id])
    )
    assert list(other.receipts) == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sync.GetSyncStatus(
            sync_pb2.GetSyncStatusRequest(delivery_ids=[f"Claim/{n}" for n in range(101)])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == ["delivery_ids"]


async def test_the_emulator_refuses_a_tampered_unsigned_or_foreign_claim_naming_the_field(
    stack: Stack, clinical: Any, sync: sync_pb2_grpc.NationalSyncServiceStub
) -> None:
    # Sync made 79002's development key on first use (the previous test, or this visit's claim).
    claim_id = await insurance_visit(clinical, SIGNED_FACILITY)

    async def delivered() -> bool | None:
        status = await sync.GetSyncStatus(
            sync_pb2.GetSyncStatusRequest(facility_code=SIGNED_FACILITY, delivery_ids=[claim_id])
        )
        return True if status.receipts else None

    await poll_until(delivered, DELIVERED_WITHIN_SECONDS)
    key = load_signing_key(stack.run_dir / FACILITY_SIGNING_DIR, SIGNED_FACILITY)
    signed = sign_claim(a_claim(SIGNED_FACILITY), key)
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:
        token = await token_of(http, SIGNED_FACILITY)
        accepted = await post_claim(http, token, signed)
        assert accepted.status_code == 201
        assert accepted.json()["MA_GIAO_DICH"] == accepted.headers["X-Transaction-Id"]

        old = b"<NGAYLAP>"
        at = signed.index(old) + len(old)
        changed = b"1" if signed[at : at + 1] != b"1" else b"2"
        tampered = signed[:at] + changed + signed[at + 1 :]
        status, field, reason = refused_field(await post_claim(http, token, tampered))
        assert (status, field) == (422, "CHUKYDONVI") and "changed after signing" in reason

        status, field, reason = refused_field(await post_claim(http, token, a_claim(SIGNED_FACILITY)))
        assert (status, field) == (422, "CHUKYDONVI") and "not signed" in reason

        # 79001's token may not submit 79002's claim, signed or not.
        foreign = await token_of(http, OTHER_FACILITY)
        status, field, _ = refused_field(await post_claim(http, foreign, signed))
        assert (status, field) == (403, "THONGTINDONVI.MACSKCB")


async def test_a_facility_without_a_signing_key_has_its_claim_dead_lettered_and_never_sent(
    stack: Stack, clinical: Any, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path
) -> None:
    # A sync replica of its own (database, emulator) whose signing folder has no key for the facility.
    emulator_port, name = free_port(), f"emulator-{uuid.uuid4().hex[:6]}"
    stack.start_service(
        "national_emulator", ports=stack.with_ports(national_emulator=emulator_port), name=name
    )
    database = f"emr_sync_test_{uuid.uuid4().hex[:8]}"
    start = await last_sequence(mongo["emr_records"], CHANGE_COUNTER)
    await mongo[database]["cursors"].insert_many(
        [{"_id": "records", "after": start}, {"_id": "identity", "after": 2**62}]
    )
    replica = f"sync-unsigned-{uuid.uuid4().hex[:6]}"
    sync_port = free_port()
    stack.start_service(
        "sync",
        ports=stack.with_ports(sync=sync_port),
        name=replica,
        extra_env={
            "SYNC_MONGODB_DATABASE": database,
            "SYNC_NATIONAL_URL": f"http://127.0.0.1:{emulator_port}",
            "SYNC_FACILITY_SIGNING_DIR": str(tmp_path),
            "SYNC_FACILITY_SIGNING_GENERATE": "false",
            "SYNC_POLL_INTERVAL_SECONDS": "0.1",
            "SYNC_METRICS_PORT": "0",
        },
    )
    channel = stack.dev_channel(f"127.0.0.1:{sync_port}")
    try:
        stub = sync_pb2_grpc.NationalSyncServiceStub(channel)
        claim_id = await insurance_visit(clinical, SIGNED_FACILITY)

        async def dead_letter() -> sync_pb2.DeadLetter | None:
            page = await stub.ListDeadLetters(sync_pb2.ListDeadLettersRequest(facility_code=SIGNED_FACILITY))
            return next((d for d in page.dead_letters if d.delivery_id == claim_id), None)

        letter = await poll_until(dead_letter, DELIVERED_WITHIN_SECONDS)
        assert "CHUKYDONVI" in letter.reason and "no signing key" in letter.reason
        status = await stub.GetSyncStatus(sync_pb2.GetSyncStatusRequest(facility_code=SIGNED_FACILITY))
        assert status.delivered == 1  # the visit's FHIR bundle went; its claim did not
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator_port}") as http:
            assert (await http.get(f"/deliveries/{claim_id}")).status_code == 404
            assert (await http.get("/stats")).json()["received"] == 1
    finally:
        await channel.close()
        for process in (replica, name):
            stack.processes.pop(process).stop()


async def test_a_visit_is_checked_in_then_claimed_replaced_when_corrected_and_withdrawn_when_in_error(
    stack: Stack, clinical: Any, sync: sync_pb2_grpc.NationalSyncServiceStub
) -> None:
    encounter = await insurance_encounter(clinical, SIGNED_FACILITY)
    visit_path = f"/claims/visits/{SIGNED_FACILITY}/{encounter.encounter_id}"
    checkin_id = f"CheckIn/Encounter/{encounter.encounter_id}"
    claim_id = f"Claim/Encounter/{encounter.encounter_id}/_history/{encounter.version}"
    async with httpx.AsyncClient(base_url=stack.url("national_emulator")) as http:

        async def portal_holds(**expected: Any) -> dict[str, Any] | None:
            answer = await http.get(visit_path)
            held: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
            return held if held is not None and expected.items() <= held.items() else None

        held = await poll_until(
            lambda: portal_holds(checked_in=True, claims=[claim_id]), DELIVERED_WITHIN_SECONDS
        )
        assert (held["replacements"], held["withdrawn"]) == (0, False)
        # The check-in reached the portal before the claim (the visit's documents go in order).
        applied = [item["idempotency_key"] for item in (await http.get("/deliveries")).json()["items"]]
        assert applied.index(checkin_id) < applied.index(claim_id)

        # A correction of the finished visit is claimed again under the same MA_LK: a replacement.
        corrected = records_pb2.ClinicalResource(encounter=encounter)
        corrected.encounter.discharge.discharge_diagnosis = "Viêm họng cấp, đã khỏi"
        updated = await clinical.records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()), resource=corrected, expected_version=encounter.version
            ),
            metadata=CLINICIAN,
        )
        replacement_id = (
            f"Claim/Encounter/{encounter.encounter_id}/_history/{updated.resource.encounter.version}"
        )
        held = await poll_until(lambda: portal_holds(replacements=1), DELIVERED_WITHIN_SECONDS)
        assert held["current_claim"] == replacement_id

        # Entered in error: the portal's claim of the visit is withdrawn, and it takes no other.
        in_error = records_pb2.ClinicalResource(encounter=updated.resource.encounter)
        in_error.encounter.status = records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR
        withdrawn = await clinical.records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()),
                resource=in_error,
                expected_version=updated.resource.encounter.version,
            ),
            metadata=CLINICIAN,
        )
        held = await poll_until(lambda: portal_holds(withdrawn=True), DELIVERED_WITHIN_SECONDS)
        assert held["current_claim"] is None
    withdrawal_id = (
        f"Withdrawal/Encounter/{encounter.encounter_id}/_history/{withdrawn.resource.encounter.version}"
    )
    status = await sync.GetSyncStatus(
        sync_pb2.GetSyncStatusRequest(facility_code=SIGNED_FACILITY, delivery_ids=[checkin_id, withdrawal_id])
    )
    assert {(receipt.delivery_id, receipt.kind) for receipt in status.receipts} == {
        (checkin_id, sync_pb2.DELIVERY_KIND_CLAIM_CHECKIN),
        (withdrawal_id, sync_pb2.DELIVERY_KIND_CLAIM_WITHDRAWAL),
    }
    assert all(receipt.transaction_id for receipt in status.receipts)
