"""Sync's outside world: the records change feed and encounter bundles (gRPC), patients and their
change feed from identity (gRPC), and the national system (HTTP with OAuth2 client-credentials tokens)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from emr.identity.v1 import identity_pb2, identity_pb2_grpc
from emr.records.v1 import records_pb2, records_pb2_grpc
from opentelemetry import propagate

from emr_runtime.caller import purpose_metadata
from emr_runtime.clock import utc_now
from emr_runtime.facility import is_facility_code
from emr_sync.domain import DeliveryKind, SendOutcome, SendResult, short_reason

RECORDS_SERVICE = "emr.records.v1.ClinicalRecordsService"
# The sync service's own token (role sync-service) comes from the channel.
_METADATA = purpose_metadata("NATIONAL_REPORTING")
# A token is renewed when this share of its lifetime has passed, well before it expires.
TOKEN_RENEW_FRACTION = 0.75
CONTENT_TYPES = {
    DeliveryKind.FHIR_TRANSACTION: "application/fhir+json",
    DeliveryKind.CLAIM_XML: "application/xml",
    DeliveryKind.CLAIM_CHECKIN: "application/xml",
    DeliveryKind.CLAIM_WITHDRAWAL: "application/xml",
}
PATHS = {
    DeliveryKind.FHIR_TRANSACTION: "/fhir",
    DeliveryKind.CLAIM_XML: "/claims",
    DeliveryKind.CLAIM_CHECKIN: "/claims/checkin",
    DeliveryKind.CLAIM_WITHDRAWAL: "/claims/withdrawal",
}


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
    # 403: this client may not submit this (e.g. another facility's claim): sending again cannot help.
    if status in (400, 403, 404, 409, 413, 415, 422):
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


class MissingCredentialsError(Exception):
    """No national client is configured for a facility (and the shared one may not stand in)."""


@dataclass(frozen=True)
class ClientCredential:
    """One OAuth2 client at the national system."""

    client_id: str
    client_secret: str = field(repr=False)


def parse_credentials(text: str, source: str) -> dict[str, ClientCredential]:
    """``{"<facility_code>": {"client_id": ..., "client_secret": ...}}``; ValueError naming the
    facility (never a secret) when an entry is not usable."""
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source} is not JSON: {error.__class__.__name__}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected an object of facility code -> {{client_id, client_secret}}")
    credentials = {}
    for facility, entry in raw.items():
        if not isinstance(facility, str) or not is_facility_code(facility):
            raise ValueError(f"{source}: {facility!r} is not a 5-character facility code")
        client_id = entry.get("client_id") if isinstance(entry, dict) else None
        secret = entry.get("client_secret") if isinstance(entry, dict) else None
        if not isinstance(client_id, str) or not client_id or not isinstance(secret, str) or not secret:
            raise ValueError(f"{source}: facility {facility} needs a non-empty client_id and client_secret")
        credentials[facility] = ClientCredential(client_id, secret)
    return credentials


class NationalCredentials:
    """Which national client each facility's deliveries go out with: its own (portal accounts are
    per facility, and a facility's token may only submit that facility's data), else, only where
    allowed (development), the shared client."""

    def __init__(self, per_facility: Mapping[str, ClientCredential], shared: ClientCredential | None) -> None:
        self._per_facility = dict(per_facility)
        self._shared = shared

    @classmethod
    def from_settings(
        cls, credentials_file: str, shared_id: str, shared_secret: str, shared_fallback: bool
    ) -> NationalCredentials:
        per_facility: dict[str, ClientCredential] = {}
        if credentials_file:
            try:
                text = Path(credentials_file).read_text()
            except OSError as error:
                raise ValueError(f"SYNC_NATIONAL_CREDENTIALS_FILE {credentials_file}: {error}") from error
            per_facility = parse_credentials(text, f"SYNC_NATIONAL_CREDENTIALS_FILE {credentials_file}")
        elif not shared_fallback:
            raise ValueError(
                "SYNC_NATIONAL_SHARED_CLIENT_FALLBACK is false: SYNC_NATIONAL_CREDENTIALS_FILE must name "
                "each facility's national client"
            )
        shared = ClientCredential(shared_id, shared_secret) if shared_fallback else None
        return cls(per_facility, shared)

    def for_facility(self, facility_code: str) -> ClientCredential:
        credential = self._per_facility.get(facility_code) or self._shared
        if credential is None:
            raise MissingCredentialsError(f"no national client credentials for facility {facility_code!r}")
        return credential

    def problem(self, facility_code: str) -> str:
        """Why this facility's deliveries cannot go out; empty when they can."""
        try:
            self.for_facility(facility_code)
        except MissingCredentialsError as error:
            return str(error)
        return ""


