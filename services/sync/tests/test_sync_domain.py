"""Unit tests of the sync domain: ids, ordering, backoff, circuit breaker, filters (pure, no I/O)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from emr_runtime.errors import InvalidArgumentError
from emr_sync.domain import (
    CircuitBreaker,
    CircuitState,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    check_facility_filter,
    check_period,
    check_receipt_ids,
    dead_lettered,
    delivered,
    delivery_id,
    new_delivery,
    partition_of,
    retry_delay,
    sendable_runs,
    short_reason,
)

NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)
FIRST = timedelta(seconds=1)
LONGEST = timedelta(minutes=5)


def delivery(
    patient: str, feed_sequence: int, kind: DeliveryKind = DeliveryKind.FHIR_TRANSACTION
) -> Delivery:
    return new_delivery(
        kind, "Encounter", f"enc-{feed_sequence}", 1, patient, "79001", feed_sequence, 16, {}, NOW, NOW
    )


def test_idempotency_key_per_kind_resource_and_version() -> None:
    assert delivery_id(DeliveryKind.FHIR_TRANSACTION, "Encounter", "e1", 3) == "Encounter/e1/_history/3"
    assert delivery_id(DeliveryKind.CLAIM_XML, "Encounter", "e1", 3) == "Claim/Encounter/e1/_history/3"
    assert (
        delivery_id(DeliveryKind.CLAIM_WITHDRAWAL, "Encounter", "e1", 4)
        == "Withdrawal/Encounter/e1/_history/4"
    )


def test_a_visit_is_checked_in_once_whatever_version_is_read_first() -> None:
    keys = {delivery_id(DeliveryKind.CLAIM_CHECKIN, "Encounter", "e1", version) for version in (1, 2, 7)}
    assert keys == {"CheckIn/Encounter/e1"}


def test_claim_follows_its_bundle_and_precedes_the_next_change() -> None:
    bundle = delivery("p", 7)
    checkin = delivery("p", 7, DeliveryKind.CLAIM_CHECKIN)
    claim = delivery("p", 7, DeliveryKind.CLAIM_XML)
    withdrawal = delivery("p", 7, DeliveryKind.CLAIM_WITHDRAWAL)
    later = delivery("p", 8)
    assert bundle.sequence < checkin.sequence < claim.sequence < withdrawal.sequence < later.sequence


def test_an_ended_delivery_counts_its_attempt_and_keeps_no_payload() -> None:
    later = NOW + timedelta(minutes=3)
    retried = replace(delivery("p", 1), attempts=2, last_error="HTTP 503", payload=b"{}")
    done = delivered(retried, "tx-1", later)
    assert (done.status, done.attempts, done.transaction_id, done.delivered_at) == (
        DeliveryStatus.DELIVERED,
        3,
        "tx-1",
        later,
    )
    assert (done.last_error, done.payload, done.dead_at) == ("", b"", None)
    dead = dead_lettered(retried, "HTTP 422: no CCCD", later)
    assert (dead.status, dead.attempts, dead.last_error, dead.dead_at, dead.payload) == (
        DeliveryStatus.DEAD,
        3,
        "HTTP 422: no CCCD",
        later,
        b"",
    )
    assert (dead.delivered_at, dead.transaction_id) == (None, "")


def test_partition_is_stable_and_in_range() -> None:
    assert partition_of("0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d", 16) == partition_of(
        "0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d", 16
    )
    spread = {partition_of(f"patient-{i}", 16) for i in range(500)}
    assert spread == set(range(16))


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 8])
def test_retry_delay_is_jittered_within_half_to_full_exponential(attempts: int) -> None:
    ceiling = min(FIRST * 2 ** (attempts - 1), LONGEST)
    rng = random.Random(attempts)
    for _ in range(50):
        delay = retry_delay(attempts, FIRST, LONGEST, rng)
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize("attempts", [10, 40, 10_000])
def test_retry_delay_is_capped_and_never_overflows(attempts: int) -> None:
    assert retry_delay(attempts, FIRST, LONGEST) <= LONGEST


def test_sendable_runs_keep_patient_order_and_stop_at_a_backing_off_delivery() -> None:
    first, second, third = delivery("a", 1), delivery("a", 2), delivery("a", 3)
    other = delivery("b", 4)
    assert sendable_runs([third, other, first, second], NOW) == [[first, second, third], [other]]

    waiting = Delivery(**{**first.__dict__, "next_attempt_at": NOW + timedelta(seconds=5)})
    assert sendable_runs([third, waiting, second, other], NOW) == [[other]]
    due_later = Delivery(**{**second.__dict__, "next_attempt_at": NOW + timedelta(seconds=5)})
    assert sendable_runs([first, due_later, third], NOW) == [[first]]


def test_circuit_opens_after_threshold_probes_and_closes_on_success() -> None:
    breaker = CircuitBreaker(3, timedelta(seconds=10), timedelta(seconds=60))
    for _ in range(2):
        breaker.record_failure(NOW)
    assert breaker.allow(NOW)
    breaker.record_failure(NOW)
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow(NOW + timedelta(seconds=9))
    assert breaker.retry_at() == NOW + timedelta(seconds=10)
    probe_time = NOW + timedelta(seconds=10)
    assert breaker.allow(probe_time)  # the single probe
    assert not breaker.allow(probe_time)
    breaker.record_failure(probe_time)
    assert breaker.state is CircuitState.OPEN
    assert breaker.retry_at() == probe_time + timedelta(seconds=10)
    later = probe_time + timedelta(seconds=10)
    assert breaker.allow(later)
    breaker.record_failure(later)
    assert breaker.retry_at() == later + timedelta(seconds=20)  # doubled after a failed probe
    assert breaker.allow(later + timedelta(seconds=20))
    breaker.record_success()
    assert breaker.state.value == CircuitState.CLOSED.value
    assert breaker.allow(later + timedelta(seconds=20))


def test_short_reason_is_bounded() -> None:
    assert short_reason("bad") == "bad"
    assert len(short_reason("x" * 2000)) == 500


@pytest.mark.parametrize(("given", "expected"), [("", ""), ("79001", "79001"), (" 79001 ", "79001")])
def test_facility_filter_accepts_empty_or_a_code(given: str, expected: str) -> None:
    assert check_facility_filter(given) == expected


def test_facility_filter_rejects_a_bad_code() -> None:
    with pytest.raises(InvalidArgumentError):
        check_facility_filter("7")


def test_period_must_be_given_and_ordered() -> None:
    assert check_period(NOW, NOW + timedelta(hours=1)) == (NOW, NOW + timedelta(hours=1))
    for start, end in [(None, NOW), (NOW, None), (NOW, NOW), (NOW, NOW - timedelta(seconds=1))]:
        with pytest.raises(InvalidArgumentError):
            check_period(start, end)


def test_a_probe_that_never_reports_is_replaced_after_a_pause() -> None:
    breaker = CircuitBreaker(1, timedelta(seconds=10), timedelta(seconds=60))
    breaker.record_failure(NOW)
    probe_time = NOW + timedelta(seconds=10)
    assert breaker.allow(probe_time)
    assert not breaker.allow(probe_time + timedelta(seconds=9))
    assert breaker.allow(probe_time + timedelta(seconds=10))


def test_receipt_ids_are_deduplicated_and_bounded() -> None:
    assert check_receipt_ids(["Claim/a", "Claim/b", "Claim/a"]) == ["Claim/a", "Claim/b"]
    for bad in (["x"] * 1 + [f"id-{n}" for n in range(100)], [" "], ["x" * 301]):
        with pytest.raises(InvalidArgumentError) as refused:
            check_receipt_ids(bad)
        assert "delivery_ids" in str(refused.value.violations)
