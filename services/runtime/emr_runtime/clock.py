"""Time as the database keeps it: UTC, millisecond precision (BSON dates hold milliseconds), so
that what a write returns equals what a later read returns."""

from __future__ import annotations

from datetime import UTC, datetime


def to_storage_precision(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)


def utc_now() -> datetime:
    return to_storage_precision(datetime.now(UTC))
