"""Conversions between the sync contract (protobuf) and the sync domain."""

from __future__ import annotations

from datetime import UTC, datetime

from emr.sync.v1 import sync_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_sync.domain import Delivery, DeliveryKind, Receipt, SyncStatus

KINDS = {
    DeliveryKind.FHIR_TRANSACTION: sync_pb2.DELIVERY_KIND_FHIR_TRANSACTION,
    DeliveryKind.CLAIM_XML: sync_pb2.DELIVERY_KIND_CLAIM_XML,
    DeliveryKind.CLAIM_CHECKIN: sync_pb2.DELIVERY_KIND_CLAIM_CHECKIN,
    DeliveryKind.CLAIM_WITHDRAWAL: sync_pb2.DELIVERY_KIND_CLAIM_WITHDRAWAL,
}


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def optional_time(message: object, field: str) -> datetime | None:
    """A Timestamp field as an aware datetime; None when unset."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def status_response(status: SyncStatus, now: datetime) -> sync_pb2.GetSyncStatusResponse:
    response = sync_pb2.GetSyncStatusResponse(
        pending=status.pending,
        in_flight=status.in_flight,
        delivered=status.delivered,
        failed=status.failed,
        dead_lettered=status.dead_lettered,
        last_error=status.last_error,
        records_cursor=status.records_cursor,
        identity_cursor=status.identity_cursor,
        national_reachable=status.national_reachable,
    )
    if status.last_delivered_at is not None:
        response.last_delivered_time.CopyFrom(timestamp(status.last_delivered_at))
    if status.oldest_pending_at is not None:
        response.oldest_pending_time.CopyFrom(timestamp(status.oldest_pending_at))
        response.oldest_pending_age_seconds = max((now - status.oldest_pending_at).total_seconds(), 0.0)
    if status.national_checked_at is not None:
        response.national_checked_time.CopyFrom(timestamp(status.national_checked_at))
    if status.last_receipt is not None:
        response.last_receipt.CopyFrom(receipt(status.last_receipt))
    response.receipts.extend(receipt(r) for r in status.receipts)
    return response


def receipt(held: Receipt) -> sync_pb2.DeliveryReceipt:
    return sync_pb2.DeliveryReceipt(
        delivery_id=held.delivery_id,
        kind=KINDS[held.kind],
        facility_code=held.facility_code,
        transaction_id=held.transaction_id,
        delivered_time=timestamp(held.delivered_at),
    )


def dead_letter(delivery: Delivery, dead_at: datetime | None) -> sync_pb2.DeadLetter:
    message = sync_pb2.DeadLetter(
        delivery_id=delivery.delivery_id,
        kind=KINDS[delivery.kind],
        resource_type=delivery.resource_type,
        resource_id=delivery.resource_id,
        resource_version=delivery.resource_version,
        patient_id=delivery.patient_id,
        facility_code=delivery.facility_code,
        reason=delivery.last_error,
        attempts=delivery.attempts,
    )
    if dead_at is not None:
        message.dead_time.CopyFrom(timestamp(dead_at))
    return message
