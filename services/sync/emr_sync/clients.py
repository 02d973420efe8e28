"""Sync's outside world: the records change feed (gRPC) and the national system (HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from emr.records.v1 import records_pb2, records_pb2_grpc
from opentelemetry import propagate

from emr_runtime.caller import caller_metadata

RECORDS_SERVICE = "emr.records.v1.ClinicalRecordsService"
_METADATA = caller_metadata("service:sync", purpose_of_use="NATIONAL_REPORTING")


class RecordsFeed:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = records_pb2_grpc.ClinicalRecordsServiceStub(channel)

    async def changes_after(self, after_sequence: int, limit: int) -> records_pb2.ListChangesResponse:
        response: records_pb2.ListChangesResponse = await self._stub.ListChanges(
            records_pb2.ListChangesRequest(after_sequence=after_sequence, limit=limit), metadata=_METADATA
        )
        return response


@dataclass(frozen=True)
class SendResult:
    """``transaction_id`` when the national side acknowledged, else ``error`` (never patient data)."""

    transaction_id: str = ""
    error: str = ""

    @property
    def delivered(self) -> bool:
        return not self.error


class NationalClient:
    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_seconds)

    async def send(self, resource_type: str, idempotency_key: str, payload: dict[str, Any]) -> SendResult:
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/fhir+json"}
        propagate.inject(headers)
        try:
            response = await self._http.post(f"/fhir/{resource_type}", json=payload, headers=headers)
        except httpx.HTTPError as error:
            return SendResult(error=f"{type(error).__name__} reaching the national system")
        if response.is_success:
            body = response.json()
            return SendResult(transaction_id=str(body.get("transaction_id", "")))
        return SendResult(error=f"national system answered HTTP {response.status_code}")

    async def close(self) -> None:
        await self._http.aclose()
