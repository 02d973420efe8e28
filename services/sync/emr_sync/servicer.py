"""gRPC transport of the sync service."""

from __future__ import annotations

from typing import Any

import grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc

from emr_runtime.clock import utc_now
from emr_sync import converters
from emr_sync.service import SyncService

SERVICE_NAME = "emr.sync.v1.NationalSyncService"
Context = grpc.aio.ServicerContext[Any, Any]


class NationalSyncServicer(sync_pb2_grpc.NationalSyncServiceServicer):
    def __init__(self, service: SyncService) -> None:
        self._service = service

    async def GetSyncStatus(
        self, request: sync_pb2.GetSyncStatusRequest, context: Context
    ) -> sync_pb2.GetSyncStatusResponse:
        status = await self._service.status(request.facility_code, request.delivery_ids)
        return converters.status_response(status, utc_now())

    async def ListDeadLetters(
        self, request: sync_pb2.ListDeadLettersRequest, context: Context
    ) -> sync_pb2.ListDeadLettersResponse:
        page, next_token = await self._service.dead_letters(
            request.facility_code, request.page_size, request.page_token
        )
        return sync_pb2.ListDeadLettersResponse(
            dead_letters=[
                converters.dead_letter(d, await self._service.dead_at(d.delivery_id)) for d in page
            ],
            next_page_token=next_token,
        )

    async def RetryDeadLetter(
        self, request: sync_pb2.RetryDeadLetterRequest, context: Context
    ) -> sync_pb2.RetryDeadLetterResponse:
        delivery_id = await self._service.retry_dead_letter(request.request_id, request.delivery_id)
        return sync_pb2.RetryDeadLetterResponse(delivery_id=delivery_id)

    async def Replay(self, request: sync_pb2.ReplayRequest, context: Context) -> sync_pb2.ReplayResponse:
        requeued = await self._service.replay(
            request.request_id, converters.optional_time(request, "from_time"), request.facility_code
        )
        return sync_pb2.ReplayResponse(requeued=requeued)

    async def Reconcile(
        self, request: sync_pb2.ReconcileRequest, context: Context
    ) -> sync_pb2.ReconcileResponse:
        checked, ids, requeued = await self._service.reconcile(
            request.request_id,
            converters.optional_time(request, "start_time"),
            converters.optional_time(request, "end_time"),
        )
        return sync_pb2.ReconcileResponse(checked=checked, requeued=requeued, requeued_delivery_ids=ids)
