"""gRPC transport of the audit service."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
        sequences = await self._log.append(
            [converters.event_from_message(e, index) for index, e in enumerate(request.events)]
        )
        return audit_pb2.AppendEventsResponse(sequences=sequences)

    async def QueryEvents(
        self, request: audit_pb2.QueryEventsRequest, context: Context
    ) -> audit_pb2.QueryEventsResponse:
        events, next_token = await self._log.query(
            converters.event_filter(request), request.page_size, request.page_token
        )
        return audit_pb2.QueryEventsResponse(
            events=[converters.event_message(e) for e in events], next_page_token=next_token
        )

    async def GetPatientAccessReport(
        self, request: audit_pb2.GetPatientAccessReportRequest, context: Context
    ) -> audit_pb2.GetPatientAccessReportResponse:
        start, end = converters.report_period(request)
        events, summaries, next_token = await self._log.access_report(
            request.patient_id, start, end, request.page_size, request.page_token
        )
        return audit_pb2.GetPatientAccessReportResponse(
            accesses=[converters.patient_access(e) for e in events],
            summaries=[converters.access_summary(s) for s in summaries],
            next_page_token=next_token,
        )

    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: Context
    ) -> audit_pb2.GetCheckpointResponse:
        checkpoint = await self._log.get_checkpoint(request.index)
        return audit_pb2.GetCheckpointResponse(checkpoint=converters.checkpoint_message(checkpoint))

    async def GetPublicKey(
        self, request: audit_pb2.GetPublicKeyRequest, context: Context
    ) -> audit_pb2.GetPublicKeyResponse:
        return converters.public_key_message(self._log.signer)

    async def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: Context
    ) -> audit_pb2.GetInclusionProofResponse:
        return converters.proof_message(await self._log.inclusion_proof(request.sequence))

    async def VerifyIntegrity(
        self, request: audit_pb2.VerifyIntegrityRequest, context: Context
    ) -> audit_pb2.VerifyIntegrityResponse:
        report = await self._log.verify(request.from_sequence, request.to_sequence)
        return converters.integrity_message(report)

    async def ExportEvents(
        self, request: audit_pb2.ExportEventsRequest, context: Context
    ) -> AsyncIterator[audit_pb2.ExportEventsResponse]:
        async for lines in self._log.export(request.from_sequence, request.to_sequence):
            yield audit_pb2.ExportEventsResponse(lines=lines)
