"""gRPC transport of the sync service."""

from __future__ import annotations

from typing import Any

import grpc
from emr.sync.v1 import sync_pb2, sync_pb2_grpc

from emr_sync.service import SyncService

SERVICE_NAME = "emr.sync.v1.NationalSyncService"
Context = grpc.aio.ServicerContext[Any, Any]


class NationalSyncServicer(sync_pb2_grpc.NationalSyncServiceServicer):
    def __init__(self, service: SyncService) -> None:
        self._service = service

    async def GetSyncStatus(
        self, request: sync_pb2.GetSyncStatusRequest, context: Context
    ) -> sync_pb2.GetSyncStatusResponse:
        status = await self._service.status(request.facility_code)
        response = sync_pb2.GetSyncStatusResponse(
            pending=status.pending,
            delivered=status.delivered,
            failed=status.failed,
            last_error=status.last_error,
            records_cursor=status.records_cursor,
        )
        if status.last_delivered_at is not None:
            response.last_delivered_time.FromDatetime(status.last_delivered_at)
        return response
