"""HTTP API of the national emulator: accepts FHIR resources, deduplicates, lists what it holds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from emr_national_emulator.store import Delivery, DeliveryStore
from emr_runtime.web import create_web_app

FHIR_JSON = "application/fhir+json"
MAX_BODY_BYTES = 1024 * 1024


def _delivery_json(delivery: Delivery, with_resource: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": delivery.idempotency_key,
        "resource_type": delivery.resource_type,
        "transaction_id": delivery.receipt.transaction_id,
        "received_at": delivery.receipt.received_at.isoformat(),
    }
    if with_resource:
        body["resource"] = delivery.resource
    return body


def create_app(store: DeliveryStore | None = None) -> FastAPI:
    app = create_web_app("National health data system emulator")
    held = store or DeliveryStore()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/fhir/{resource_type}")
    async def receive(
        resource_type: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        if not idempotency_key or len(idempotency_key) > 200:
            raise HTTPException(400, "Idempotency-Key header is required (at most 200 characters)")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            resource = await request.json()
        except ValueError as error:
            raise HTTPException(400, "body is not JSON") from error
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise HTTPException(422, f"body must be a FHIR {resource_type} resource")
        delivery, created = held.accept(idempotency_key, resource_type, resource)
        return JSONResponse(
            _delivery_json(delivery, with_resource=False), status_code=201 if created else 200
        )

    @app.get("/deliveries")
    async def deliveries(resource_type: str | None = None) -> dict[str, Any]:
        items = held.held(resource_type)
        return {"count": len(items), "items": [_delivery_json(d, with_resource=True) for d in items]}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {"held": len(held.deliveries), "duplicates_received": held.duplicates_received}

    return app
