"""gRPC transport of the audit service."""

from __future__ import annotations

from typing import Any

import grpc
from emr.audit.v1 import audit_pb2, audit_pb2_grpc

from emr_audit import converters
from emr_audit.service import AuditLog

SERVICE_NAME = "emr.audit.v1.AuditService"
Context = grpc.aio.ServicerContext[Any, Any]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def AppendEvents(
        self, request: audit_pb2.AppendEventsRequest, context: Context
    ) -> audit_pb2.AppendEventsResponse:
        sequences = await self._log.append([converters.event_from_message(e) for e in request.events])
        return audit_pb2.AppendEventsResponse(sequences=sequences)

    async def QueryEvents(
        self, request: audit_pb2.QueryEventsRequest, context: Context
    ) -> audit_pb2.QueryEventsResponse:
        events, next_token = await self._log.query_by_patient(
            request.patient_id, request.page_size, request.page_token
        )
        return audit_pb2.QueryEventsResponse(
            events=[converters.event_message(e) for e in events], next_page_token=next_token
        )
