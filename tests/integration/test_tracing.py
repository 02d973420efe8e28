"""One trace follows a request across processes: gateway -> records -> identity -> audit, with the
parent-child links intact, exported over OTLP to a collector (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from opentelemetry.proto.trace.v1 import trace_pb2

from emr_devstack.tokens import issue_token

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


async def test_one_trace_spans_gateway_records_identity_and_audit(
    stack: Any, clinical: Any, facility_code: str, trace_collector: Any
) -> None:
    collector, _ = trace_collector
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code)
    await clinical.create(clinical.every_resource(patient_id, facility_code, encounter_id)[0])

    async with httpx.AsyncClient(base_url=stack.url("gateway")) as http:
        response = await http.get(
            f"/fhir/Patient/{patient_id}/$everything",
            headers={
                "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01",
                "Authorization": f"Bearer {issue_token('portal-trace-test')}",
            },
        )
    assert response.status_code == 200

    def server_spans(spans: list[tuple[str, Any]], service: str, name_part: str) -> list[Any]:
        return [
            span
            for svc, span in spans
            if svc == service and span.kind == trace_pb2.Span.SPAN_KIND_SERVER and name_part in span.name
        ]

    wanted = [
        ("emr-gateway", "$everything"),
        ("emr-records", "ExportPatient"),
        ("emr-identity", "GetPatient"),
        ("emr-audit", "AppendEvents"),
    ]

    def arrived(spans: list[tuple[str, Any]]) -> bool:
        # Audit's spans of identity's and of records' appends may come in different batches: wait
        # for records' append (a child of a records span), not just any append.
        records_span_ids = {span.span_id for service, span in spans if service == "emr-records"}
        return all(server_spans(spans, *hop) for hop in wanted) and any(
            span.parent_span_id in records_span_ids
            for span in server_spans(spans, "emr-audit", "AppendEvents")
        )

    deadline = time.monotonic() + 20
    # Each process exports in its own batches: wait until every hop has arrived.
    while not arrived(collector.spans(bytes.fromhex(TRACE_ID))):
        assert time.monotonic() < deadline, "spans of some services never arrived"
        await asyncio.sleep(0.1)
    spans = collector.spans(bytes.fromhex(TRACE_ID))
    by_id = {span.span_id: (service, span) for service, span in spans}

    def parent_service(span: Any) -> str:
        return by_id[span.parent_span_id][0] if span.parent_span_id in by_id else ""

    def server_span(service: str, name_part: str) -> Any:
        return server_spans(spans, service, name_part)[0]

    gateway = server_span("emr-gateway", "$everything")
    assert gateway.parent_span_id == bytes.fromhex(CALLER_SPAN_ID)  # continues the caller's trace
    assert gateway.name == "GET /fhir/Patient/{patient_id}/$everything"  # the template, never the id
    export = server_span("emr-records", "ExportPatient")
    assert parent_service(export) == "emr-gateway"
    assert parent_service(server_span("emr-identity", "GetPatient")) == "emr-records"
    appends = server_spans(spans, "emr-audit", "AppendEvents")
    assert "emr-records" in {parent_service(span) for span in appends}
    # Database work shows up as spans too, without statements.
    mongo = [span for _, span in spans if span.name.startswith("mongodb.")]
    assert mongo
    assert all(
        {a.key for a in span.attributes} <= {"db.system", "db.name", "db.operation", "db.mongodb.collection"}
        for span in mongo
    )
    # Nothing patient-identifying in any span: no ids in names, no values in attributes.
    for _, span in spans:
        assert patient_id not in span.name
        leaking = [a.key for a in span.attributes if patient_id in a.value.string_value]
        assert leaking == [], (span.name, leaking)
