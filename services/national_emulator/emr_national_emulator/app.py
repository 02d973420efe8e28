"""HTTP API of the national emulator.

- ``POST /oauth/token``: OAuth2 client credentials (HTTP Basic or form fields).
- ``POST /fhir``: a FHIR R4 transaction Bundle; ``POST /claims``: a Decision 130 claim (GIAMDINHHS
  XML), checked field by field by emr_claims when NATIONAL_EMULATOR_CLAIM_VALIDATION is strict; a
  later claim of the same MA_LK replaces the one held. ``POST /claims/checkin``: a visit's XML0
  check-in; ``POST /claims/withdrawal``: the withdrawal (HUYHOSO) of a visit the portal holds, after
  which its MA_LK takes no claim. Each is signed by its facility, needs a bearer token and an
  Idempotency-Key, applies a key once and counts repeats. ``GET /claims/visits/{facility}/{MA_LK}``:
  what the portal holds of a visit.
- Queries: ``/deliveries``, ``/applied``, ``/resources``, ``/stats``, ``POST /receipts/query``.
- Faults (``/admin/faults``): error rate, 429 with Retry-After, added latency, a full outage for a
  period, and committing a submission, then dropping the connection before answering.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs
from xml.etree import ElementTree as ET

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from emr_claims import validate
from emr_claims.codelists import load_code_lists
from emr_claims.spec import CHECKIN_ROOT, ENVELOPE_ROOT, WITHDRAWAL_ROOT
from emr_fhir.resources import SYSTEM_CCCD, operation_outcome
from emr_national_emulator import signature
from emr_national_emulator.clients import Client, authenticate, read_facility_clients
from emr_national_emulator.settings import EmulatorSettings
from emr_national_emulator.store import NationalStore, Submission
from emr_runtime.web import create_web_app

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_KEY_LENGTH = 200


class FaultUpdate(BaseModel):
    """Fields to change; the others keep their values."""

    error_rate: float | None = Field(None, ge=0, le=1)
    error_status: int | None = Field(None, ge=500, le=599)
    throttle_rate: float | None = Field(None, ge=0, le=1)
    retry_after_seconds: int | None = Field(None, ge=0)
    latency_ms: int | None = Field(None, ge=0)
    outage_seconds: float | None = Field(None, ge=0, description="Full outage from now for this long")
    drop_after_commit_rate: float | None = Field(None, ge=0, le=1)


class ReceiptQuery(BaseModel):
    idempotency_keys: list[str] = Field(max_length=10_000)


class DroppedAnswer(Response):
    """The data is committed, then the connection is dropped mid-answer: the client cannot tell
    whether its submission was applied (what a crashed proxy or a cut uplink does)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4096")]})
        raise ConnectionAbortedError("fault injected: connection dropped after commit")


def _rejection(diagnostics: str, expression: str) -> JSONResponse:
    return JSONResponse(
        operation_outcome("invalid", diagnostics, [expression]),
        status_code=422,
        media_type="application/fhir+json",
    )


# FHIR issue type of each field-error code (details.coding carries the code itself).
_ISSUE_TYPES = {
    validate.REQUIRED: "required",
    validate.MISSING_ELEMENT: "required",
    validate.MISSING_TABLE: "required",
    validate.TOO_LONG: "value",
    validate.BAD_FORMAT: "value",
    validate.BAD_CODE: "code-invalid",
    validate.OUT_OF_RANGE: "value",
    validate.TOO_MANY: "value",
    validate.MALFORMED: "structure",
    validate.BAD_ENVELOPE: "structure",
    validate.BAD_STRUCTURE: "structure",
    validate.UNEXPECTED_TABLE: "structure",
    validate.UNKNOWN_ELEMENT: "structure",
    validate.DUPLICATE_ELEMENT: "structure",
    validate.BAD_ORDER: "structure",
}


def _field_rejection(errors: list[validate.FieldError]) -> JSONResponse:
    """422 with one OperationOutcome issue per field error, like the portal's field-level answer:
    diagnostics "<location> <CODE>: <message>", expression the location, details.coding the code."""
    issues = [
        {
            "severity": "error",
            "code": _ISSUE_TYPES.get(error.code, "business-rule"),
            "details": {"coding": [{"code": error.code}], "text": error.message},
            "diagnostics": f"{error.location} {error.code}: {error.message}",
            "expression": [error.location],
        }
        for error in errors
    ]
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": issues},
        status_code=422,
        media_type="application/fhir+json",
    )


def _refusal(refusal: signature.ClaimRefusal) -> JSONResponse:
    outcome = operation_outcome(
        "forbidden" if refusal.status == 403 else "invalid", refusal.diagnostics, [refusal.expression]
    )
    return JSONResponse(outcome, status_code=refusal.status, media_type="application/fhir+json")


