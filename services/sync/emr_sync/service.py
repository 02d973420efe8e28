"""Sync use cases: take changes into a durable queue, deliver them, report on it, repair it.

Store and forward: a change's payloads are queued (idempotently) before the feed cursor moves past
it, and a delivery is marked delivered only after the national side acknowledged it, so a crash
anywhere resends at worst, and the Idempotency-Key makes a resend harmless. Replicas share the work
through leases: one intake lease for the feed, and one lease per partition of patients for
delivery, so one patient's deliveries go out from one replica at a time, oldest first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from emr_claims.validate import validate_checkin
from emr_fhir.resources import patient_transaction_bundle, transaction_bundle
from emr_runtime.clock import utc_now
from emr_runtime.errors import (
    ConflictError,
    DependencyUnavailableError,
    NotFoundError,
    Violations,
)
from emr_runtime.idempotency import check_request_id, derive_id, fingerprint
from emr_runtime.paging import PageTokens, page_size, position_str, position_time
from emr_runtime.patients import PatientDirectory
from emr_sync.claim_signing import ClaimDocumentError, ClaimSigner, SigningKeyError
from emr_sync.claim_xml import (
    ClaimDataError,
    ClaimDetails,
    checkin_xml,
    claim_problems,
    claim_xml,
    is_insurance_claim,
    problems_reason,
    withdrawal_xml,
)
from emr_sync.clients import IdentityFeed, NationalClient, RecordsFeed
from emr_sync.domain import (
    SIGNED_KINDS,
    CircuitBreaker,
    CircuitState,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    SendOutcome,
    SendResult,
    SyncStatus,
    check_facility_filter,
    check_period,
    check_receipt_ids,
    dead_lettered,
    delivered,
    delivery_id,
    new_delivery,
    retry_delay,
    sendable_runs,
    short_reason,
)
from emr_sync.metrics import DEAD_LETTERS, DELIVERIES, OLDEST_PENDING_AGE, PENDING_DELIVERIES
from emr_sync.repository import SyncRepository
from emr_sync.sensitivity import submitted, withheld

log = logging.getLogger("emr.sync")
RECORDS_CURSOR = "records"
IDENTITY_CURSOR = "identity"
INTAKE_LEASE = "intake"
# Encounter versions that are reported: a finished visit, and its withdrawal when entered in error.
REPORTED_STATUSES = (records_pb2.ENCOUNTER_STATUS_FINISHED, records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR)
# A BHYT visit is checked in (XML0) from the first of its versions under way or over that sync reads.
CHECKED_IN_STATUSES = (records_pb2.ENCOUNTER_STATUS_IN_PROGRESS, records_pb2.ENCOUNTER_STATUS_FINISHED)
RECONCILE_CHUNK = 500
RECONCILE_LIMIT = 200_000
MAX_LISTED_REQUEUES = 1000
# Encounters whose payloads are built at once: each costs audited reads in identity and records.
INTAKE_CONCURRENCY = 4
# Delivery rounds one replica runs at once, on different partitions: while one round reads its
# deliveries or writes its last outcomes, the other keeps the national side busy.
ROUNDS_AT_ONCE = 2
# Outcomes written at a time while a round goes on (one insert, one bulk delete).
SETTLE_CHUNK = 500


@dataclass(frozen=True)
class PipelineConfig:
    owner: str
    batch_size: int
    partitions: int
    partitions_per_round: int
    lease: timedelta
    concurrency: int
    deliveries_per_round: int
    first_retry_delay: timedelta
    max_retry_delay: timedelta
    circuit_failure_threshold: int
    circuit_open: timedelta
    circuit_max_open: timedelta
    # MA_TTDV of each facility's claims (SYNC_FACILITY_CLAIM_CODES); a facility missing has its
    # claims dead-lettered by the strict checks (MA_TTDV REQUIRED).
    facility_claim_codes: Mapping[str, str] = field(default_factory=dict)


def _validation_reason(error: ValidationError) -> str:
    """Where the payload is invalid and how, from the error's locations and types only (the
    messages can quote input values, which are patient data)."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in error.errors()[:3]]
    return short_reason("invalid FHIR R4 Bundle: " + "; ".join(parts))


