"""Sync domain: deliveries of platform data to the national system. Pure; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from emr_runtime.errors import Violations
from emr_runtime.facility import is_facility_code, normalize_facility_code

FIRST_RETRY_DELAY = timedelta(seconds=1)


class DeliveryStatus(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    """One resource version to deliver; its id is also the Idempotency-Key the national side
    deduplicates on, so a resend after a lost answer is never applied twice."""

    delivery_id: str
    resource_type: str
    resource_id: str
    resource_version: int
    patient_id: str
    facility_code: str
    payload: dict[str, Any]
    created_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str = ""
    delivered_at: datetime | None = None
    transaction_id: str = ""


@dataclass(frozen=True)
class SyncStatus:
    pending: int
    delivered: int
    failed: int
    last_error: str
    last_delivered_at: datetime | None
    records_cursor: int


def delivery_id(resource_type: str, resource_id: str, version: int) -> str:
    return f"{resource_type}/{resource_id}/_history/{version}"


def new_delivery(
    resource_type: str,
    resource_id: str,
    version: int,
    patient_id: str,
    facility_code: str,
    payload: dict[str, Any],
    now: datetime,
) -> Delivery:
    return Delivery(
        delivery_id=delivery_id(resource_type, resource_id, version),
        resource_type=resource_type,
        resource_id=resource_id,
        resource_version=version,
        patient_id=patient_id,
        facility_code=facility_code,
        payload=payload,
        created_at=now,
        next_attempt_at=now,
    )


def retry_delay(attempts: int, longest: timedelta) -> timedelta:
    """Exponential backoff: 1 s after the first failure, doubling, capped at ``longest``."""
    # The exponent is bounded so that a delivery failing for days cannot overflow timedelta.
    doublings = min(max(attempts - 1, 0), 32)
    delay: timedelta = FIRST_RETRY_DELAY * 2**doublings
    return min(delay, longest)


def check_facility_filter(facility_code: str) -> str:
    code = normalize_facility_code(facility_code)
    violations = Violations()
    if code and not is_facility_code(code):
        violations.add("facility_code", "empty for all facilities, or a 5-character facility code")
    violations.raise_if_any()
    return code
