"""Sync's outside world: the records change feed and encounter bundles (gRPC), patients and their
change feed from identity (gRPC), and the national system (HTTP with OAuth2 client-credentials tokens)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import grpc
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


@dataclass(frozen=True)
class Answer:
    """What the national side answered, read whole before its connection goes back to the pool."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def retry_after(answer: Answer, default: timedelta) -> timedelta:
    """Retry-After as seconds or an HTTP date; ``default`` when absent or unreadable."""
    value = answer.headers.get("Retry-After", "").strip()
    if not value:
        return default
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        wait: timedelta = parsedate_to_datetime(value) - utc_now()
        return max(wait, timedelta(0))
    except (TypeError, ValueError):
        return default


def rejection_reason(answer: Answer) -> str:
    """The national side's reason (OperationOutcome diagnostics or a JSON detail), never the payload."""
    body = answer.json()
    if isinstance(body, dict):
        issues = body.get("issue")
        if isinstance(issues, list) and issues and isinstance(issues[0], dict):
            return short_reason(f"HTTP {answer.status}: {issues[0].get('diagnostics', '')}")
        if "detail" in body:
            return short_reason(f"HTTP {answer.status}: {body['detail']}")
    return f"HTTP {answer.status}"


def send_result(answer: Answer, default_retry_after: timedelta) -> SendResult:
    """What an answer to a delivery means for it."""
    status = answer.status
    if 200 <= status < 300:
        body = answer.json()
        transaction_id = answer.headers.get("X-Transaction-Id") or (
            str(body.get("id", "")) if isinstance(body, dict) else ""
        )
        return SendResult(SendOutcome.DELIVERED, transaction_id=transaction_id)
    if status == 429:
        return SendResult(
            SendOutcome.THROTTLED,
            error="national system answered HTTP 429",
            retry_after=retry_after(answer, default_retry_after),
        )
    if status in (400, 404, 409, 413, 415, 422):
        return SendResult(SendOutcome.REJECTED, error=rejection_reason(answer))
    if status == 503:
        return SendResult(
            SendOutcome.TRANSIENT,
            error="national system answered HTTP 503",
            retry_after=retry_after(answer, timedelta(0)) or None,
        )
    return SendResult(SendOutcome.TRANSIENT, error=f"national system answered HTTP {status}")


class NationalUnavailableError(Exception):
    """The national side could not be reached, or answered a token or query request with an error."""


class NationalClient:
    """The national system's API over one aiohttp session (a pooled keep-alive connection per
    concurrent delivery: aiohttp costs about a fifth of httpx's CPU per request, and sync's CPU is
    what bounds how fast a backlog drains). OAuth2 client credentials: one token shared by every
    request, renewed before it expires (and at once when the national side refuses it)."""

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
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        # Deliveries are bounded by the caller; the two more are a token renewal's and a
        # reconcile query's, so neither waits behind a full pool.
        self._max_connections = max_connections + 2
        self._session: aiohttp.ClientSession | None = None
        self._basic_auth = aiohttp.encode_basic_auth(client_id, client_secret)
        self._token_path = token_path
        self._token = ""
        self._renew_at = 0.0
        self._token_lock = asyncio.Lock()
        self._default_retry_after = default_retry_after

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                trust_env=False,
            )
        return self._session

    async def _post(self, path: str, **request: Any) -> Answer:
        async with self._http().post(f"{self._base_url}{path}", **request) as response:
            return Answer(response.status, response.headers, await response.read())

    async def _token_now(self) -> str:
        if self._token and time.monotonic() < self._renew_at:
            return self._token
        async with self._token_lock:
            if self._token and time.monotonic() < self._renew_at:
                return self._token
            answer = await self._post(
                self._token_path,
                data={"grant_type": "client_credentials"},
                headers={"Authorization": self._basic_auth},
            )
            body = answer.json()
            if answer.status != 200 or not isinstance(body, dict) or "access_token" not in body:
                raise NationalUnavailableError(f"token endpoint answered HTTP {answer.status}")
            self._token = str(body["access_token"])
            self._renew_at = time.monotonic() + float(body.get("expires_in", 300)) * TOKEN_RENEW_FRACTION
            return self._token

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = ""

    async def send(self, kind: DeliveryKind, idempotency_key: str, payload: bytes) -> SendResult:
        try:
            for _ in range(2):  # a second try only after a refused (expired, revoked) token
                token = await self._token_now()
                headers = {
                    "Idempotency-Key": idempotency_key,
                    "Content-Type": CONTENT_TYPES[kind],
                    "Authorization": f"Bearer {token}",
                }
                propagate.inject(headers)
                answer = await self._post(PATHS[kind], data=payload, headers=headers)
                if answer.status != 401:
                    break
                self._forget_token(token)
        except (aiohttp.ClientError, TimeoutError, NationalUnavailableError) as error:
            return SendResult(
                SendOutcome.TRANSIENT, error=f"{type(error).__name__} reaching the national system"
            )
        return send_result(answer, self._default_retry_after)

    async def acknowledged(self, idempotency_keys: list[str]) -> set[str]:
        """Which of these deliveries the national side holds (its receipt query)."""
        token = await self._token_now()
        answer = await self._post(
            "/receipts/query",
            json={"idempotency_keys": idempotency_keys},
            headers={"Authorization": f"Bearer {token}"},
        )
        body = answer.json()
        if answer.status != 200 or not isinstance(body, dict):
            raise NationalUnavailableError(f"receipt query answered HTTP {answer.status}")
        return set(body["held"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
