"""Sync use cases: take changes into a durable queue, deliver them, report on it.

Store and forward: a change is queued (idempotently) before the feed cursor moves past it, and a
delivery is marked delivered only after the national side acknowledged it, so a crash anywhere
resends at worst, and the Idempotency-Key makes a resend harmless.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from emr_fhir.resources import encounter_resource
from emr_runtime.clock import utc_now
from emr_sync.clients import NationalClient, RecordsFeed
from emr_sync.domain import DeliveryStatus, SyncStatus, check_facility_filter, new_delivery, retry_delay
from emr_sync.repository import SyncRepository

log = logging.getLogger("emr.sync")
RECORDS_CURSOR = "records"


class SyncService:
    def __init__(
        self,
        repository: SyncRepository,
        feed: RecordsFeed,
        national: NationalClient,
        batch_size: int,
        max_retry_delay: timedelta,
    ) -> None:
        self._repository = repository
        self._feed = feed
        self._national = national
        self._batch_size = batch_size
        self._max_retry_delay = max_retry_delay

    async def intake_once(self) -> int:
        """Queues the next run of records changes; returns how many changes were read."""
        after = await self._repository.cursor(RECORDS_CURSOR)
        response = await self._feed.changes_after(after, self._batch_size)
        now = utc_now()
        deliveries = [
            new_delivery(
                change.resource_type,
                change.resource_id,
                change.resource_version,
                change.patient_id,
                change.facility_code,
                encounter_resource(change.encounter),
                now,
            )
            for change in response.changes
            if change.resource_type == "Encounter"
        ]
        await self._repository.enqueue(deliveries)
        if response.next_after_sequence != after:
            await self._repository.save_cursor(RECORDS_CURSOR, response.next_after_sequence)
        return len(response.changes)

    async def deliver_once(self) -> int:
        """Sends the deliveries that are due, oldest first; returns how many were attempted."""
        due = await self._repository.due(utc_now(), self._batch_size)
        for delivery in due:
            result = await self._national.send(delivery.resource_type, delivery.delivery_id, delivery.payload)
            now = utc_now()
            if result.delivered:
                await self._repository.mark_delivered(delivery.delivery_id, result.transaction_id, now)
            else:
                delay = retry_delay(delivery.attempts + 1, self._max_retry_delay)
                await self._repository.mark_failed(delivery.delivery_id, result.error, now + delay, now)
                log.warning(
                    "delivery failed",
                    extra={"delivery_attempts": delivery.attempts + 1, "error": result.error},
                )
        return len(due)

    async def run(self, poll_interval: float) -> None:
        """Intake and delivery until cancelled; a round that moved anything is followed at once."""
        while True:
            try:
                moved = await self.intake_once() + await self.deliver_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("sync round failed; retrying", extra={"error_type": type(error).__name__})
                moved = 0
            if not moved:
                await asyncio.sleep(poll_interval)

    async def status(self, facility_code: str) -> SyncStatus:
        code = check_facility_filter(facility_code)
        counts = await self._repository.counts(code)
        return SyncStatus(
            pending=counts.get(DeliveryStatus.PENDING.value, 0),
            delivered=counts.get(DeliveryStatus.DELIVERED.value, 0),
            failed=counts.get(DeliveryStatus.FAILED.value, 0),
            last_error=await self._repository.last_error(),
            last_delivered_at=await self._repository.last_delivered_at(code),
            records_cursor=await self._repository.cursor(RECORDS_CURSOR),
        )
