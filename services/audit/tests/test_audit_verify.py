"""Unit tests of the offline verifier (emr_audit.verify) against exports shaped as ExportEvents
writes them: the header, then each signed checkpoint line before the events it covers, events with
their inclusion proofs, and events after the last checkpoint without one. Pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from emr_audit import merkle
from emr_audit.domain import (
    GENESIS_HASH,
    Action,
    AuditEvent,
    Checkpoint,
    FindingKind,
    Outcome,
    canonical_bytes,
    canonical_record,
    chain,
    checkpoint_record,
)
from emr_audit.signing import CheckpointSigner, load_public_key
from emr_audit.verify import (
    EXIT_INTACT,
    EXIT_TAMPERED,
    EXIT_UNPROVEN_TAIL,
    Verdict,
    report,
    verify_export,
)

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EVENTS = 12
# Checkpoint 1 signs 1..5, checkpoint 2 signs 6..9; 10..12 are the unproven tail.
CHECKPOINT_ENDS = (5, 9)


def synthetic(index: int) -> AuditEvent:
    return AuditEvent(
        event_id=f"verify-{index}",
        action=Action.READ,
        outcome=Outcome.SUCCESS,
        occurred_at=START + timedelta(seconds=index),
        actor_id=f"dr-{index % 3}",
        actor_facility_code="79001",
        source_service="records",
        operation="/emr.records.v1.ClinicalRecordsService/GetEncounter",
        patient_id=f"p-{index % 4}",
        resource_type="Encounter",
        resource_id=f"enc-{index}",
        purpose_of_use="TREATMENT",
        request_id="",
        trace_id="",
    ).received(START + timedelta(seconds=index, milliseconds=5))


def linked(count: int = EVENTS) -> list[AuditEvent]:
    return chain([synthetic(i) for i in range(count)], 1, GENESIS_HASH)


def export(events: Sequence[AuditEvent], signer: CheckpointSigner, ends: Sequence[int]) -> list[str]:
    """What ExportEvents writes for ``events`` with checkpoints ending at ``ends``."""
    lines: list[dict[str, Any]] = [{"kind": "export", "from_sequence": 1, "to_sequence": len(events)}]
    first = 1
    for index, end in enumerate(ends, start=1):
        covered = events[first - 1 : end]
        tree = merkle.MerkleTree([e.hash for e in covered])
        record = checkpoint_record(
            Checkpoint(index, first, end, tree.root(), covered[-1].hash, START, signer.key_id)
        )
        lines.append(
            {"kind": "checkpoint", **record, "signature": signer.sign(canonical_bytes(record)).hex()}
        )
        for offset, stored in enumerate(covered):
            proof = {
                "checkpoint": index,
                "leaf_index": offset,
                "tree_size": tree.size,
                "audit_path": [p.hex() for p in tree.path(offset)],
            }
            lines.append({**event_line(stored), "proof": proof})
        first = end + 1
    lines.extend(event_line(stored) for stored in events[first - 1 :])
    return [json.dumps(line) for line in lines]


def event_line(stored: AuditEvent) -> dict[str, Any]:
    return {
        "kind": "event",
        "sequence": stored.sequence,
        "event": canonical_record(stored),
        "previous_hash": stored.previous_hash.hex(),
        "hash": stored.hash.hex(),
    }


def position(lines: list[str], sequence: int) -> int:
    """Index of the line of event ``sequence``."""
    return next(
        i
        for i, text in enumerate(lines)
        if json.loads(text).get("sequence") == sequence and json.loads(text)["kind"] == "event"
    )


@pytest.fixture(scope="module")
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def public_key(signer: CheckpointSigner) -> Ed25519PublicKey:
    return load_public_key(signer.public_key_pem.encode())


@pytest.fixture
def lines(signer: CheckpointSigner) -> list[str]:
    return export(linked(), signer, CHECKPOINT_ENDS)


def tampered_at(
    verdict: Verdict,
    sequence: int,
    problem: str,
    kind: FindingKind,
    missing_through: int | None = None,
) -> None:
    """The verdict names ``sequence`` first, of ``kind``; missing events name their whole stretch
    ``sequence``..``missing_through``, and the printed report says the same."""
    assert verdict.status == "TAMPERED"
    assert verdict.finding is not None
    assert verdict.finding.sequence == sequence, verdict.finding
    assert problem in verdict.finding.problem, verdict.finding
    assert verdict.finding.kind is kind, verdict.finding
    printed, code = report(verdict)
    assert code == EXIT_TAMPERED
    assert printed[0].startswith(f"TAMPERED at sequence {sequence}: ")
    expected = f"finding: kind={kind.value} first_bad_sequence={sequence}"
    if kind is FindingKind.MISSING_EVENTS:
        assert missing_through is not None
        assert verdict.finding.missing_stretch == (sequence, missing_through)
        expected += f" missing_from_sequence={sequence} missing_through_sequence={missing_through}"
    else:
        assert missing_through is None and verdict.finding.missing_stretch is None
    assert printed[1] == expected


def test_intact_export_with_an_unproven_tail_says_so(lines: list[str], public_key: Ed25519PublicKey) -> None:
    verdict = verify_export(lines, public_key)
    assert verdict.finding is None and verdict.status == "UNPROVEN"
    assert (verdict.events, verdict.proven, verdict.checkpoints, verdict.signed_through) == (12, 9, 2, 9)
    assert verdict.unproven == range(10, 13)
    printed, code = report(verdict)
    assert code == EXIT_UNPROVEN_TAIL
    assert printed[0] == "INTACT through sequence 9: 12 events, 9 proven by 2 signed checkpoints"
    assert printed[1].startswith("UNPROVEN: sequences 10..12 (3 events) follow the last signed checkpoint")


def test_fully_checkpointed_export_is_intact(signer: CheckpointSigner, public_key: Ed25519PublicKey) -> None:
    verdict = verify_export(export(linked(), signer, (5, 12)), public_key)
    assert verdict.status == "INTACT" and not verdict.unproven
    assert report(verdict) == (["INTACT: 12 events, 12 proven by 2 signed checkpoints"], EXIT_INTACT)


def test_export_without_any_checkpoint_is_all_unproven(
    signer: CheckpointSigner, public_key: Ed25519PublicKey
) -> None:
    verdict = verify_export(export(linked(), signer, ()), public_key)
    assert verdict.status == "UNPROVEN" and verdict.unproven == range(1, 13)
    printed, code = report(verdict)
    assert code == EXIT_UNPROVEN_TAIL and len(printed) == 1
    assert printed[0].startswith("UNPROVEN: sequences 1..12 (12 events)")


@pytest.mark.parametrize("sequence", [3, 7, 11])
def test_edited_event_is_named(sequence: int, lines: list[str], public_key: Ed25519PublicKey) -> None:
    at = position(lines, sequence)
    edited = json.loads(lines[at])
    edited["event"]["actor_id"] = "dr-innocent"
    lines[at] = json.dumps(edited)
    tampered_at(
        verify_export(lines, public_key), sequence, "stored hash does not match", FindingKind.ALTERED_EVENT
    )


@pytest.mark.parametrize("sequence", [1, 3, 6, 7, 10, 11])
def test_deleted_event_is_named(sequence: int, lines: list[str], public_key: Ed25519PublicKey) -> None:
    del lines[position(lines, sequence)]
    tampered_at(
        verify_export(lines, public_key),
        sequence,
        f"event {sequence} is missing (next stored is {sequence + 1})",
        FindingKind.MISSING_EVENTS,
        missing_through=sequence,
    )


@pytest.mark.parametrize(
    ("first", "through"),
    [(2, 4), (1, 5), (6, 8), (4, 7), (10, 11)],
    ids=["inside-checkpoint-1", "all-of-checkpoint-1", "inside-checkpoint-2", "across-checkpoints", "tail"],
)
def test_deleted_stretch_is_named_from_first_to_last(
    first: int, through: int, lines: list[str], public_key: Ed25519PublicKey
) -> None:
    """Event lines first..through are cut out (a checkpoint line among them stays, as a cut of
    event lines leaves it); the next event follows."""
    kept = [
        text
        for text in lines
        if not (json.loads(text)["kind"] == "event" and first <= json.loads(text)["sequence"] <= through)
    ]
    tampered_at(
        verify_export(kept, public_key),
        first,
        f"events {first}..{through} are missing (next stored is {through + 1})",
        FindingKind.MISSING_EVENTS,
        missing_through=through,
    )


@pytest.mark.parametrize("sequence", [2, 7, 10])
def test_two_swapped_event_lines_are_named(
    sequence: int, lines: list[str], public_key: Ed25519PublicKey
) -> None:
    at, after = position(lines, sequence), position(lines, sequence + 1)
    lines[at], lines[after] = lines[after], lines[at]
    tampered_at(
        verify_export(lines, public_key),
        sequence,
        f"event {sequence} is out of order",
        FindingKind.ALTERED_EVENT,
    )


@pytest.mark.parametrize("sequence", [2, 7, 10])
def test_two_swapped_events_renumbered_in_place_are_named(
    sequence: int, lines: list[str], public_key: Ed25519PublicKey
) -> None:
    """The two events trade places in the log, each taking the other's sequence number."""
    at, after = position(lines, sequence), position(lines, sequence + 1)
    first, second = json.loads(lines[at]), json.loads(lines[after])
    first["event"], second["event"] = (
        {**second["event"], "sequence": sequence},
        {**first["event"], "sequence": sequence + 1},
    )
    lines[at], lines[after] = json.dumps(first), json.dumps(second)
    tampered_at(
        verify_export(lines, public_key), sequence, "stored hash does not match", FindingKind.ALTERED_EVENT
    )