def patient_change_delivery(change: identity_pb2.PatientChange, partitions: int, now: datetime) -> Delivery:
    """The delivery of one patient change: a transaction Bundle of the Patient (merged: inactive,
    replaced-by its survivor; a survivor: replaces), keyed ``Patient/<id>/_history/<feed sequence>``
    (the feed position, as merges leave the demographics version unchanged), in the patient's
    partition. A payload that cannot be built is a dead letter from the start."""
    patient = change.patient if change.HasField("patient") else None
    queued = new_delivery(
        DeliveryKind.FHIR_TRANSACTION,
        "Patient",
        change.patient_id,
        change.sequence,
        change.patient_id,
        patient.registering_facility_code if patient is not None else "",
        change.sequence,
        partitions,
        b"",
        change.commit_time.ToDatetime(tzinfo=now.tzinfo),
        now,
    )
    if patient is None:
        problem = "patient unknown to the identity service"
    else:
        bundle = patient_transaction_bundle(
            patient,
            str(change.sequence),
            change.commit_time,
            replaced_by=change.merged_into_patient_id,
            replaces=change.merged_patient_ids,
        )
        try:
            Bundle.model_validate(bundle)
            return replace(queued, payload=_json_bytes(bundle))
        except ValidationError as error:
            problem = _validation_reason(error)
    return replace(queued, status=DeliveryStatus.DEAD, last_error=problem, dead_at=now)


def _claim_delivery(
    delivery: Callable[[DeliveryKind, bytes, str], Delivery],
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    attached: Sequence[records_pb2.ClinicalResource],
    now: datetime,
    details: ClaimDetails,
) -> Delivery:
    """The claim of a finished BHYT visit, or a dead letter naming the fields the portal would refuse
    (a visit lacking required claim data is never sent): the strict Decision 130 checks run here."""
    try:
        submission = claim_xml(patient, encounter, attached, now, details)
    except ClaimDataError as error:
        return delivery(DeliveryKind.CLAIM_XML, b"", short_reason(f"claim cannot be built: {error}"))
    except ValueError:
        # Other messages may quote a value, which is patient data.
        return delivery(DeliveryKind.CLAIM_XML, b"", "claim cannot be built: a value is out of its range")
    problems = claim_problems(submission)
    if problems:
        return delivery(DeliveryKind.CLAIM_XML, b"", short_reason(problems_reason(problems)))
    return delivery(DeliveryKind.CLAIM_XML, submission, "")


def _checkin_delivery(
    delivery: Callable[[DeliveryKind, bytes, str], Delivery],
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    attached: Sequence[records_pb2.ClinicalResource],
) -> Delivery:
    """The XML0 check-in of a BHYT visit, or a dead letter naming the fields the portal would refuse."""
    try:
        document = checkin_xml(patient, encounter, attached)
    except ClaimDataError as error:
        return delivery(DeliveryKind.CLAIM_CHECKIN, b"", short_reason(f"check-in cannot be built: {error}"))
    except ValueError:
        return delivery(
            DeliveryKind.CLAIM_CHECKIN, b"", "check-in cannot be built: a value is out of its range"
        )
    problems = validate_checkin(document)
    if problems:
        return delivery(DeliveryKind.CLAIM_CHECKIN, b"", short_reason(problems_reason(problems)))
    return delivery(DeliveryKind.CLAIM_CHECKIN, document, "")


def _lease(partition: int) -> str:
    return f"partition:{partition}"


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class RoundOutcomes:
    """A delivery round's ended deliveries (delivered, dead-lettered), settled a chunk at a time
    while the round goes on: the queue and the in-flight lists shrink as the round drains, and its
    end leaves little to write before the leases go."""

    def __init__(
        self, repository: SyncRepository, owner: str, due: list[Delivery], chunk: int = SETTLE_CHUNK
    ) -> None:
        self._repository = repository
        self._owner = owner
        self._chunk = chunk
        self._sending: dict[int, dict[str, Delivery]] = {}
        for delivery in due:
            self._sending.setdefault(delivery.partition, {})[delivery.delivery_id] = delivery
        self._ended: list[Delivery] = []
        self._writing = asyncio.Lock()

    async def add(self, delivery: Delivery) -> None:
        self._ended.append(delivery)
        if len(self._ended) >= self._chunk and not self._writing.locked():
            try:
                await self.settle()
            except Exception as error:
                # The sends go on; the round's end writes these (or fails, and they are resent).
                log.warning("round outcomes not written yet", extra={"error_type": type(error).__name__})

    async def list_in_flight(self) -> None:
        """Lists the round's due deliveries in flight, per partition, before the first is sent."""
        for partition, sending in self._sending.items():
            await self._repository.mark_in_flight(_lease(partition), self._owner, list(sending.values()))

    async def settle(self) -> None:
        """Writes the outcomes noted so far; on failure they stay noted for the next call."""
        async with self._writing:
            chunk, self._ended = self._ended, []
            if not chunk:
                return
            try:
                await self._repository.settle(chunk)
            except BaseException:
                self._ended[:0] = chunk
                raise
            touched = {delivery.partition for delivery in chunk}
            for delivery in chunk:
                self._sending[delivery.partition].pop(delivery.delivery_id, None)
            for partition in sorted(touched):
                await self._repository.narrow_in_flight(
                    _lease(partition), self._owner, list(self._sending[partition].values())
                )


