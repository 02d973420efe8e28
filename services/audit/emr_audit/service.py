"""Audit use cases: append to the chain, checkpoint, prove, verify, query, report, export."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge

from emr_audit import merkle
from emr_audit.domain import (
    GENESIS_HASH,
    AccessSummary,
    AuditEvent,
    ChainVerifier,
    Checkpoint,
    EventFilter,
    Finding,
    FindingKind,
    NotCheckpointedError,
    Refusal,
    altered,
    canonical_bytes,
    canonical_record,
    chain,
    checkpoint_due,
    checkpoint_record,
    first_finding,
    missing_events,
    refusal_of,
    summarize_accesses,
    validate_events,
)
from emr_audit.repository import AuditRepository
from emr_audit.signing import CheckpointSigner, load_public_key, signature_valid
from emr_runtime.clock import utc_now
from emr_runtime.errors import FieldViolation, InvalidArgumentError, NotFoundError, Violations
from emr_runtime.keys import page_token_purpose
from emr_runtime.paging import PageTokens, page_size, position_int

log = logging.getLogger("emr.audit.log")

CHAIN_HEIGHT = Gauge(
    "emr_audit_chain_height", "Sequence of the last event in the hash chain, as this replica knows it."
)
CHECKPOINTED_HEIGHT = Gauge("emr_audit_checkpointed_height", "Last sequence covered by a signed checkpoint.")
LAST_CHECKPOINT_TIMESTAMP = Gauge(
    "emr_audit_last_checkpoint_timestamp_seconds", "Unix time the latest checkpoint was signed (0: none yet)."
)
INTEGRITY_FAILURES = Counter(
    "emr_audit_integrity_failures_total",
    "Integrity verifications (VerifyIntegrity or the periodic check) that found a problem, by its kind.",
    ["kind"],
)
INTEGRITY_FINDINGS = Gauge(
    "emr_audit_integrity_findings",
    "1 while the periodic integrity check of this replica finds a problem of this kind, else 0.",
    ["kind"],
)
INTEGRITY_VERIFIED_HEIGHT = Gauge(
    "emr_audit_integrity_verified_height",
    "Last sequence the periodic integrity check found intact, linked and present.",
)
for _kind in FindingKind:
    INTEGRITY_FINDINGS.labels(kind=_kind.value)
    INTEGRITY_FAILURES.labels(kind=_kind.value)

# A checkpoint covers at most this many events, so that a proof never reads an unbounded range.
MAX_CHECKPOINT_EVENTS = 10_000
# The patient access report summarizes at most this many accesses of one period.
MAX_REPORT_EVENTS = 20_000
EXPORT_CHUNK_LINES = 200
# The periodic integrity check reads at most this many new events a round (a backlog takes a few).
INTEGRITY_EVENTS_PER_ROUND = MAX_CHECKPOINT_EVENTS
# How long a writer that lost a position waits for the winner's tip hint before probing the log.
HINT_WAITS = 5
HINT_WAIT_SECONDS = 0.002


@dataclass
class _Pending:
    events: list[AuditEvent]
    done: asyncio.Future[dict[str, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True)
class IntegrityReport:
    finding: Finding | None
    checked_events: int
    checked_checkpoints: int


@dataclass(frozen=True)
class InclusionProof:
    event: AuditEvent
    checkpoint: Checkpoint
    leaf_index: int
    tree_size: int
    audit_path: list[bytes]


class AuditLog:
    """The log of one replica. Appends from concurrent calls are grouped: one writer at a time
    links everything waiting (group commit), so a replica pays one round trip per group."""

    def __init__(self, repository: AuditRepository, signer: CheckpointSigner) -> None:
        self._repository = repository
        self._signer = signer
        self._public_key = load_public_key(signer.public_key_pem.encode())
        # Audit holds no field keys: its page tokens are keyed from the checkpoint key, which every
        # replica shares and which lives as long as the log.
        self._page_tokens = PageTokens(signer.derived_key(page_token_purpose("audit")))
        self._waiting: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._hint_writer: asyncio.Task[None] | None = None
        # (sequence, hash) of the last event this replica knows; None: read it from the database.
        self._tip: tuple[int, bytes] | None = None
        # The last link whose event_id (and every earlier one) is in event_ids: the hint stops there.
        self._indexed_tip: tuple[int, bytes] | None = None
        # The periodic integrity check: new events are verified from ``_verified_through`` on, and
        # one checkpoint's range a round is verified again (``_sweep_index``, round robin), so that
        # old events are re-checked over time without ever scanning the whole log in one round.
        self._verified_through: int | None = None
        self._sweep_index = 1

    @property
    def signer(self) -> CheckpointSigner:
        return self._signer

    # --- append ------------------------------------------------------------------------------------
    async def append(self, events: list[AuditEvent]) -> list[int]:
        validate_events(events)
        received = [event.received(utc_now()) for event in events]
        pending = _Pending(list({event.event_id: event for event in received}.values()))
        # A caller that gave up never reads its outcome; reading it here keeps asyncio quiet.
        pending.done.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._waiting.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a caller that gives up must not cancel the group its events were written with.
        sequences = await asyncio.shield(pending.done)
        return [sequences[event.event_id] for event in events]

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                sequences = await self._link(
                    list({e.event_id: e for pending in group for e in pending.events}.values())
                )
            except Exception as error:
                self._tip = None
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_exception(error)
                continue
            for pending in group:
                if not pending.done.done():
                    pending.done.set_result(sequences)
            # The hint only spares other replicas a search: nobody waits for it, and one update
            # in flight at a time carries the newest tip.
            if self._hint_writer is None or self._hint_writer.done():
                self._hint_writer = asyncio.create_task(self._advance_hint())

    async def _advance_hint(self) -> None:
        written: tuple[int, bytes] | None = None
        while self._indexed_tip is not None and self._indexed_tip != written:
            written = self._indexed_tip
            try:
                await self._repository.advance_tip_hint(*written)
            except Exception:
                log.warning("tip hint not advanced; other replicas will search a little longer")
                return

    async def _link(self, events: list[AuditEvent]) -> dict[str, int]:
        """Links events after the tip, one at a time in order, and returns their sequences. A
        position lost to another replica sends the rest after the winner; an event already stored
        keeps its sequence. What this call linked is indexed before the hint may move past it."""
        sequences: dict[str, int] = {}
        linked: list[tuple[str, int]] = []
        try:
            for event in events:
                sequences[event.event_id] = await self._link_one(event, linked)
        finally:
            # Best effort when the link failed: whoever steps past the hint indexes what is left.
            await self._repository.index_event_ids(linked)
        if linked and self._tip is not None and self._tip[0] == linked[-1][1]:
            self._indexed_tip = self._tip
        return sequences

    async def _link_one(self, event: AuditEvent, linked: list[tuple[str, int]]) -> int:
        while True:
            if self._tip is None:
                self._tip = await self._repository.tip_hint() or (0, GENESIS_HASH)
            last_sequence, last_hash = self._tip
            [link] = chain([event], last_sequence + 1, last_hash)
            if await self._repository.insert_link(link):
                self._tip = (link.sequence, link.hash)
                CHAIN_HEIGHT.set(link.sequence)
                linked.append((link.event_id, link.sequence))
                return link.sequence
            indexed = await self._repository.indexed_sequence(event.event_id)
            holder = None if indexed is not None else await self._repository.event_id_at(link.sequence)
            refusal = refusal_of(event.event_id, indexed, holder)
            if refusal is Refusal.ALREADY_STORED and indexed is not None:
                return indexed
            if refusal is Refusal.STORED_THERE:
                # An earlier attempt stored it and its answer was lost (the hash differs: received later).
                self._tip = await self._find_tip()
                return link.sequence
            if refusal is Refusal.POSITION_TAKEN:
                if not await self._catch_up(link.sequence):
                    self._tip = await self._find_tip()
                continue
            # UNINDEXED: stored past the hint by a writer that stopped before indexing it; stepping
            # from the hint indexes it. Before event_ids existed nothing was indexed: scan once.
            self._tip = await self._find_tip()
            stored = await self._repository.indexed_sequence(event.event_id)
            if stored is None:
                stored = await self._repository.scan_sequence_of(event.event_id)
                if stored is None:
                    raise RuntimeError("an event was refused as stored but is not in the log")
                log.warning("an event stored before the event_id index existed was looked up by a scan")
                await self._repository.index_event_ids([(event.event_id, stored)])
            return stored

    async def _catch_up(self, taken: int) -> bool:
        """Waits briefly for the writer that took position ``taken`` to advance the tip hint (it
        does so right after its insert) and continues from there. Reading the one small hint
        document is much cheaper than probing the log. False when the hint does not get there."""
        for attempt in range(HINT_WAITS):
            hint = await self._repository.tip_hint()
            if hint is not None and hint[0] >= taken:
                self._tip = hint
                return True
            await asyncio.sleep(HINT_WAIT_SECONDS * (attempt + 1))
        return False

    async def _find_tip(self) -> tuple[int, bytes]:
        """The last event: from the hint, stepping over (and indexing) events written since it was
        advanced, one ``_id`` lookup each."""
        sequence, digest = await self._repository.tip_hint() or (0, GENESIS_HASH)
        stepped: list[tuple[str, int]] = []
        while (following := await self._repository.link_at(sequence + 1)) is not None:
            sequence, digest = sequence + 1, following[1]
            stepped.append((following[0], sequence))
        await self._repository.index_event_ids(stepped)
        self._indexed_tip = (sequence, digest)
        return sequence, digest

    # --- checkpoints -------------------------------------------------------------------------------
    async def checkpoint_if_due(
        self, every_events: int, every_seconds: float, now: float
    ) -> Checkpoint | None:
        """Writes the next checkpoint when it is due; another replica writing it first is fine."""
        latest = await self._repository.latest_checkpoint()
        tip = await self._repository.tip_hint()
        _observe_checkpoint(latest)
        if tip is None:
            return None
        CHAIN_HEIGHT.set(max(tip[0], self._tip[0] if self._tip else 0))
        covered = latest.last_sequence if latest else 0
        since = (utc_now() - latest.created_at).total_seconds() if latest else now
        if not checkpoint_due(tip[0], covered, since, every_events, every_seconds):
            return None
        last = min(tip[0], covered + MAX_CHECKPOINT_EVENTS)
        hashes = await self._repository.hashes(covered + 1, last)
        leaves = [digest for _, digest in hashes]
        unsigned = Checkpoint(
            index=(latest.index if latest else 0) + 1,
            first_sequence=covered + 1,
            last_sequence=last,
            merkle_root=merkle.tree_root(leaves),
            chain_head_hash=leaves[-1],
            created_at=utc_now(),
            key_id=self._signer.key_id,
        )
        signed = replace(unsigned, signature=self._signer.sign(canonical_bytes(checkpoint_record(unsigned))))
        if not await self._repository.add_checkpoint(signed):
            return None
        _observe_checkpoint(signed)
        return signed

    async def run_checkpoints(self, every_events: int, every_seconds: float, poll_seconds: float) -> None:
        started = time.monotonic()
        while True:
            try:
                await self.checkpoint_if_due(every_events, every_seconds, time.monotonic() - started)
            except Exception:
                log.exception("checkpoint failed; retrying")
            await asyncio.sleep(poll_seconds)

    async def get_checkpoint(self, index: int) -> Checkpoint:
        if index < 0:
            raise InvalidArgumentError([FieldViolation("index", "must be 0 (latest) or positive")])
        found = await (self._repository.checkpoint(index) if index else self._repository.latest_checkpoint())
        if found is None:
            raise NotFoundError("Checkpoint", "index", str(index))
        return found

    async def inclusion_proof(self, sequence: int) -> InclusionProof:
        if sequence <= 0:
            raise InvalidArgumentError([FieldViolation("sequence", "must be positive")])
        event = await self._repository.get(sequence)
        if event is None:
            raise NotFoundError("AuditEvent", "sequence", str(sequence))
        checkpoint = await self._repository.checkpoint_covering(sequence)
        if checkpoint is None:
            raise NotCheckpointedError(sequence)
        hashes = await self._repository.hashes(checkpoint.first_sequence, checkpoint.last_sequence)
        tree = merkle.MerkleTree([digest for _, digest in hashes])
        index = sequence - checkpoint.first_sequence
        if index >= tree.size:
            raise NotCheckpointedError(
                sequence
            )  # the checkpointed range lost events: VerifyIntegrity says where
        return InclusionProof(event, checkpoint, index, tree.size, tree.path(index))

    # --- verification ------------------------------------------------------------------------------
    def _checkpoint_finding(
        self, checkpoint: Checkpoint, hashes: Sequence[tuple[int, bytes]]
    ) -> Finding | None:
        payload = canonical_bytes(checkpoint_record(checkpoint))
        if checkpoint.key_id != self._signer.key_id or not signature_valid(
            self._public_key, payload, checkpoint.signature
        ):
            return Finding(
                checkpoint.first_sequence,
                f"checkpoint {checkpoint.index} signature is invalid",
                FindingKind.BAD_SIGNATURE,
            )
        expected = range(checkpoint.first_sequence, checkpoint.last_sequence + 1)
        present = [sequence for sequence, _ in hashes]
        if present != list(expected):
            stored = set(present)
            missing = next(s for s in expected if s not in stored)
            through = next((s for s in range(missing, checkpoint.last_sequence + 1) if s in stored), None)
            last_missing = checkpoint.last_sequence if through is None else through - 1
            return missing_events(missing, last_missing, f" (signed by checkpoint {checkpoint.index})")
        if hashes[-1][1] != checkpoint.chain_head_hash:
            return Finding(
                checkpoint.first_sequence,
                f"checkpoint {checkpoint.index} chain head differs from the log",
                FindingKind.CHECKPOINT_MISMATCH,
            )
        if merkle.tree_root([digest for _, digest in hashes]) != checkpoint.merkle_root:
            return Finding(
                checkpoint.first_sequence,
                f"checkpoint {checkpoint.index} Merkle root differs from the log",
                FindingKind.CHECKPOINT_MISMATCH,
            )
        return None

    async def _verify_chain(self, first: int, last: int | None) -> ChainVerifier:
        """Feeds the stored events first..last (None: to the end) to a verifier, linked to the event
        before ``first``; stops at the first problem."""
        verifier = ChainVerifier(expected_sequence=first)
        if first > 1:
            verifier.last_hash = await self._repository.event_hash(first - 1)
        async for event in self._repository.scan(first, last):
            if event.action is None or event.outcome is None:
                verifier.finding = verifier.finding or altered(
                    event.sequence, "event has an unknown action or outcome"
                )
                break
            canonical = canonical_bytes(canonical_record(event))
            if not verifier.feed(event.sequence, canonical, event.previous_hash, event.hash):
                break
        return verifier

    async def verify(self, from_sequence: int, to_sequence: int) -> IntegrityReport:
        first, last = _sequence_range(from_sequence, to_sequence)
        verifier = await self._verify_chain(first, last)
        checkpoints = await self._repository.checkpoints_overlapping(first, last)
        findings: list[Finding | None] = []
        checked_checkpoints = 0
        for checkpoint in checkpoints:
            hashes = await self._repository.hashes(checkpoint.first_sequence, checkpoint.last_sequence)
            findings.append(self._checkpoint_finding(checkpoint, hashes))
            checked_checkpoints += 1
        # Events the checkpoints or the tip hint say exist must be there (a cut tail is tampering).
        hint = await self._repository.tip_hint()
        tail_end: int | None = max([c.last_sequence for c in checkpoints] + [hint[0] if hint else 0])
        if last is not None and tail_end is not None:
            tail_end = min(tail_end, last)
        # The chain pins the first bad event exactly; a checkpoint mismatch only bounds it.
        finding = verifier.finish(tail_end) or first_finding(findings)
        if finding is not None:
            INTEGRITY_FAILURES.labels(kind=finding.kind.value).inc()
        return IntegrityReport(finding, verifier.checked, checked_checkpoints)

    async def check_integrity_once(self, max_events: int = INTEGRITY_EVENTS_PER_ROUND) -> Finding | None:
        """One round of the periodic check: the events linked since the last round (at most
        ``max_events``), then the range of one checkpoint again. A finding keeps its place: the next
        round checks the same stretch again, so the finding stays until the log is repaired."""
        new_events = await self._check_new_events(max_events)
        swept = await self._sweep_one_checkpoint()
        finding = first_finding([new_events, swept])
        for kind in FindingKind:
            INTEGRITY_FINDINGS.labels(kind=kind.value).set(1 if finding and finding.kind is kind else 0)
        if finding is not None:
            INTEGRITY_FAILURES.labels(kind=finding.kind.value).inc()
        return finding

    async def _check_new_events(self, max_events: int) -> Finding | None:
        if self._verified_through is None:
            # After a start, from the latest checkpoint: older ranges are left to the sweep.
            latest = await self._repository.latest_checkpoint()
            self._verified_through = latest.first_sequence - 1 if latest else 0
        hint = await self._repository.tip_hint()
        first = self._verified_through + 1
        if hint is None or hint[0] < first:
            return None
        # Every event up to the tip hint exists: writers advance the hint only after inserting.
        last = min(hint[0], first + max_events - 1)
        verifier = await self._verify_chain(first, last)
        finding = verifier.finish(last)
        verified = verifier.expected_sequence - 1
        if finding is not None:
            verified = min(verified, finding.sequence - 1)
        self._verified_through = max(self._verified_through, verified)
        INTEGRITY_VERIFIED_HEIGHT.set(self._verified_through)
        return finding

    async def _sweep_one_checkpoint(self) -> Finding | None:
        checkpoint = await self._repository.checkpoint(self._sweep_index)
        if checkpoint is None and self._sweep_index > 1:
            self._sweep_index = 1  # past the newest checkpoint: start over from the oldest
            checkpoint = await self._repository.checkpoint(self._sweep_index)
        if checkpoint is None:
            return None
        verifier = await self._verify_chain(checkpoint.first_sequence, checkpoint.last_sequence)
        hashes = await self._repository.hashes(checkpoint.first_sequence, checkpoint.last_sequence)
        finding = verifier.finish(checkpoint.last_sequence) or self._checkpoint_finding(checkpoint, hashes)
        if finding is None:
            self._sweep_index += 1  # a finding keeps the sweep on this checkpoint until it is repaired
        return finding

    async def run_integrity_checks(self, interval_seconds: float) -> None:
        reported: Finding | None = None
        while True:
            try:
                finding = await self.check_integrity_once()
                if finding is not None and finding != reported:  # logged once, not every round
                    log.error(
                        "audit integrity check found a problem",
                        extra={
                            "kind": finding.kind.value,
                            "first_bad_sequence": finding.sequence,
                            "missing_through_sequence": finding.missing_through,
                            "problem": finding.problem,
                        },
                    )
                reported = finding
            except Exception:
                log.exception("integrity check failed; retrying")
            await asyncio.sleep(interval_seconds)

    # --- queries -----------------------------------------------------------------------------------
    async def query(
        self, selection: EventFilter, requested_page_size: int, page_token: str
    ) -> tuple[list[AuditEvent], str]:
        selection.validate()
        limit = page_size(requested_page_size, default=100, maximum=500)
        position = self._page_tokens.decode(page_token)
        after = position_int(position, "after") if position else 0
        events = await self._repository.find(selection, after, limit + 1)
        next_token = (
            self._page_tokens.encode({"after": events[limit - 1].sequence}) if len(events) > limit else ""
        )
        return events[:limit], next_token

    async def access_report(
        self,
        patient_id: str,
        start: datetime | None,
        end: datetime | None,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[AuditEvent], list[AccessSummary], str]:
        violations = Violations()
        if not patient_id.strip():
            violations.add("patient_id", "required")
        if start and end and end <= start:
            violations.add("end_time", "must be after start_time")
        violations.raise_if_any()
        selection = EventFilter(patient_id=patient_id, start=start, end=end)
        events, next_token = await self.query(selection, requested_page_size, page_token)
        summaries: list[AccessSummary] = []
        if not page_token:
            period = await self._repository.find(selection, 0, MAX_REPORT_EVENTS)
            summaries = summarize_accesses(period)
        return events, summaries, next_token

    # --- export ------------------------------------------------------------------------------------
    async def export(self, from_sequence: int, to_sequence: int) -> AsyncIterator[list[str]]:
        """JSON Lines: each checkpoint line comes before the events it covers; each event line carries
        its canonical record, hashes and, when checkpointed, its inclusion proof."""
        first, _ = _sequence_range(from_sequence, to_sequence)
        tip = await self._find_tip()
        last = min(to_sequence or tip[0], tip[0])
        # The header states the range, so that a verifier notices events cut from either end.
        yield [_json_line({"kind": "export", "from_sequence": first, "to_sequence": last})]
        if last < first:
            return
        checkpoints = {c.index: c for c in await self._repository.checkpoints_overlapping(first, last)}
        trees: dict[int, merkle.MerkleTree] = {}
        for checkpoint in checkpoints.values():
            hashes = await self._repository.hashes(checkpoint.first_sequence, checkpoint.last_sequence)
            trees[checkpoint.index] = merkle.MerkleTree([digest for _, digest in hashes])
        ordered = sorted(checkpoints.values(), key=lambda c: c.first_sequence)
        lines: list[str] = []
        emitted: set[int] = set()
        async for event in self._repository.scan(first, last):
            covering = next((c for c in ordered if c.covers(event.sequence)), None)
            line: dict[str, Any] = {
                "kind": "event",
                "sequence": event.sequence,
                "event": canonical_record(event) if event.action and event.outcome else None,
                "previous_hash": event.previous_hash.hex(),
                "hash": event.hash.hex(),
            }
            if covering is not None:
                if covering.index not in emitted:
                    emitted.add(covering.index)
                    lines.append(
                        _json_line(
                            {
                                "kind": "checkpoint",
                                **checkpoint_record(covering),
                                "signature": covering.signature.hex(),
                            }
                        )
                    )
                tree = trees[covering.index]
                leaf_index = event.sequence - covering.first_sequence
                if leaf_index < tree.size:
                    line["proof"] = {
                        "checkpoint": covering.index,
                        "leaf_index": leaf_index,
                        "tree_size": tree.size,
                        "audit_path": [digest.hex() for digest in tree.path(leaf_index)],
                    }
            lines.append(_json_line(line))
            if len(lines) >= EXPORT_CHUNK_LINES:
                yield lines
                lines = []
        if lines:
            yield lines


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sequence_range(from_sequence: int, to_sequence: int) -> tuple[int, int | None]:
    """(first, last) of a requested range; last None means the end of the log."""
    violations = Violations()
    if from_sequence < 0:
        violations.add("from_sequence", "must be 0 or positive")
    if to_sequence < 0 or (to_sequence and to_sequence < from_sequence):
        violations.add("to_sequence", "must be 0 (the end) or at least from_sequence")
    violations.raise_if_any()
    return from_sequence or 1, to_sequence or None


def _observe_checkpoint(checkpoint: Checkpoint | None) -> None:
    if checkpoint is not None:
        CHECKPOINTED_HEIGHT.set(checkpoint.last_sequence)
        LAST_CHECKPOINT_TIMESTAMP.set(checkpoint.created_at.timestamp())
