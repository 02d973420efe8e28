"""Unit tests of audit events' retention labels (Circular 33/2025/TT-BYT classes, pure)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from emr.audit.v1 import audit_pb2

from emr_audit.converters import event_from_message, event_message
from emr_audit.domain import RetentionClass


def event(retention_class: int) -> audit_pb2.AuditEvent:
    message = audit_pb2.AuditEvent(
        event_id=str(uuid.uuid4()),
        action=audit_pb2.AUDIT_ACTION_READ,
        outcome=audit_pb2.AUDIT_OUTCOME_SUCCESS,
        actor_id="dr-synthetic-01",
        source_service="records",
        retention_class=retention_class,  # type: ignore[arg-type]
    )
    message.occurred_time.GetCurrentTime()
    return message


@pytest.mark.parametrize(
    ("sent", "stored", "years"),
    [
        (audit_pb2.AUDIT_RETENTION_CLASS_UNSPECIFIED, RetentionClass.STANDARD, 10),
        (audit_pb2.AUDIT_RETENTION_CLASS_STANDARD, RetentionClass.STANDARD, 10),
        # No 15-year class in TT 33/2025: the next class up, never a shorter one.
        (audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS, RetentionClass.EXTENDED_20_YEARS, 20),
        (audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_20_YEARS, RetentionClass.EXTENDED_20_YEARS, 20),
        (audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_30_YEARS, RetentionClass.EXTENDED_30_YEARS, 30),
        (audit_pb2.AUDIT_RETENTION_CLASS_PERMANENT, RetentionClass.PERMANENT, None),
    ],
)
def test_an_event_s_retention_follows_the_classes_of_tt_33(
    sent: int, stored: RetentionClass, years: int | None
) -> None:
    received = event_from_message(event(sent))
    assert received.retention_class is stored
    assert received.retention_class.years == years
    assert event_from_message(event_message(received)).retention_class is stored


def test_an_event_stored_with_the_old_15_year_label_is_kept_20_years_and_reads_back_unchanged() -> None:
    # Stored values enter each event's hash: the old label stays as stored.
    assert RetentionClass("extended-15y").years == 20
    assert (
        event_message_label(RetentionClass.EXTENDED_15_YEARS)
        == audit_pb2.AUDIT_RETENTION_CLASS_EXTENDED_15_YEARS
    )


def event_message_label(retention_class: RetentionClass) -> int:
    received = event_from_message(event(audit_pb2.AUDIT_RETENTION_CLASS_STANDARD))
    return event_message(replace(received, retention_class=retention_class)).retention_class