class SyncService:
    def __init__(
        self,
        repository: SyncRepository,
        feed: RecordsFeed,
        patient_changes: IdentityFeed,
        patients: PatientDirectory,
        national: NationalClient,
        config: PipelineConfig,
        page_tokens: PageTokens,
        fingerprint_key: bytes,
        signer: ClaimSigner | None = None,
    ) -> None:
        self._signer = signer or ClaimSigner({})
        self._page_tokens = page_tokens
        self._fingerprint_key = fingerprint_key  # keys the digests of repair requests
        self._repository = repository
        self._feed = feed
        self._patient_changes = patient_changes
        self._patients = patients
        self._national = national
        self._config = config
        self._reported_facilities: set[str] = set()
        self._breaker = CircuitBreaker(
            config.circuit_failure_threshold, config.circuit_open, config.circuit_max_open
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        self._paused_until: datetime | None = None
        self._reachable: bool | None = None
        self._intake_lease_until: datetime | None = None
        # Partitions this replica's rounds hold: its concurrent rounds never take the same one.
        self._partitions_in_rounds: set[int] = set()

    # --- intake ---------------------------------------------------------------------------------
    async def intake_once(self) -> int:
        """Queues the payloads of the next run of records changes and of identity's patient changes
        (each feed with its own cursor); returns how many changes were read."""
        config = self._config
        now = utc_now()
        # The lease is renewed when half of it is used up, not every round: an idle replica writes little.
        if self._intake_lease_until is None or now >= self._intake_lease_until - config.lease / 2:
            until = now + config.lease
            if not await self._repository.claim_lease(INTAKE_LEASE, config.owner, until, now):
                self._intake_lease_until = None
                return 0
            self._intake_lease_until = until
        # Each feed flows on when the other's service is down; a failure is raised after both ran.
        taken = await asyncio.gather(
            self._take_records_changes(), self._take_patient_changes(), return_exceptions=True
        )
        for outcome in taken:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(n for n in taken if isinstance(n, int))

    async def _take_patient_changes(self) -> int:
        after = await self._repository.cursor(IDENTITY_CURSOR)
        response = await self._patient_changes.changes_after(after, self._config.batch_size)
        now = utc_now()
        await self._repository.enqueue(
            [patient_change_delivery(change, self._config.partitions, now) for change in response.changes]
        )
        if response.next_after_sequence != after:
            await self._repository.save_cursor(IDENTITY_CURSOR, response.next_after_sequence)
        return len(response.changes)

    async def _take_records_changes(self) -> int:
        config = self._config
        after = await self._repository.cursor(RECORDS_CURSOR)
        response = await self._feed.changes_after(after, config.batch_size)
        reported = [
            change
            for change in response.changes
            if change.resource_type == "Encounter"
            and (
                change.encounter.status in REPORTED_STATUSES
                or (change.encounter.status in CHECKED_IN_STATUSES and is_insurance_claim(change.encounter))
            )
        ]
        limiter = asyncio.Semaphore(INTAKE_CONCURRENCY)

        async def payloads(change: records_pb2.Change) -> list[Delivery]:
            async with limiter:
                return await self._deliveries_of(change)

        built = await asyncio.gather(*(payloads(change) for change in reported))
        await self._repository.enqueue([delivery for group in built for delivery in group])
        if response.next_after_sequence != after:
            await self._repository.save_cursor(RECORDS_CURSOR, response.next_after_sequence)
        return len(response.changes)

    async def _deliveries_of(self, change: records_pb2.Change) -> list[Delivery]:
        """The FHIR transaction of a reported encounter version, and its claim when BHYT paid."""
        encounter = change.encounter
        now = utc_now()

        def delivery(kind: DeliveryKind, payload: bytes, problem: str = "") -> Delivery:
            queued = new_delivery(
                kind,
                change.resource_type,
                change.resource_id,
                change.resource_version,
                change.patient_id,
                change.facility_code,
                change.sequence,
                self._config.partitions,
                payload,
                change.commit_time.ToDatetime(tzinfo=now.tzinfo),
                now,
            )
            # A payload that cannot be built is a permanent problem: a dead letter from the start.
            return (
                replace(queued, status=DeliveryStatus.DEAD, last_error=problem, dead_at=now)
                if problem
                else queued
            )

        reported = encounter.status in REPORTED_STATUSES
        insured = is_insurance_claim(encounter)
        checks_in = (
            insured
            and encounter.status in CHECKED_IN_STATUSES
            and not await self._repository.exists(
                delivery_id(DeliveryKind.CLAIM_CHECKIN, change.resource_type, change.resource_id, 0)
            )
        )
        if not (reported or checks_in):
            return []
        view = await self._patients.get(change.patient_id)
        patient = view.patient if view is not None else None
        if patient is None:
            kind = DeliveryKind.FHIR_TRANSACTION if reported else DeliveryKind.CLAIM_CHECKIN
            return [delivery(kind, b"", "patient unknown to the identity service")]
        attached = await self._feed.attached(encounter.encounter_id)
        queued = [_checkin_delivery(delivery, patient, encounter, attached)] if checks_in else []
        if not reported:
            return queued
        # Special categories: an HIV visit's FHIR transaction is withheld, its claim is not.
        if not withheld(encounter.sensitivity):
            bundle = transaction_bundle(patient, encounter, submitted(attached))
            try:
                Bundle.model_validate(bundle)
            except ValidationError as error:
                return [*queued, delivery(DeliveryKind.FHIR_TRANSACTION, b"", _validation_reason(error))]
            queued.append(delivery(DeliveryKind.FHIR_TRANSACTION, _json_bytes(bundle)))
        if not insured:
            return queued
        if encounter.status == records_pb2.ENCOUNTER_STATUS_FINISHED:
            details = ClaimDetails(
                facility_head_code=self._config.facility_claim_codes.get(encounter.facility_code, "")
            )
            queued.append(_claim_delivery(delivery, patient, encounter, attached, now, details))
        else:
            # Entered in error: the portal holds the visit's check-in, perhaps its claim; both go.
            withdrawn_at = change.commit_time.ToDatetime(tzinfo=now.tzinfo)
            queued.append(delivery(DeliveryKind.CLAIM_WITHDRAWAL, withdrawal_xml(encounter, withdrawn_at)))
        return queued

    # --- delivery -------------------------------------------------------------------------------
    def blocked_until(self, now: datetime) -> datetime | None:
        """When sending may resume, while the circuit is open or the national side asked to wait."""
        moments = [m for m in (self._paused_until, self._breaker.retry_at()) if m is not None and m > now]
        return max(moments) if moments else None

    async def deliver_round(self) -> int:
        """Leases partitions, reads what waits in them (one query), sends what is due (per patient
        in order, patients in parallel), records the outcomes a chunk at a time and releases the
        partitions; returns how many sends were attempted."""
        config = self._config
        now = utc_now()
        if self.blocked_until(now) is not None or not await self._repository.any_due(now):
            return 0
        held: list[int] = []
        # Partitions this round tried, won or not: this replica's other round skips them meanwhile.
        tried: list[int] = []
        try:
            for partition in random.sample(range(config.partitions), config.partitions):
                if len(held) >= config.partitions_per_round:
                    break
                # Checked and taken with no await between: the leases are this replica's either way.
                if partition in self._partitions_in_rounds:
                    continue
                self._partitions_in_rounds.add(partition)
                tried.append(partition)
                if await self._repository.claim_lease(
                    _lease(partition), config.owner, now + config.lease, now
                ):
                    held.append(partition)
            return await self._deliver_in(held) if held else 0
        finally:
            self._partitions_in_rounds.difference_update(tried)

    async def _deliver_in(self, held: list[int]) -> int:
        """A round's sends in the partitions it holds; they are released at its end."""
        config = self._config
        lost: set[int] = set()
        outcomes: RoundOutcomes | None = None
        keeper = asyncio.create_task(self._keep_leases(held, lost))
        try:
            waiting = await self._repository.open_in_partitions(held, config.deliveries_per_round)
            runs = sendable_runs(waiting, utc_now())
            outcomes = RoundOutcomes(self._repository, config.owner, [d for run in runs for d in run])
            await outcomes.list_in_flight()
            sent = await asyncio.gather(*(self._send_run(run, lost, outcomes) for run in runs))
            return sum(sent)
        finally:
            keeper.cancel()
            # Outcomes before the leases go: the next holder must not find these still queued.
            if outcomes is not None:
                await outcomes.settle()
            for partition in held:
                await self._repository.narrow_in_flight(_lease(partition), config.owner, [])
                await self._repository.release_lease(_lease(partition), config.owner)

    async def _keep_leases(self, held: list[int], lost: set[int]) -> None:
        """Renews the round's leases; a lease that could not be renewed stops its sends."""
        config = self._config
        while True:
            await asyncio.sleep(config.lease.total_seconds() / 3)
            now = utc_now()
            for partition in held:
                if not await self._repository.claim_lease(
                    _lease(partition), config.owner, now + config.lease, now
                ):
                    lost.add(partition)

    async def _send_run(self, run: list[Delivery], lost: set[int], outcomes: RoundOutcomes) -> int:
        """Sends one patient's due deliveries in order, stopping at the first that must wait;
        those that reached an end go to ``outcomes``."""
        attempted = 0
        for delivery in run:
            outgoing = self._outgoing(delivery)
            if isinstance(outgoing, str):
                # Never sent: it cannot be (unsigned, or no client for its facility). A dead letter
                # with the reason; RetryDeadLetter sends it once the key or credentials are there.
                DELIVERIES.labels("dead_lettered").inc()
                await outcomes.add(dead_lettered(delivery, outgoing, utc_now()))
                log.warning("delivery held back", extra={"error": outgoing})
                continue
            async with self._slots:
                now = utc_now()
                if delivery.partition in lost or self.blocked_until(now) or not self._breaker.allow(now):
                    return attempted
                result = await self._national.send(
                    delivery.kind, delivery.delivery_id, outgoing, delivery.facility_code
                )
            attempted += 1
            if not await self._record(delivery, result, outcomes):
                return attempted
        return attempted

    def _outgoing(self, delivery: Delivery) -> bytes | str:
        """The bytes to send for a delivery (a claim signed with its facility's key, at each send
        so that a key installed later serves claims queued before), or why it cannot be sent."""
        problem = self._national.credentials_problem(delivery.facility_code)
        if problem:
            return short_reason(problem)
        payload = bytes(delivery.payload)
        if delivery.kind not in SIGNED_KINDS:
            return payload
        try:
            return self._signer.sign(delivery.facility_code, payload)
        except (SigningKeyError, ClaimDocumentError) as error:
            return short_reason(f"CHUKYDONVI: claim not signed, so not sent: {error}")

    async def _record(self, delivery: Delivery, result: SendResult, outcomes: RoundOutcomes) -> bool:
        """Notes the outcome of one attempt (a failure at once, an end for the round's chunked writes);
        True when the patient's next delivery may follow."""
        now = utc_now()
        if result.outcome is SendOutcome.DELIVERED:
            DELIVERIES.labels("delivered").inc()
            self._breaker.record_success()
            await outcomes.add(delivered(delivery, result.transaction_id, now))
            await self._note_reachability(True, now)
            return True
        if result.outcome is SendOutcome.REJECTED:
            # The endpoint answered: it is alive; only this payload is wrong. The rest flows on.
            DELIVERIES.labels("dead_lettered").inc()
            self._breaker.record_success()
            await outcomes.add(dead_lettered(delivery, result.error, now))
            await self._note_reachability(True, now)
            log.warning("delivery dead-lettered", extra={"error": result.error})
            return True
        DELIVERIES.labels("failed").inc()
        if result.outcome is SendOutcome.THROTTLED:
            # Alive but busy: the circuit need not open (a probe answered 429 closes it); the pause
            # of Retry-After stops this replica hammering.
            self._breaker.record_success()
            wait = result.retry_after or timedelta(seconds=1)
            self._paused_until = max(self._paused_until or now, now + wait)
            await self._repository.mark_failed(delivery.delivery_id, result.error, now + wait, now)
            return False
        self._breaker.record_failure(now)
        delay = retry_delay(
            delivery.attempts + 1, self._config.first_retry_delay, self._config.max_retry_delay
        )
        if result.retry_after:
            delay = max(delay, result.retry_after)
        await self._repository.mark_failed(delivery.delivery_id, result.error, now + delay, now)
        if self._breaker.state is CircuitState.OPEN:
            await self._note_reachability(False, now)
        log.warning(
            "delivery failed", extra={"delivery_attempts": delivery.attempts + 1, "error": result.error}
        )
        return False

    async def _note_reachability(self, reachable: bool, now: datetime) -> None:
        if reachable != self._reachable:
            self._reachable = reachable
            await self._repository.save_reachability(reachable, now)

    async def run(self, poll_interval: float) -> None:
        """Intake and delivery, each in its own loop, until cancelled."""
        partitions = [_lease(partition) for partition in range(self._config.partitions)]
        await self._repository.create_leases([INTAKE_LEASE, *partitions])
        await asyncio.gather(
            self._loop("intake", self.intake_once, poll_interval),
            *(self._loop("delivery", self.deliver_round, poll_interval) for _ in range(ROUNDS_AT_ONCE)),
        )

    async def _loop(self, name: str, step: Callable[[], Awaitable[int]], poll_interval: float) -> None:
        """Repeats ``step``; a step that moved anything is followed at once, an idle one after a pause."""
        while True:
            try:
                moved = await step()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(f"sync {name} round failed; retrying", extra={"error_type": type(error).__name__})
                moved = 0
            if not moved:
                await asyncio.sleep(poll_interval)

    # --- operations -----------------------------------------------------------------------------
    async def report_backlog(self, interval: float) -> None:
        """Keeps the backlog gauges current, per facility; a facility once seen stays, at 0 when
        caught up, so that its series do not vanish from dashboards."""
        while True:
            try:
                backlog = await self._repository.backlog_by_facility()
                now = utc_now()
                for facility in sorted(backlog.keys() | self._reported_facilities):
                    self._reported_facilities.add(facility)
                    pending, dead, oldest = backlog.get(facility, (0, 0, None))
                    PENDING_DELIVERIES.labels(facility).set(pending)
                    DEAD_LETTERS.labels(facility).set(dead)
                    OLDEST_PENDING_AGE.labels(facility).set((now - oldest).total_seconds() if oldest else 0)
            except Exception as error:
                log.warning("backlog metrics not refreshed", extra={"error_type": type(error).__name__})
            await asyncio.sleep(interval)

    async def status(self, facility_code: str, receipt_ids: Iterable[str] = ()) -> SyncStatus:
        code = check_facility_filter(facility_code)
        asked = check_receipt_ids(receipt_ids)
        now = utc_now()
        last_receipt = await self._repository.last_receipt(code)
        counts = await self._repository.counts(code)
        queued = counts.get(DeliveryStatus.PENDING.value, 0)
        # A round's outcomes leave the queue a moment before its in-flight list is cleared.
        in_flight = min(await self._repository.count_in_flight(code, now), queued)
        reachable, checked_at = await self._repository.reachability()
        return SyncStatus(
            pending=queued - in_flight,
            in_flight=in_flight,
            delivered=counts.get(DeliveryStatus.DELIVERED.value, 0),
            failed=await self._repository.count_failed(code),
            dead_lettered=counts.get(DeliveryStatus.DEAD.value, 0),
            oldest_pending_at=await self._repository.oldest_pending_at(code),
            last_error=await self._repository.last_error(),
            last_delivered_at=last_receipt.delivered_at if last_receipt else None,
            records_cursor=await self._repository.cursor(RECORDS_CURSOR),
            identity_cursor=await self._repository.cursor(IDENTITY_CURSOR),
            national_reachable=reachable,
            national_checked_at=checked_at,
            last_receipt=last_receipt,
            receipts=tuple(await self._repository.receipts(asked, code)),
        )

    async def dead_letters(
        self, facility_code: str, requested_page_size: int, page_token: str
    ) -> tuple[list[Delivery], str]:
        code = check_facility_filter(facility_code)
        size = page_size(requested_page_size, 20, 100)
        position = self._page_tokens.decode(page_token)
        after = None
        if position is not None:
            after = (position_time(position, "dead_at"), position_str(position, "id"))
        page = await self._repository.dead_letters(code, after, size + 1)
        next_token = ""
        if len(page) > size:
            page = page[:size]
            last = page[-1]
            dead_at = await self._repository.dead_at(last.delivery_id)
            assert dead_at is not None
            next_token = self._page_tokens.encode({"dead_at": dead_at.isoformat(), "id": last.delivery_id})
        return page, next_token

    async def dead_at(self, delivery_id: str) -> datetime | None:
        return await self._repository.dead_at(delivery_id)

    async def _once(
        self,
        kind: str,
        request_id: str,
        content: dict[str, Any],
        action: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Runs a repair operation once per request_id; a repeat returns the first result."""
        operation_id = derive_id(kind, request_id)
        digest = fingerprint(self._fingerprint_key, json.dumps(content, sort_keys=True, default=str).encode())
        stored = await self._repository.begin_operation(operation_id, digest)
        if stored["fingerprint"] != digest:
            raise ConflictError("request_id was already used for a different request", "request_id")
        if "result" in stored:
            return dict(stored["result"])
        result = await action()
        await self._repository.finish_operation(operation_id, result)
        return result

    async def retry_dead_letter(self, request_id: str, delivery_id: str) -> str:
        violations = Violations()
        check_request_id(violations, request_id)
        if not delivery_id.strip():
            violations.add("delivery_id", "required")
        violations.raise_if_any()

        async def action() -> dict[str, Any]:
            if not await self._repository.exists(delivery_id):
                raise NotFoundError("DeadLetter", "delivery_id", delivery_id)
            if not await self._repository.requeue_dead(delivery_id, utc_now()):
                raise ConflictError("the delivery is not dead-lettered", "delivery_id")
            return {"delivery_id": delivery_id}

        result = await self._once("retry-dead-letter", request_id, {"delivery_id": delivery_id}, action)
        return str(result["delivery_id"])

    async def replay(self, request_id: str, from_time: datetime | None, facility_code: str) -> int:
        violations = Violations()
        check_request_id(violations, request_id)
        if from_time is None:
            violations.add("from_time", "required")
        violations.raise_if_any()
        assert from_time is not None
        code = check_facility_filter(facility_code)

        async def action() -> dict[str, Any]:
            return {"requeued": await self._repository.requeue_committed_since(from_time, code, utc_now())}

        content = {"from_time": from_time.isoformat(), "facility_code": code}
        return int((await self._once("replay", request_id, content, action))["requeued"])

    async def reconcile(
        self, request_id: str, start: datetime | None, end: datetime | None
    ) -> tuple[int, list[str], int]:
        """(receipts checked, ids re-queued (at most MAX_LISTED_REQUEUES), how many re-queued)."""
        violations = Violations()
        check_request_id(violations, request_id)
        violations.raise_if_any()
        period_start, period_end = check_period(start, end)

        async def action() -> dict[str, Any]:
            receipts = await self._repository.delivered_between(period_start, period_end, RECONCILE_LIMIT)
            # Each facility's receipts are asked about with that facility's own client.
            by_facility: dict[str, list[str]] = {}
            for sent_id, _, facility in receipts:
                by_facility.setdefault(facility, []).append(sent_id)
            missing: list[str] = []
            for facility, ids in sorted(by_facility.items()):
                for chunk in _chunks(ids, RECONCILE_CHUNK):
                    try:
                        held = await self._national.acknowledged(chunk, facility)
                    except Exception as error:
                        raise DependencyUnavailableError("national system") from error
                    missing.extend(key for key in chunk if key not in held)
            requeued = await self._repository.requeue_ids(missing, utc_now())
            return {"checked": len(receipts), "requeued": requeued, "ids": missing[:MAX_LISTED_REQUEUES]}

        content = {"start": period_start.isoformat(), "end": period_end.isoformat()}
        result = await self._once("reconcile", request_id, content, action)
        return int(result["checked"]), list(result["ids"]), int(result["requeued"])


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
