"""Unit tests of the sync domain: deliveries, retry backoff and the facility filter (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from emr_runtime.errors import InvalidArgumentError
from emr_sync.domain import (
    FIRST_RETRY_DELAY,
    DeliveryStatus,
    check_facility_filter,
    delivery_id,
    new_delivery,
    retry_delay,
)

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
LONGEST = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 64), (8, 128), (9, 256)],
)
def test_retry_delay_doubles_from_one_second(attempts: int, seconds: int) -> None:
    assert timedelta(seconds=1) == FIRST_RETRY_DELAY
    assert retry_delay(attempts, LONGEST) == timedelta(seconds=seconds)


@pytest.mark.parametrize("attempts", [10, 11, 20, 40])
def test_retry_delay_is_capped(attempts: int) -> None:
    assert retry_delay(attempts, LONGEST) == LONGEST


def test_retry_delay_each_step_doubles_until_the_cap() -> None:
    longest = timedelta(hours=1)
    delays = [retry_delay(attempts, longest) for attempts in range(1, 20)]
    for previous, current in pairwise(delays):
        assert current == min(previous * 2, longest)
    assert delays[-1] == longest


def test_retry_delay_cap_below_the_first_delay() -> None:
    assert retry_delay(1, timedelta(milliseconds=250)) == timedelta(milliseconds=250)


def test_delivery_id_format() -> None:
    assert delivery_id("Encounter", "enc-1", 3) == "Encounter/enc-1/_history/3"


def test_delivery_id_differs_by_version_and_resource() -> None:
    ids = {
        delivery_id("Encounter", "enc-1", 1),
        delivery_id("Encounter", "enc-1", 2),
        delivery_id("Encounter", "enc-2", 1),
        delivery_id("Patient", "enc-1", 1),
    }
    assert len(ids) == 4


def test_new_delivery_is_pending_and_due_now() -> None:
    payload = {"resourceType": "Encounter", "id": "enc-1"}
    delivery = new_delivery("Encounter", "enc-1", 2, "patient-1", "79001", payload, NOW)
    assert delivery.delivery_id == "Encounter/enc-1/_history/2"
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempts == 0
    assert delivery.next_attempt_at == NOW
    assert delivery.created_at == NOW
    assert delivery.resource_type == "Encounter"
    assert delivery.resource_id == "enc-1"
    assert delivery.resource_version == 2
    assert delivery.patient_id == "patient-1"
    assert delivery.facility_code == "79001"
    assert delivery.payload == payload
    assert delivery.last_error == ""
    assert delivery.delivered_at is None
    assert delivery.transaction_id == ""


@pytest.mark.parametrize(("raw", "code"), [("", ""), ("   ", ""), ("79001", "79001"), (" ab12c ", "AB12C")])
def test_facility_filter_accepted(raw: str, code: str) -> None:
    assert check_facility_filter(raw) == code


@pytest.mark.parametrize("raw", ["7900", "790011", "79 01", "79-01", "ALL"])
def test_facility_filter_rejected(raw: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_facility_filter(raw)
    assert [v.field for v in caught.value.violations] == ["facility_code"]


def test_retry_delay_stays_capped_after_days_of_failures() -> None:
    from datetime import timedelta

    from emr_sync.domain import retry_delay

    assert retry_delay(48, timedelta(seconds=300)) == timedelta(seconds=300)
    assert retry_delay(10_000, timedelta(seconds=300)) == timedelta(seconds=300)