@pytest.mark.parametrize(("kept_through", "checkpoint"), [(0, 1), (3, 1), (7, 2), (8, 2)])
def test_cut_inside_a_signed_checkpoint_is_detected(
    kept_through: int, checkpoint: int, lines: list[str], public_key: Ed25519PublicKey
) -> None:
    """The checkpoint's line comes before its events, so it survives the cut and commits to the rest."""
    end = position(lines, kept_through + 1)
    assert json.loads(lines[end - 1])["kind"] in {"event", "checkpoint"}
    verdict = verify_export(lines[:end], public_key)
    last = CHECKPOINT_ENDS[checkpoint - 1]
    stretch = f"events {kept_through + 1}..{last}" if kept_through + 1 < last else f"event {last}"
    tampered_at(
        verdict,
        kept_through + 1,
        f"{stretch} {'are' if kept_through + 1 < last else 'is'} missing",
        FindingKind.MISSING_EVENTS,
        missing_through=last,
    )


@pytest.mark.parametrize("kept_through", [5, 9, 10, 11])
def test_cut_after_the_signed_range_is_reported_as_a_short_unproven_tail(
    kept_through: int, lines: list[str], public_key: Ed25519PublicKey
) -> None:
    """Cut at a checkpoint boundary (the next checkpoint's line goes too) or inside the tail: the
    header still states the whole range, so the cut is named, never reported INTACT."""
    cut = lines[: position(lines, kept_through) + 1]
    verdict = verify_export(cut, public_key)
    stretch = f"events {kept_through + 1}..12 are" if kept_through < 11 else "event 12 is"
    signed_through = 5 if kept_through == 5 else 9  # a cut at 5 takes checkpoint 2's line too
    tampered_at(
        verdict,
        kept_through + 1,
        f"{stretch} missing: the unproven tail after the last signed checkpoint (through {signed_through})",
        FindingKind.MISSING_EVENTS,
        missing_through=12,
    )