def _submission_json(submission: Submission) -> dict[str, Any]:
    return {
        "idempotency_key": submission.idempotency_key,
        "kind": submission.kind,
        "patient_id": submission.patient_id,
        "transaction_id": submission.receipt.transaction_id,
        "received_at": submission.receipt.received_at.isoformat(),
        "entries": [{"resource_type": t, "id": i, "version": v} for t, i, v in submission.entries],
    }


def _client_credentials(request: Request, body: bytes) -> tuple[str, str, str]:
    form = {key: values[0] for key, values in parse_qs(body.decode(errors="replace")).items()}
    client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("basic "):
        try:
            client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            client_id = client_secret = ""
    return form.get("grant_type", ""), client_id, client_secret


def _transaction_patient(bundle: Any) -> tuple[str, list[dict[str, Any]]] | JSONResponse:
    """(patient id, resources) of a valid transaction Bundle, or the OperationOutcome refusing it."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return _rejection("body must be a FHIR Bundle", "Bundle")
    if bundle.get("type") != "transaction":
        return _rejection("Bundle.type must be transaction", "Bundle.type")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        return _rejection("a transaction needs entries", "Bundle.entry")
    resources = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(request, dict) or request.get("method") != "PUT":
            return _rejection("every entry needs a resource and a PUT request", f"Bundle.entry[{index}]")
        resources.append(resource)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        return _rejection("a transaction carries exactly one Patient", "Bundle.entry")
    identifiers = patients[0].get("identifier") or []
    if not any(
        isinstance(i, dict) and i.get("system") == SYSTEM_CCCD and i.get("value") for i in identifiers
    ):
        # The national database keys people by citizen id: a Patient without one cannot be filed.
        return _rejection("Patient has no CCCD identifier", "Patient.identifier")
    return str(patients[0].get("id", "")), resources


def _claim_visit(document: bytes) -> tuple[str, dict[str, str]] | JSONResponse:
    """(MA_LK, XML1 fields) of a valid GIAMDINHHS submission, or the OperationOutcome refusing it."""
    try:
        root = ET.fromstring(document)  # noqa: S314 - a dev/test stand-in fed by our own sync service
    except ET.ParseError:
        return _rejection("body is not well-formed XML", "GIAMDINHHS")
    if root.tag != "GIAMDINHHS":
        return _rejection("root element must be GIAMDINHHS", "GIAMDINHHS")
    files: dict[str, ET.Element] = {}
    for element in root.iter("FILEHOSO"):
        kind, content = element.findtext("LOAIHOSO") or "", element.findtext("NOIDUNGFILE") or ""
        try:
            files[kind] = ET.fromstring(base64.b64decode(content, validate=True))  # noqa: S314
        except (binascii.Error, ET.ParseError):
            return _rejection(f"NOIDUNGFILE of {kind} is not base64 XML", "FILEHOSO.NOIDUNGFILE")
    summary = files.get("XML1")
    if summary is None:
        return _rejection("XML1 is required", "FILEHOSO.LOAIHOSO")
    fields = {child.tag: child.text or "" for child in summary}
    for required in ("MA_LK", "MA_THE_BHYT", "MA_CSKCB", "NGAY_VAO"):
        if not fields.get(required):
            return _rejection(f"XML1.{required} is required", f"XML1.{required}")
    return fields["MA_LK"], fields


def create_app(settings: EmulatorSettings | None = None, store: NationalStore | None = None) -> FastAPI:
    config = settings or EmulatorSettings()
    held = store or NationalStore()
    # Token -> (expiry, the facility it is bound to; None for the shared development client).
    tokens: dict[str, tuple[float, str | None]] = {}
    clients = [Client(config.client_id, config.client_secret, None)]
    clients += read_facility_clients(config.facility_clients_file)
    certificates = signature.FacilityCertificates(config.facility_certificates_dir)
    code_lists = load_code_lists(config.code_lists_dir)  # a bad list stops the start
    app = create_web_app("National health data system emulator")

    async def bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
        """The facility the caller's token is bound to (None: any facility)."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        expires, facility = tokens.get(token, (0.0, None))
        if expires <= time.monotonic():
            raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return facility

    async def injected_fault() -> Response | None:
        """The configured misbehaviour for this request, if any (before anything is committed)."""
        faults = held.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        now = datetime.now(UTC)
        if faults.in_outage(now):
            return JSONResponse({"detail": "national system unavailable"}, status_code=503)
        if held.chance(faults.throttle_rate):
            return JSONResponse(
                {"detail": "too many requests"},
                status_code=429,
                headers={"Retry-After": str(faults.retry_after_seconds)},
            )
        if held.chance(faults.error_rate):
            return JSONResponse({"detail": "injected error"}, status_code=faults.error_status)
        return None

    async def body_of(request: Request, idempotency_key: str | None) -> bytes:
        if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
            raise HTTPException(
                400, f"Idempotency-Key header is required (at most {MAX_KEY_LENGTH} characters)"
            )
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
        return raw

    def answer(submission: Submission, created: bool, body: dict[str, Any]) -> Response:
        if created and held.chance(held.faults.drop_after_commit_rate):
            return DroppedAnswer()
        return JSONResponse(
            body,
            status_code=201 if created else 200,
            headers={"X-Transaction-Id": submission.receipt.transaction_id},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/oauth/token")
    async def token(request: Request) -> JSONResponse:
        grant_type, client_id, client_secret = _client_credentials(request, await request.body())
        if grant_type != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        client = authenticate(clients, client_id, client_secret)
        if client is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = secrets.token_urlsafe(24)
        tokens[issued] = (time.monotonic() + config.token_ttl_seconds, client.facility_code)
        for stale in [t for t, (expires, _) in tokens.items() if expires <= time.monotonic()]:
            del tokens[stale]
        return JSONResponse(
            {"access_token": issued, "token_type": "Bearer", "expires_in": config.token_ttl_seconds},
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/fhir", dependencies=[Depends(bearer)])
    async def transaction(
        request: Request, idempotency_key: Annotated[str | None, Header()] = None
    ) -> Response:
        raw = await body_of(request, idempotency_key)
        assert idempotency_key is not None
        fault = await injected_fault()
        if fault is not None:
            return fault
        try:
            bundle = await request.json()
        except ValueError:
            return _rejection("body is not JSON", "Bundle")
        checked = _transaction_patient(bundle)
        if isinstance(checked, JSONResponse):
            return checked
        patient_id, resources = checked
        submission, created = held.accept(idempotency_key, "fhir", patient_id, resources, len(raw))
        body = {
            "resourceType": "Bundle",
            "id": submission.receipt.transaction_id,
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "200 OK", "location": f"{t}/{i}/_history/{v}" if v else f"{t}/{i}"}}
                for t, i, v in submission.entries
            ],
        }
        return answer(submission, created, body)

    async def signed_document(
        request: Request, idempotency_key: str | None, root: str
    ) -> tuple[bytes, Response | None]:
        """(body, the refusal or fault answered instead, if any) of a signed portal document: the
        field checks first (as the portal answers), then whose signature it bears."""
        token_facility = await bearer(request.headers.get("authorization"))
        raw = await body_of(request, idempotency_key)
        fault = await injected_fault()
        if fault is not None:
            return raw, fault
        field_checks = {
            ENVELOPE_ROOT: lambda document: validate.validate_submission(document, code_lists),
            CHECKIN_ROOT: validate.validate_checkin,
            WITHDRAWAL_ROOT: validate.validate_withdrawal,
        }[root]
        # A withdrawal is always read field by field: its three fields are all it says.
        if config.claim_validation == "strict" or root == WITHDRAWAL_ROOT:
            errors = field_checks(raw)
            if errors:
                return raw, _field_rejection(errors)
        refusal = signature.check_claim(raw, token_facility, certificates, root)
        return raw, _refusal(refusal) if refusal is not None else None

    def portal_answer(submission: Submission, created: bool, link_key: str) -> Response:
        # The portal's receipt: its transaction code (mã giao dịch), also in X-Transaction-Id.
        receipt = submission.receipt.transaction_id
        return answer(submission, created, {"id": receipt, "MA_GIAO_DICH": receipt, "MA_LK": link_key})

    def link_refusal(message: str, table: str, row: int = 0) -> JSONResponse:
        return _field_rejection([validate.FieldError(table, row, "MA_LK", validate.BAD_LINK, message, 0)])

    @app.post("/claims")
    async def claim(request: Request, idempotency_key: Annotated[str | None, Header()] = None) -> Response:
        raw, refused = await signed_document(request, idempotency_key, ENVELOPE_ROOT)
        if refused is not None:
            return refused
        assert idempotency_key is not None
        checked = _claim_visit(raw)
        if isinstance(checked, JSONResponse):
            return checked
        link_key, summary = checked
        visit = held.visit(summary.get("MA_CSKCB", ""), link_key)
        if visit.withdrawal and idempotency_key not in held.submissions:
            return link_refusal("the visit's claim was withdrawn; a withdrawn MA_LK takes no claim", "XML1")
        submission, created = held.accept(idempotency_key, "claim", summary.get("MA_BN", ""), [], summary)
        if created:
            # A later claim of the same MA_LK replaces the one held (a corrected visit).
            visit.claims.append(idempotency_key)
        return portal_answer(submission, created, link_key)

    @app.post("/claims/checkin")
    async def checkin(request: Request, idempotency_key: Annotated[str | None, Header()] = None) -> Response:
        raw, refused = await signed_document(request, idempotency_key, CHECKIN_ROOT)
        if refused is not None:
            return refused
        assert idempotency_key is not None
        row = ET.fromstring(raw).find("DSACH_TRANG_THAI_KCB/TRANG_THAI_KCB")  # noqa: S314 - checked above
        fields = {child.tag: child.text or "" for child in (row if row is not None else [])}
        link_key = fields.get("MA_LK", "")
        if not link_key:
            return link_refusal("MA_LK is required", "XML0", 1)
        submission, created = held.accept(idempotency_key, "checkin", fields.get("MA_BN", ""), [], fields)
        if created:
            held.visit(fields.get("MA_CSKCB", ""), link_key).checkin = idempotency_key
        return portal_answer(submission, created, link_key)

    @app.post("/claims/withdrawal")
    async def withdrawal(
        request: Request, idempotency_key: Annotated[str | None, Header()] = None
    ) -> Response:
        raw, refused = await signed_document(request, idempotency_key, WITHDRAWAL_ROOT)
        if refused is not None:
            return refused
        assert idempotency_key is not None
        root = ET.fromstring(raw)  # noqa: S314 - checked above
        facility, link_key = root.findtext("MACSKCB") or "", root.findtext("MA_LK") or ""
        visit = held.known_visit(facility, link_key)
        if idempotency_key not in held.submissions and (visit is None or not (visit.checkin or visit.claims)):
            return link_refusal("the portal holds no check-in or claim of this MA_LK", WITHDRAWAL_ROOT)
        submission, created = held.accept(idempotency_key, "withdrawal", "", [], {"MA_LK": link_key})
        if created and visit is not None:
            visit.withdrawal = visit.withdrawal or idempotency_key
        return portal_answer(submission, created, link_key)

    @app.get("/claims/visits/{facility_code}/{link_key}")
    async def visit_claims(facility_code: str, link_key: str) -> dict[str, Any]:
        """What the portal holds of one visit: check-in, claims (the last one current), withdrawal."""
        visit = held.known_visit(facility_code, link_key)
        if visit is None:
            raise HTTPException(404, "the portal holds nothing of this visit")
        return visit.summary()

    @app.post("/receipts/query", dependencies=[Depends(bearer)])
    async def receipts(query: ReceiptQuery) -> dict[str, Any]:
        found = {
            k: held.submissions[k].receipt.transaction_id
            for k in query.idempotency_keys
            if k in held.submissions
        }
        return {"held": found}

    @app.get("/deliveries")
    async def deliveries(kind: str | None = None, patient_id: str | None = None) -> dict[str, Any]:
        items = held.applied_for(patient_id, kind)
        return {"count": len(items), "items": [_submission_json(s) for s in items]}

    @app.get("/deliveries/{idempotency_key:path}")
    async def delivery(idempotency_key: str) -> dict[str, Any]:
        submission = held.submissions.get(idempotency_key)
        if submission is None:
            raise HTTPException(404, "no such submission")
        return {**_submission_json(submission), "content": submission.content}

    @app.get("/resources")
    async def resources(resource_type: str | None = None, resource_id: str | None = None) -> dict[str, Any]:
        items = [
            {"resource_type": t, "id": i, "version": v, "resource": r}
            for (t, i, v), r in held.resources.items()
            if (resource_type is None or t == resource_type) and (resource_id is None or i == resource_id)
        ]
        return {"count": len(items), "items": items}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {
            "held": len(held.submissions),
            "received": held.received,
            "duplicates_received": held.duplicates_received,
            "resources": len(held.resources),
        }

    @app.get("/admin/faults")
    async def faults() -> dict[str, Any]:
        current = held.faults
        return {
            **current.__dict__,
            "outage_until": current.outage_until.isoformat() if current.outage_until else None,
        }

    @app.put("/admin/faults")
    async def set_faults(update: FaultUpdate) -> dict[str, Any]:
        changes = update.model_dump(exclude_none=True)
        outage = changes.pop("outage_seconds", None)
        for name, value in changes.items():
            setattr(held.faults, name, value)
        if outage is not None:
            held.faults.start_outage(outage, datetime.now(UTC))
        return await faults()

    @app.delete("/admin/faults")
    async def clear_faults() -> dict[str, Any]:
        held.faults = type(held.faults)()
        return await faults()

    @app.post("/admin/forget/{idempotency_key:path}")
    async def forget(idempotency_key: str) -> dict[str, bool]:
        return {"forgotten": held.forget(idempotency_key)}

    return app
