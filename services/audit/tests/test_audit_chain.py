"""Unit tests of chaining, tamper detection, Merkle proofs, checkpoints and the offline verifier
(pure, no I/O)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from emr.audit.v1 import audit_pb2

from emr_audit import converters, merkle
from emr_audit.domain import (
    GENESIS_HASH,
    Action,
    Agent,
    AgentType,
    AuditEvent,
    ChainVerifier,
    Checkpoint,
    Entity,
    EntityRole,
    Finding,
    FindingKind,
    Outcome,
    canonical_bytes,
    canonical_record,
    chain,
    checkpoint_due,
    checkpoint_record,
    missing_events,
    summarize_accesses,
    validate_events,
)
from emr_audit.service import IntegrityReport
from emr_audit.signing import CheckpointSigner, load_public_key
from emr_audit.verify import verify_export
from emr_runtime.errors import InvalidArgumentError

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def event(index: int, **changes: Any) -> AuditEvent:
    base = AuditEvent(
        event_id=f"evt-{index}",
        action=Action.READ,
        outcome=Outcome.SUCCESS,
        occurred_at=START + timedelta(seconds=index),
        actor_id=f"dr-{index % 3}",
        actor_facility_code="79001",
        source_service="identity",
        operation="/emr.identity.v1.PatientIdentityService/GetPatient",
        patient_id="p-1",
        resource_type="Patient",
        resource_id="p-1",
        purpose_of_use="TREATMENT",
        request_id="",
        trace_id="",
        agents=(Agent(AgentType.USER, f"dr-{index % 3}", role="physician", requestor=True),),
        entities=(Entity(EntityRole.PATIENT, patient_id="p-1", resource_type="Patient"),),
    )
    return replace(base, **changes).received(START + timedelta(seconds=index, milliseconds=5))


def linked(count: int) -> list[AuditEvent]:
    return chain([event(i) for i in range(count)], 1, GENESIS_HASH)


def check(
    events: list[AuditEvent], expected_first: int = 1, last_expected: int | None = None
) -> Finding | None:
    verifier = ChainVerifier(expected_sequence=expected_first)
    for stored in events:
        if not verifier.feed(
            stored.sequence, canonical_bytes(canonical_record(stored)), stored.previous_hash, stored.hash
        ):
            break
    return verifier.finish(last_expected)


def test_chain_numbers_and_links_events() -> None:
    events = linked(5)
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert events[0].previous_hash == GENESIS_HASH
    assert all(later.previous_hash == earlier.hash for earlier, later in itertools.pairwise(events))
    assert len({e.hash for e in events}) == 5
    assert check(events, last_expected=5) is None


def test_continuing_a_chain_equals_chaining_at_once() -> None:
    events = [event(i) for i in range(6)]
    at_once = chain(events, 1, GENESIS_HASH)
    in_two = chain(events[:2], 1, GENESIS_HASH)
    in_two += chain(events[2:], 3, in_two[-1].hash)
    assert in_two == at_once


def test_canonical_bytes_are_stable_and_cover_every_field() -> None:
    stored = linked(1)[0]
    record = canonical_record(stored)
    assert canonical_bytes(record) == canonical_bytes(json.loads(json.dumps(record)))
    for name in ("actor_id", "purpose_of_use", "operation", "request_id"):
        changes: dict[str, Any] = {name: "changed"}
        assert canonical_record(replace(stored, **changes)) != record


def test_edit_is_found_at_the_edited_event() -> None:
    events = linked(6)
    events[3] = replace(events[3], actor_id="someone-else")
    assert check(events) == Finding(
        4, "stored hash does not match the event's content", FindingKind.ALTERED_EVENT
    )


def test_edit_with_recomputed_hash_is_found_at_the_edited_event() -> None:
    events = linked(6)
    forged = replace(events[3], purpose_of_use="RESEARCH")
    events[3] = replace(forged, hash=chain([forged], 4, forged.previous_hash)[0].hash)
    assert check(events) == Finding(
        4, "event was rewritten: the next event links to another hash", FindingKind.ALTERED_EVENT
    )


def test_delete_is_found_at_the_missing_sequence() -> None:
    events = linked(6)
    del events[2]
    assert check(events) == Finding(
        3, "event 3 is missing (next stored is 4)", FindingKind.MISSING_EVENTS, missing_through=3
    )


def test_deleted_stretch_is_named_from_its_first_to_its_last_sequence() -> None:
    events = linked(12)
    del events[4:9]  # sequences 5..9
    finding = check(events)
    assert finding == Finding(
        5, "events 5..9 are missing (next stored is 10)", FindingKind.MISSING_EVENTS, missing_through=9
    )
    assert finding.missing_stretch == (5, 9)


def test_deleted_stretch_is_named_when_checking_starts_inside_the_log() -> None:
    events = linked(12)
    finding = check([*events[5:7], *events[10:]], expected_first=6)
    assert finding is not None and finding.missing_stretch == (8, 10)
    assert finding.problem == "events 8..10 are missing (next stored is 11)"


def test_deleted_tail_is_found_when_more_events_are_expected() -> None:
    events = linked(6)
    assert check(events[:4], last_expected=6) == Finding(
        5, "events 5..6 are missing", FindingKind.MISSING_EVENTS, missing_through=6
    )


def test_a_single_missing_last_event_is_named_in_the_singular() -> None:
    events = linked(6)
    finding = check(events[:5], last_expected=6)
    assert finding is not None and finding.problem == "event 6 is missing"
    assert finding.missing_stretch == (6, 6)


def test_only_missing_events_have_a_stretch() -> None:
    events = linked(6)
    events[1] = replace(events[1], actor_id="someone-else")
    finding = check(events)
    assert finding is not None and finding.kind is FindingKind.ALTERED_EVENT
    assert finding.missing_stretch is None and finding.missing_through == 0


def test_an_event_numbered_below_the_expected_one_is_altered_not_missing() -> None:
    events = linked(6)
    finding = check([*events[:3], events[1], *events[3:]])
    assert finding == Finding(4, "event 2 is out of order (expected 4)", FindingKind.ALTERED_EVENT)


def test_inserted_event_is_found() -> None:
    events = linked(6)
    intruder = chain([event(99)], 4, events[2].hash)[0]  # a well-formed event at position 4
    events = [*events[:3], intruder, *[replace(e, sequence=e.sequence + 1) for e in events[3:]]]
    finding = check(events)
    assert finding is not None and finding.sequence in (4, 5)


def test_reorder_is_found() -> None:
    events = linked(6)
    events[2], events[3] = replace(events[3], sequence=3), replace(events[2], sequence=4)
    assert check(events) == Finding(
        3, "stored hash does not match the event's content", FindingKind.ALTERED_EVENT
    )


def test_first_event_must_start_from_genesis() -> None:
    events = chain([event(0)], 1, b"\x01" * 32)
    assert check(events) == Finding(1, "the first event does not start the chain", FindingKind.ALTERED_EVENT)


@pytest.mark.parametrize("size", [*range(1, 18), 31, 32, 33, 100])
def test_every_inclusion_proof_verifies_and_no_other(size: int) -> None:
    leaves = [bytes([i % 256]) * 32 for i in range(size)]
    tree = merkle.MerkleTree(leaves)
    root = tree.root()
    assert root == merkle.tree_root(leaves)
    for index in range(size):
        path = tree.path(index)
        assert merkle.verify_inclusion(index, size, leaves[index], path, root)
        assert not merkle.verify_inclusion(index, size, b"\xff" * 32, path, root)
        if size > 1:
            assert not merkle.verify_inclusion((index + 1) % size, size, leaves[index], path, root)


def test_merkle_root_matches_rfc_9162_structure() -> None:
    a, b, c = b"a", b"b", b"c"
    leaf = merkle.leaf_hash
    expected = merkle.node_hash(merkle.node_hash(leaf(a), leaf(b)), leaf(c))
    assert merkle.tree_root([a, b, c]) == expected
    assert merkle.tree_root([a]) == leaf(a)


@pytest.mark.parametrize(
    ("last", "covered", "seconds", "due"),
    [(10, 0, 0.0, True), (9, 0, 0.0, False), (9, 0, 5.0, True), (5, 5, 99.0, False), (0, 0, 99.0, False)],
)
def test_checkpoint_is_due_after_n_events_or_t_seconds(
    last: int, covered: int, seconds: float, due: bool
) -> None:
    assert checkpoint_due(last, covered, seconds, every_events=10, every_seconds=5.0) is due


def test_access_summary_groups_by_role_facility_and_kind_of_data_without_names() -> None:
    events = [event(i) for i in range(4)] + [
        event(10, actor_id="service:records", agents=(), actor_facility_code="", resource_type="Encounter")
    ]
    summaries = summarize_accesses(events)
    assert [(s.accessor_role, s.facility_code, s.resource_type, s.access_count) for s in summaries] == [
        ("physician", "79001", "Patient", 4),
        ("service", "", "Encounter", 1),
    ]
    assert summaries[0].first_at == START and summaries[0].last_at == START + timedelta(seconds=3)


def test_free_text_in_agents_and_entities_is_refused() -> None:
    bad = event(0, agents=(Agent(AgentType.USER, "dr-1", role="Nguyễn Văn A"),))
    bad = replace(bad, subtype=None, event_type=None, recorded_at=None)
    with pytest.raises(InvalidArgumentError) as caught:
        validate_events(
            [bad, replace(bad, agents=(), entities=(Entity(EntityRole.PATIENT, patient_id="có dấu"),))]
        )
    assert [v.field for v in caught.value.violations] == [
        "events[0].agents[0].role",
        "events[1].entities[0].patient_id",
    ]


# --- the offline verifier --------------------------------------------------------------------------


def export_lines(events: list[AuditEvent], signer: CheckpointSigner, checkpointed: int) -> list[str]:
    covered = events[:checkpointed]
    tree = merkle.MerkleTree([e.hash for e in covered])
    checkpoint = Checkpoint(1, 1, checkpointed, tree.root(), covered[-1].hash, START, signer.key_id)
    record = checkpoint_record(checkpoint)
    lines = [
        {"kind": "export", "from_sequence": 1, "to_sequence": len(events)},
        {"kind": "checkpoint", **record, "signature": signer.sign(canonical_bytes(record)).hex()},
    ]
    for stored in events:
        line: dict[str, Any] = {
            "kind": "event",
            "sequence": stored.sequence,
            "event": canonical_record(stored),
            "previous_hash": stored.previous_hash.hex(),
            "hash": stored.hash.hex(),
        }
        if stored.sequence <= checkpointed:
            index = stored.sequence - 1
            path = [p.hex() for p in tree.path(index)]
            line["proof"] = {
                "checkpoint": 1,
                "leaf_index": index,
                "tree_size": checkpointed,
                "audit_path": path,
            }
        lines.append(line)
    return [json.dumps(line) for line in lines]


@pytest.fixture(scope="module")
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate())


def test_intact_export_verifies(signer: CheckpointSigner) -> None:
    verdict = verify_export(export_lines(linked(9), signer, 7), signer_public(signer))
    assert verdict.finding is None
    assert (verdict.events, verdict.proven, verdict.checkpoints) == (9, 7, 1)


def signer_public(signer: CheckpointSigner) -> Any:
    return load_public_key(signer.public_key_pem.encode())


def test_export_with_an_edited_event_fails_at_that_sequence(signer: CheckpointSigner) -> None:
    lines = export_lines(linked(9), signer, 7)
    edited = json.loads(lines[5])  # header, checkpoint, then event 1: this is event 4
    edited["event"]["purpose_of_use"] = "MARKETING"
    lines[5] = json.dumps(edited)
    verdict = verify_export(lines, signer_public(signer))
    assert verdict.finding is not None and verdict.finding.sequence == 4
    assert verdict.finding.kind is FindingKind.ALTERED_EVENT


def test_export_with_a_consistently_rewritten_event_fails_its_proof(signer: CheckpointSigner) -> None:
    events = linked(9)
    rewritten = chain([replace(e, purpose_of_use="MARKETING") for e in events[3:]], 4, events[2].hash)
    verdict = verify_export(
        export_lines(events, signer, 7)[:5] + export_lines([*events[:3], *rewritten], signer, 7)[5:],
        signer_public(signer),
    )
    assert verdict.finding is not None and verdict.finding.sequence == 4
    assert verdict.finding.kind is FindingKind.CHECKPOINT_MISMATCH


def test_export_signed_by_another_key_fails(signer: CheckpointSigner) -> None:
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    verdict = verify_export(export_lines(linked(4), other, 4), signer_public(signer))
    assert verdict.finding is not None and "not signed by this key" in verdict.finding.problem
    assert verdict.finding.kind is FindingKind.BAD_SIGNATURE


def test_export_missing_an_event_fails(signer: CheckpointSigner) -> None:
    lines = export_lines(linked(6), signer, 6)
    del lines[4]  # event 3
    verdict = verify_export(lines, signer_public(signer))
    assert verdict.finding is not None and verdict.finding.sequence == 3
    assert verdict.finding.missing_stretch == (3, 3)


def test_verify_integrity_answer_names_the_kind_and_the_missing_stretch() -> None:
    hole = converters.integrity_message(
        IntegrityReport(missing_events(899, 996, " (next stored is 997)"), 898, 4)
    )
    assert (hole.intact, hole.first_bad_sequence, hole.checked_events, hole.checked_checkpoints) == (
        False,
        899,
        898,
        4,
    )
    assert hole.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_MISSING_EVENTS
    assert (hole.missing_from_sequence, hole.missing_through_sequence) == (899, 996)
    assert hole.problem == "events 899..996 are missing (next stored is 997)"

    edited = converters.integrity_message(
        IntegrityReport(Finding(12, "stored hash does not match", FindingKind.ALTERED_EVENT), 11, 1)
    )
    assert edited.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_ALTERED_EVENT
    assert (edited.missing_from_sequence, edited.missing_through_sequence) == (0, 0)

    intact = converters.integrity_message(IntegrityReport(None, 30, 2))
    assert intact.intact and intact.finding_kind == audit_pb2.INTEGRITY_FINDING_KIND_UNSPECIFIED
    assert (intact.first_bad_sequence, intact.problem, intact.missing_through_sequence) == (0, "", 0)


@pytest.mark.parametrize("kind", list(FindingKind))
def test_every_finding_kind_has_an_answer_kind(kind: FindingKind) -> None:
    answer = converters.integrity_message(IntegrityReport(Finding(3, "problem", kind, 3), 2, 0))
    assert answer.finding_kind != audit_pb2.INTEGRITY_FINDING_KIND_UNSPECIFIED