def test_stripped_proof_inside_a_signed_range_is_named(
    lines: list[str], public_key: Ed25519PublicKey
) -> None:
    at = position(lines, 4)
    stripped = json.loads(lines[at])
    del stripped["proof"]
    lines[at] = json.dumps(stripped)
    tampered_at(
        verify_export(lines, public_key),
        4,
        "carries no inclusion proof though checkpoint 1",
        FindingKind.CHECKPOINT_MISMATCH,
    )


def test_event_beyond_the_stated_range_is_named(lines: list[str], public_key: Ed25519PublicKey) -> None:
    header = json.loads(lines[0])
    lines[0] = json.dumps({**header, "to_sequence": 11})
    tampered_at(
        verify_export(lines, public_key), 12, "outside the stated range 1..11", FindingKind.ALTERED_EVENT
    )


def test_consistently_rewritten_signed_event_is_a_checkpoint_mismatch(
    lines: list[str], public_key: Ed25519PublicKey
) -> None:
    """Event 7 edited and every hash from it on recomputed: the chain holds, the signed proof does not."""
    events = linked()
    rewritten = chain([replace(e, actor_id="dr-innocent") for e in events[6:]], 7, events[5].hash)
    forged = {e.sequence: e for e in rewritten}
    for sequence, stored in forged.items():
        at = position(lines, sequence)
        line = json.loads(lines[at])
        lines[at] = json.dumps({**line, **event_line(stored)})
    tampered_at(
        verify_export(lines, public_key), 7, "not included in checkpoint 2", FindingKind.CHECKPOINT_MISMATCH
    )


def test_checkpoint_signed_by_another_key_is_a_bad_signature(
    lines: list[str], public_key: Ed25519PublicKey
) -> None:
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    at = next(i for i, text in enumerate(lines) if json.loads(text)["kind"] == "checkpoint")
    checkpoint = json.loads(lines[at])
    record = {name: checkpoint[name] for name in checkpoint if name not in {"kind", "signature"}}
    lines[at] = json.dumps({**checkpoint, "signature": other.sign(canonical_bytes(record)).hex()})
    tampered_at(
        verify_export(lines, public_key),
        1,
        "checkpoint 1 is not signed by this key",
        FindingKind.BAD_SIGNATURE,
    )


def test_bad_input_is_refused(public_key: Ed25519PublicKey, lines: list[str]) -> None:
    with pytest.raises(ValueError, match="no export header"):
        verify_export([], public_key)
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        verify_export([lines[0], "{"], public_key)
    with pytest.raises(ValueError, match="a second export header"):
        verify_export([lines[0], lines[0]], public_key)
