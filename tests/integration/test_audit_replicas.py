"""Two audit replicas appending concurrently under load keep one chain: every position 1..N taken
exactly once, every event stored once, each event linked to the one before; checkpoints and
inclusion proofs verify offline with the public key alone."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emr.audit.v1 import audit_pb2, audit_pb2_grpc

from emr_audit import merkle
from emr_audit.signing import load_public_key, signature_valid

CALLERS_PER_REPLICA = 6
CALLS_PER_CALLER = 10
EVENTS_PER_CALL = 3


def synthetic_event(event_id: str) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        event_id=event_id,
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        source_service="load-test",
        actor_id="dr-load",
        actor_facility_code="79001",
        patient_id=f"patient-{event_id[-2:]}",
        resource_type="Patient",
        operation="/emr.identity.v1.PatientIdentityService/GetPatient",
    )
    event.occurred_time.FromDatetime(datetime.now(UTC))
    return event


async def test_two_replicas_under_load_keep_one_chain_without_gaps_or_forks(
    service_instance: Any, audit_database: str, open_channel: Any, mongo: Any, tools: Any
) -> None:
    env = tools.audit_env(audit_database, every_events=50, interval_seconds=0.5)
    replicas = [service_instance("audit", env), service_instance("audit", env)]
    stubs = [audit_pb2_grpc.AuditServiceStub(open_channel(r.target)) for r in replicas]
    sent: set[str] = set()

    async def caller(stub: Any, caller_index: int) -> None:
        for call in range(CALLS_PER_CALLER):
            ids = [f"load-{caller_index}-{call}-{n}-{uuid.uuid4().hex[:4]}" for n in range(EVENTS_PER_CALL)]
            sent.update(ids)
            response = await stub.AppendEvents(
                audit_pb2.AppendEventsRequest(events=[synthetic_event(i) for i in ids])
            )
            assert len(response.sequences) == EVENTS_PER_CALL

    # A replayed spool sends the same events to whichever replica answers: both get these.
    duplicated = [synthetic_event(f"both-{n}-{uuid.uuid4().hex[:4]}") for n in range(20)]
    sent.update(e.event_id for e in duplicated)

    async def send_to_both() -> list[list[int]]:
        return [
            list((await stub.AppendEvents(audit_pb2.AppendEventsRequest(events=duplicated))).sequences)
            for stub in stubs
        ]

    both = asyncio.create_task(send_to_both())
    await asyncio.gather(*(caller(stub, index) for index, stub in enumerate(stubs * CALLERS_PER_REPLICA)))
    first_answer, second_answer = await both
    assert first_answer == second_answer  # the same event keeps its one position

    documents = (
        await mongo[audit_database]["events"]
        .find({}, {"_id": 1, "event_id": 1, "previous_hash": 1, "hash": 1})
        .sort("_id", 1)
        .to_list(None)
    )
    total = len(sent)
    assert total == 2 * CALLERS_PER_REPLICA * CALLS_PER_CALLER * EVENTS_PER_CALL + len(duplicated)
    assert [d["_id"] for d in documents] == list(range(1, total + 1))  # no gaps, no doubles
    assert sorted(d["event_id"] for d in documents) == sorted(sent)  # each event once
    assert documents[0]["previous_hash"] == bytes(32)
    # No fork: each link names the hash of the event before it.
    assert all(later["previous_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(documents))

    for stub in stubs:
        verdict = await stub.VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
        assert verdict.intact, verdict.problem
        assert verdict.checked_events == total

    # Checkpoints, written by whichever replica got there first, cover the log without gaps.
    await tools.checkpointed_through(stubs[0], total)
    checkpoints = await mongo[audit_database]["checkpoints"].find().sort("_id", 1).to_list(None)
    assert [c["_id"] for c in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert checkpoints[0]["first_sequence"] == 1
    assert all(b["first_sequence"] == a["last_sequence"] + 1 for a, b in itertools.pairwise(checkpoints))
    verdict = await stubs[1].VerifyIntegrity(audit_pb2.VerifyIntegrityRequest())
    assert verdict.intact and verdict.checked_checkpoints == len(checkpoints)


async def test_inclusion_proof_and_export_verify_offline_with_the_public_key_alone(
    service_instance: Any, audit_database: str, open_channel: Any, tools: Any, tmp_path: Path
) -> None:
    replica = service_instance(
        "audit", tools.audit_env(audit_database, every_events=16, interval_seconds=0.5)
    )
    stub = audit_pb2_grpc.AuditServiceStub(open_channel(replica.target))
    for batch in range(5):
        await stub.AppendEvents(
            audit_pb2.AppendEventsRequest(
                events=[synthetic_event(f"proof-{batch}-{n:02d}") for n in range(10)]
            )
        )
    await tools.checkpointed_through(stub, 50)
    key = await stub.GetPublicKey(audit_pb2.GetPublicKeyRequest())
    public_key = load_public_key(key.public_key_pem.encode())
    assert key.algorithm == "Ed25519" and len(key.public_key) == 32

    for sequence in (1, 17, 33, 50):
        proof = await stub.GetInclusionProof(audit_pb2.GetInclusionProofRequest(sequence=sequence))
        checkpoint = proof.checkpoint
        assert signature_valid(public_key, checkpoint.signed_payload, checkpoint.signature)
        assert checkpoint.key_id == key.key_id
        assert checkpoint.first_sequence <= sequence <= checkpoint.last_sequence
        assert merkle.verify_inclusion(
            proof.leaf_index,
            proof.tree_size,
            proof.event.hash,
            list(proof.audit_path),
            checkpoint.merkle_root,
        )
        assert not merkle.verify_inclusion(
            proof.leaf_index, proof.tree_size, bytes(32), list(proof.audit_path), checkpoint.merkle_root
        )

    lines = [
        line async for chunk in stub.ExportEvents(audit_pb2.ExportEventsRequest()) for line in chunk.lines
    ]
    export = tmp_path / "audit.jsonl"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    key_file = tmp_path / "audit-key.pem"
    key_file.write_text(key.public_key_pem)
    verify = [sys.executable, "-m", "emr_audit.verify", "--public-key", str(key_file), str(export)]

    intact = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)  # noqa: ASYNC221
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert intact.stdout.startswith("INTACT: 50 events, 50 proven by")

    tampered_lines = [
        line.replace('"outcome":"success"', '"outcome":"client_failure"', 1)
        if '"sequence":23,' in line
        else line
        for line in lines
    ]
    assert tampered_lines != lines
    export.write_text("\n".join(tampered_lines) + "\n", encoding="utf-8")
    tampered = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)  # noqa: ASYNC221
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert tampered.stdout.startswith("TAMPERED at sequence 23:")