@dataclass
class _Token:
    """A client's current access token (one per client, shared by every request of it)."""

    value: str = ""
    renew_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class NationalClient:
    """The national system's API over one aiohttp session (a pooled keep-alive connection per
    concurrent delivery: aiohttp costs about a fifth of httpx's CPU per request, and sync's CPU is
    what bounds how fast a backlog drains). OAuth2 client credentials, per facility: one token per
    client shared by every request of its facilities, renewed before it expires (and at once when
    the national side refuses it)."""

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        credentials: NationalCredentials,
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
        self._credentials = credentials
        self._token_path = token_path
        self._tokens: dict[ClientCredential, _Token] = {}
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

    def credentials_problem(self, facility_code: str) -> str:
        """Why deliveries of this facility cannot go out (no client for it); empty when they can."""
        return self._credentials.problem(facility_code)

    async def _token_now(self, facility_code: str) -> str:
        credential = self._credentials.for_facility(facility_code)
        held = self._tokens.setdefault(credential, _Token())
        if held.value and time.monotonic() < held.renew_at:
            return held.value
        async with held.lock:
            if held.value and time.monotonic() < held.renew_at:
                return held.value
            answer = await self._post(
                self._token_path,
                data={"grant_type": "client_credentials"},
                headers={
                    "Authorization": aiohttp.encode_basic_auth(credential.client_id, credential.client_secret)
                },
            )
            body = answer.json()
            if answer.status != 200 or not isinstance(body, dict) or "access_token" not in body:
                raise NationalUnavailableError(f"token endpoint answered HTTP {answer.status}")
            held.value = str(body["access_token"])
            held.renew_at = time.monotonic() + float(body.get("expires_in", 300)) * TOKEN_RENEW_FRACTION
            return held.value

    def _forget_token(self, facility_code: str, token: str) -> None:
        held = self._tokens.get(self._credentials.for_facility(facility_code))
        if held is not None and held.value == token:
            held.value = ""

    async def send(
        self, kind: DeliveryKind, idempotency_key: str, payload: bytes, facility_code: str
    ) -> SendResult:
        """One delivery, with the token of ``facility_code``'s national client."""
        try:
            for _ in range(2):  # a second try only after a refused (expired, revoked) token
                token = await self._token_now(facility_code)
                headers = {
                    "Idempotency-Key": idempotency_key,
                    "Content-Type": CONTENT_TYPES[kind],
                    "Authorization": f"Bearer {token}",
                }
                propagate.inject(headers)
                answer = await self._post(PATHS[kind], data=payload, headers=headers)
                if answer.status != 401:
                    break
                self._forget_token(facility_code, token)
        except MissingCredentialsError as error:
            return SendResult(SendOutcome.REJECTED, error=str(error))
        except (aiohttp.ClientError, TimeoutError, NationalUnavailableError) as error:
            return SendResult(
                SendOutcome.TRANSIENT, error=f"{type(error).__name__} reaching the national system"
            )
        return send_result(answer, self._default_retry_after)

    async def acknowledged(self, idempotency_keys: list[str], facility_code: str) -> set[str]:
        """Which of these deliveries (of one facility) the national side holds (its receipt query)."""
        token = await self._token_now(facility_code)
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
