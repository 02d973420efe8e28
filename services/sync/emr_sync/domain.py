"""Sync domain: deliveries of platform data to the national system. Pure; no I/O."""

from __future__ import annotations

import enum
import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code

# The longest reason kept with a dead letter: enough for a validation message, never a payload.
MAX_REASON_LENGTH = 500


class DeliveryStatus(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class DeliveryKind(enum.Enum):
    FHIR_TRANSACTION = "fhir"
    CLAIM_XML = "claim"
    CLAIM_CHECKIN = "checkin"
    CLAIM_WITHDRAWAL = "withdrawal"


# The documents of the claim portal: signed with the facility's key before each send.
SIGNED_KINDS = frozenset({DeliveryKind.CLAIM_XML, DeliveryKind.CLAIM_CHECKIN, DeliveryKind.CLAIM_WITHDRAWAL})
# Where a delivery stands among those of one feed position: the bundle, then the visit's check-in,
# its claim, its withdrawal.
_KIND_ORDER = {
    DeliveryKind.FHIR_TRANSACTION: 0,
    DeliveryKind.CLAIM_CHECKIN: 1,
    DeliveryKind.CLAIM_XML: 2,
    DeliveryKind.CLAIM_WITHDRAWAL: 3,
}


@dataclass(frozen=True)
class Delivery:
    """One payload about one resource version. Its id is also the Idempotency-Key the national side
    deduplicates on, so a resend after a lost answer is never applied twice. ``sequence`` orders a
    patient's deliveries (feed order), and ``partition`` is the unit of work replicas lease.
    ``payload`` is the bytes to send (empty once the delivery has ended)."""

    delivery_id: str
    kind: DeliveryKind
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    sequence: int
    partition: int
    payload: Any
    committed_at: datetime
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    delivered_at: datetime | None = None
    transaction_id: str = ""
    dead_at: datetime | None = None


def delivered(delivery: Delivery, transaction_id: str, now: datetime) -> Delivery:
    """The delivery after the national side acknowledged it with ``transaction_id``."""
    return replace(
        delivery,
        status=DeliveryStatus.DELIVERED,
        attempts=delivery.attempts + 1,
        delivered_at=now,
        transaction_id=transaction_id,
        last_error="",
        payload=b"",
    )


def dead_lettered(delivery: Delivery, reason: str, now: datetime) -> Delivery:
    """The delivery after the national side refused it for good."""
    return replace(
        delivery,
        status=DeliveryStatus.DEAD,
        attempts=delivery.attempts + 1,
        last_error=reason,
        dead_at=now,
        payload=b"",
    )


@dataclass(frozen=True)
class Receipt:
    """The national side's acknowledgement of one delivery (its transaction code)."""

    delivery_id: str
    kind: DeliveryKind
    facility_code: str
    transaction_id: str
    delivered_at: datetime


# Receipts one GetSyncStatus may ask for by delivery id (one _id lookup each).
MAX_RECEIPT_IDS = 100
MAX_DELIVERY_ID_LENGTH = 300


def check_receipt_ids(delivery_ids: Iterable[str]) -> list[str]:
    """The requested delivery ids, deduplicated in order; INVALID_ARGUMENT naming delivery_ids
    when there are too many or one is empty or too long."""
    ids = list(dict.fromkeys(delivery_ids))
    violations = Violations()
    if len(ids) > MAX_RECEIPT_IDS:
        violations.add("delivery_ids", f"at most {MAX_RECEIPT_IDS}")
    elif any(not i.strip() or len(i) > MAX_DELIVERY_ID_LENGTH for i in ids):
        violations.add(
            "delivery_ids", f"each must be a delivery id of 1 to {MAX_DELIVERY_ID_LENGTH} characters"
        )
    violations.raise_if_any()
    return ids


@dataclass(frozen=True)
class SyncStatus:
    pending: int
    in_flight: int
    delivered: int
    failed: int
    dead_lettered: int
    oldest_pending_at: datetime | None
    last_error: str
    last_delivered_at: datetime | None
    records_cursor: int
    national_reachable: bool
    national_checked_at: datetime | None
    identity_cursor: int = 0
    last_receipt: Receipt | None = None
    receipts: tuple[Receipt, ...] = ()


class SendOutcome(enum.Enum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # network, timeout, 5xx: retry with backoff; counts against the circuit
    THROTTLED = "throttled"  # 429: wait Retry-After; the endpoint is alive
    REJECTED = "rejected"  # 4xx validation: retrying cannot help; dead letter


@dataclass(frozen=True)
class SendResult:
    """The national side's answer, reduced to what sync acts on (never patient data)."""

    outcome: SendOutcome
    transaction_id: str = ""
    error: str = ""
    retry_after: timedelta | None = None


def delivery_id(kind: DeliveryKind, resource_type: str, resource_id: str, version: int) -> str:
    """Idempotency-Key: one per (payload kind, resource, version); one check-in per visit, whatever
    its version, so a visit is checked in once."""
    if kind is DeliveryKind.CLAIM_CHECKIN:
        return f"CheckIn/{resource_type}/{resource_id}"
    base = f"{resource_type}/{resource_id}/_history/{version}"
    prefixes = {DeliveryKind.CLAIM_XML: "Claim/", DeliveryKind.CLAIM_WITHDRAWAL: "Withdrawal/"}
    return prefixes.get(kind, "") + base


def delivery_sequence(feed_sequence: int, kind: DeliveryKind) -> int:
    """Order of a delivery among its patient's: feed order, then the kind's place at that position."""
    return feed_sequence * len(_KIND_ORDER) + _KIND_ORDER[kind]


def partition_of(patient_id: str, partitions: int) -> int:
    """A patient's partition: stable across processes (crc32, not Python's salted hash), so every
    replica agrees and one patient's deliveries are only ever sent by one lease holder."""
    return zlib.crc32(patient_id.encode()) % partitions


def new_delivery(
    kind: DeliveryKind,
    resource_type: str,
    resource_id: str,
    version: int,
    patient_id: str,
    facility_code: str,
    feed_sequence: int,
    partitions: int,
    payload: Any,
    committed_at: datetime,
    now: datetime,
) -> Delivery:
    return Delivery(
        delivery_id=delivery_id(kind, resource_type, resource_id, version),
        kind=kind,
        resource_type=resource_type,
        resource_id=resource_id,
        resource_version=version,
        patient_id=patient_id,
        facility_code=facility_code,
        sequence=delivery_sequence(feed_sequence, kind),
        partition=partition_of(patient_id, partitions),
        payload=payload,
        committed_at=committed_at,
        created_at=now,
        next_attempt_at=now,
    )


def retry_delay(
    attempts: int, first: timedelta, longest: timedelta, rng: random.Random | None = None
) -> timedelta:
    """Exponential backoff with jitter: ``first`` after the first failure, doubling, capped at
    ``longest``; the wait is drawn from [half, all] of that, so replicas that failed together do not
    retry together."""
    # The exponent is bounded so that a delivery failing for days cannot overflow timedelta.
    doublings = min(max(attempts - 1, 0), 32)
    ceiling: timedelta = min(first * 2**doublings, longest)
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def sendable_runs(open_deliveries: Iterable[Delivery], now: datetime) -> list[list[Delivery]]:
    """Per patient, the deliveries that may be sent now, in order: from the patient's oldest open
    delivery up to (not including) the first that is not due yet. A patient whose oldest delivery
    waits for its retry sends nothing, so version n+1 never overtakes version n."""
    runs: dict[str, list[Delivery]] = {}
    blocked: set[str] = set()
    for delivery in sorted(open_deliveries, key=lambda d: d.sequence):
        if delivery.patient_id in blocked:
            continue
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            blocked.add(delivery.patient_id)
            continue
        runs.setdefault(delivery.patient_id, []).append(delivery)
    return [run for run in runs.values() if run]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops hammering a dead endpoint: after ``threshold`` transient failures in a row the circuit
    opens for ``open_for``; then one probe is let through (half open); its success closes the
    circuit, its failure opens it again for twice as long (up to ``longest``)."""

    def __init__(self, threshold: int, open_for: timedelta, longest: timedelta) -> None:
        self._threshold = threshold
        self._base = open_for
        self._longest = longest
        self._open_for = open_for
        self._failures = 0
        self._opened_until: datetime | None = None
        self._probing = False
        self._probe_started: datetime | None = None
        self.state = CircuitState.CLOSED

    def allow(self, now: datetime) -> bool:
        """Whether a request may go out now (in half-open state, only the single probe)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and self._opened_until is not None and now >= self._opened_until:
            self.state = CircuitState.HALF_OPEN
            self._probing = False
        if self.state is CircuitState.HALF_OPEN and (
            not self._probing
            or (self._probe_started is not None and now >= self._probe_started + self._open_for)
        ):
            # One probe at a time; a probe that never reported back is replaced after a pause.
            self._probing = True
            self._probe_started = now
            return True
        return False

    def retry_at(self) -> datetime | None:
        return self._opened_until if self.state is CircuitState.OPEN else None

    def record_success(self) -> None:
        self._failures = 0
        self._open_for = self._base
        self._probing = False
        self.state = CircuitState.CLOSED

    def record_failure(self, now: datetime) -> None:
        self._failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self._open(now)
            self._open_for = min(self._open_for * 2, self._longest)
        elif self.state is CircuitState.CLOSED and self._failures >= self._threshold:
            self._open(now)

    def _open(self, now: datetime) -> None:
        self.state = CircuitState.OPEN
        self._opened_until = now + self._open_for
        self._probing = False


def short_reason(text: str) -> str:
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


def check_facility_filter(facility_code: str) -> str:
    code = normalize_facility_code(facility_code)
    violations = Violations()
    if code and not is_facility_code(code):
        violations.add("facility_code", "empty for all facilities, or a 5-character facility code")
    violations.raise_if_any()
    return code


def check_period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    violations = Violations()
    if start is None:
        violations.add("start_time", "required")
    if end is None:
        violations.add("end_time", "required")
    elif start is not None and end <= start:
        violations.add("end_time", "must be after start_time")
    violations.raise_if_any()
    assert start is not None and end is not None
    return start, end
