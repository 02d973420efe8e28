"""Sync's outside world: the records change feed and encounter bundles (gRPC), patients and their
change feed from identity (gRPC), and the national system (HTTP with OAuth2 client-credentials tokens)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import grpc
import httpx
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from opentelemetry import propagate

from emr_runtime.caller import purpose_metadata
from emr_runtime.clock import utc_now
from emr_sync.domain import DeliveryKind, SendOutcome, SendResult, short_reason

RECORDS_SERVICE = "emr.records.v1.ClinicalRecordsService"
# The sync service's own token (role sync-service) comes from the channel.
_METADATA = purpose_metadata("NATIONAL_REPORTING")
# A token is renewed when this share of its lifetime has passed, well before it expires.
TOKEN_RENEW_FRACTION = 0.75
CONTENT_TYPES = {
    DeliveryKind.FHIR_TRANSACTION: "application/fhir+json",
    DeliveryKind.CLAIM_XML: "application/xml",
}
PATHS = {DeliveryKind.FHIR_TRANSACTION: "/fhir", DeliveryKind.CLAIM_XML: "/claims"}


class RecordsFeed:
    def __init__(self, channel: grpc.aio.Channel, deadline_seconds: float = 10.0) -> None:
        self._stub = records_pb2_grpc.ClinicalRecordsServiceStub(channel)
        self._deadline = deadline_seconds

    async def changes_after(self, after_sequence: int, limit: int) -> records_pb2.ListChangesResponse:
        response: records_pb2.ListChangesResponse = await self._stub.ListChanges(
            records_pb2.ListChangesRequest(after_sequence=after_sequence, limit=limit),
            metadata=_METADATA,
            timeout=self._deadline,
        )
        return response

    async def attached(self, encounter_id: str) -> list[records_pb2.ClinicalResource]:
        """Every resource attached to an encounter (observations, conditions, drugs, procedures …)."""
        response = await self._stub.GetEncounterBundle(
            records_pb2.GetEncounterBundleRequest(encounter_id=encounter_id),
            metadata=_METADATA,
            timeout=self._deadline,
        )
        return list(response.resources)


class IdentityFeed:
    """Identity's patient change feed (registrations, updates, merges, unmerges)."""

    def __init__(self, channel: grpc.aio.Channel, deadline_seconds: float = 10.0) -> None:
        self._stub = identity_pb2_grpc.PatientIdentityServiceStub(channel)
        self._deadline = deadline_seconds

    async def changes_after(self, after_sequence: int, limit: int) -> identity_pb2.ListPatientChangesResponse:
        response: identity_pb2.ListPatientChangesResponse = await self._stub.ListPatientChanges(
            identity_pb2.ListPatientChangesRequest(after_sequence=after_sequence, limit=limit),
            metadata=_METADATA,
            timeout=self._deadline,
        )
        return response


def retry_after(response: httpx.Response, default: timedelta) -> timedelta:
    """Retry-After as seconds or an HTTP date; ``default`` when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        wait: timedelta = parsedate_to_datetime(value) - utc_now()
        return max(wait, timedelta(0))
    except (TypeError, ValueError):
        return default


def _rejection_reason(response: httpx.Response) -> str:
    """The national side's reason (OperationOutcome diagnostics or a JSON detail), never the payload."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        issues = body.get("issue")
        if isinstance(issues, list) and issues and isinstance(issues[0], dict):
            return short_reason(f"HTTP {response.status_code}: {issues[0].get('diagnostics', '')}")
        if "detail" in body:
            return short_reason(f"HTTP {response.status_code}: {body['detail']}")
    return f"HTTP {response.status_code}"


class TokenSource:
    """OAuth2 client credentials: one token shared by every request, renewed before it expires
    (and at once when the national side says it is no longer valid)."""

    def __init__(self, http: httpx.AsyncClient, token_path: str, client_id: str, client_secret: str) -> None:
        self._http = http
        self._path = token_path
        self._client_id = client_id
        self._client_secret = client_secret
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        if self._token and time.monotonic() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token and time.monotonic() < self._renew_at:
                return self._token
            response = await self._http.post(
                self._path,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._client_secret),
            )
            response.raise_for_status()
            body = response.json()
            self._token = str(body["access_token"])
            self._renew_at = time.monotonic() + float(body.get("expires_in", 300)) * TOKEN_RENEW_FRACTION
            return self._token

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = ""


class NationalClient:
    """The national system's API. Each concurrent request has an HTTP client (and connection) of its
    own, taken from a free list: httpx's pool does work quadratic in its connections on every request
    (it is most of sync's CPU with 16 connections), and a pool of one connection does almost none."""

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        client_id: str,
        client_secret: str,
        token_path: str,
        default_retry_after: timedelta,
        max_connections: int,
    ) -> None:
        self._clients = [
            httpx.AsyncClient(
                base_url=base_url,
                timeout=timeout_seconds,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            for _ in range(max_connections + 1)
        ]
        # The last client is the token endpoint's, so that a renewal never waits for a free one.
        self._tokens = TokenSource(self._clients[-1], token_path, client_id, client_secret)
        self._free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self._clients[:-1]:
            self._free.put_nowait(client)
        self._default_retry_after = default_retry_after

    async def _post(self, path: str, **request: Any) -> httpx.Response:
        http = await self._free.get()
        try:
            return await http.post(path, **request)
        finally:
            self._free.put_nowait(http)

    async def send(self, kind: DeliveryKind, idempotency_key: str, payload: bytes) -> SendResult:
        try:
            for _ in range(2):  # a second try only after a refused (expired, revoked) token
                token = await self._tokens.token()
                headers = {
                    "Idempotency-Key": idempotency_key,
                    "Content-Type": CONTENT_TYPES[kind],
                    "Authorization": f"Bearer {token}",
                }
                propagate.inject(headers)
                response = await self._post(PATHS[kind], content=payload, headers=headers)
                if response.status_code != 401:
                    break
                self._tokens.invalidate(token)
        except httpx.HTTPError as error:
            return SendResult(
                SendOutcome.TRANSIENT, error=f"{type(error).__name__} reaching the national system"
            )
        return self._result(response)

    def _result(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if response.is_success:
            try:
                body: Any = response.json()
            except ValueError:
                body = {}
            transaction_id = response.headers.get("X-Transaction-Id") or (
                str(body.get("id", "")) if isinstance(body, dict) else ""
            )
            return SendResult(SendOutcome.DELIVERED, transaction_id=transaction_id)
        if status == 429:
            return SendResult(
                SendOutcome.THROTTLED,
                error="national system answered HTTP 429",
                retry_after=retry_after(response, self._default_retry_after),
            )
        if status in (400, 404, 409, 413, 415, 422):
            return SendResult(SendOutcome.REJECTED, error=_rejection_reason(response))
        if status == 503:
            return SendResult(
                SendOutcome.TRANSIENT,
                error="national system answered HTTP 503",
                retry_after=retry_after(response, timedelta(0)) or None,
            )
        return SendResult(SendOutcome.TRANSIENT, error=f"national system answered HTTP {status}")

    async def acknowledged(self, idempotency_keys: list[str]) -> set[str]:
        """Which of these deliveries the national side holds (its receipt query)."""
        token = await self._tokens.token()
        response = await self._post(
            "/receipts/query",
            json={"idempotency_keys": idempotency_keys},
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        return set(response.json()["held"])

    async def close(self) -> None:
        for http in self._clients:
            await http.aclose()
