"""The gateway's FHIR R4 search and $everything over the records service, through real processes:
data goes in through the records gRPC API, comes out as FHIR over HTTP and is validated with the
fhir.resources R4B models."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from typing import Any

import httpx
import pytest
from emr.audit.v1 import audit_pb2
from emr.records.v1 import records_pb2
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from google.protobuf.timestamp_pb2 import Timestamp

from emr_devstack.processes import free_port
from emr_devstack.tokens import issue_token
from emr_fhir.resources import EXT_CONTENT_SHA256

PORTAL_HEADERS = {
    "Authorization": f"Bearer {issue_token('portal-fhir-test', '79002')}",
    "X-Purpose-Of-Use": "TREATMENT",
}
HEART_RATE = "8867-4"
BODY_TEMPERATURE = "8310-5"
FHIR_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Observation": Observation,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "Procedure": Procedure,
    "DocumentReference": DocumentReference,
}


def hours_ago(hours: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(time.time() - hours * 3600))
    return stamp


def observation(
    patient_id: str,
    facility_code: str,
    encounter_id: str,
    loinc_code: str,
    value: float,
    unit: str,
    hours: float,
) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        observation=records_pb2.Observation(
            patient_id=patient_id,
            facility_code=facility_code,
            encounter_id=encounter_id,
            loinc_code=loinc_code,
            status=records_pb2.OBSERVATION_STATUS_FINAL,
            value_quantity=records_pb2.Quantity(value=value, unit=unit),
            effective_time=hours_ago(hours),
        )
    )


def fhir_json(response: httpx.Response, status_code: int = 200) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    return body


def searchset(response: httpx.Response) -> tuple[Bundle, dict[str, Any]]:
    body = fhir_json(response)
    bundle = Bundle.model_validate(body)
    assert bundle.type == "searchset"
    return bundle, body


def links(bundle: Bundle) -> dict[str, str]:
    return {link.relation: link.url for link in bundle.link}


def outcome(response: httpx.Response, status_code: int, issue_code: str) -> str:
    """Checks an error answer is an OperationOutcome with this status and issue type; its text."""
    result = OperationOutcome.model_validate(fhir_json(response, status_code))
    (issue,) = result.issue
    assert (issue.severity, issue.code) == ("error", issue_code)
    return str(issue.diagnostics)


# --- Encounter search (ListEncounters) -------------------------------------------------------------


async def test_encounter_search_pages_with_self_and_next_links(
    stack: Any, clinical: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    created = [await clinical.encounter(patient_id, facility_code, hours * 3600) for hours in (30, 20, 10)]
    newest_first = list(reversed(created))

    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        first, first_json = searchset(
            await http.get(
                "/fhir/Encounter", params={"patient": patient_id, "_count": "2"}, headers=PORTAL_HEADERS
            )
        )
        first_links = links(first)
        assert set(first_links) == {"self", "next"}
        assert first_links["self"] == f"{stack.url('gateway')}/fhir/Encounter?patient={patient_id}&_count=2"
        second, _ = searchset(await http.get(first_links["next"], headers=PORTAL_HEADERS))
        assert set(links(second)) == {"self"}
        assert links(second)["self"] == first_links["next"]
        # The relative reference form of the parameter finds the same encounters.
        everything, _ = searchset(
            await http.get("/fhir/Encounter", params={"patient": f"Patient/{patient_id}"})
        )

    paged = [entry.resource for entry in first.entry + second.entry]
    assert [encounter.id for encounter in paged] == newest_first
    assert [entry.resource.id for entry in everything.entry] == newest_first
    assert [entry.fullUrl for entry in first.entry] == [
        f"{stack.url('gateway')}/fhir/Encounter/{encounter_id}" for encounter_id in newest_first[:2]
    ]
    assert all(entry.search.mode == "match" for entry in first.entry + second.entry)
    for entry in first_json["entry"]:
        encounter = Encounter.model_validate(entry["resource"])
        assert encounter.subject.reference == f"Patient/{patient_id}"
        assert encounter.status == "finished"
        assert encounter.class_fhir.code == "IMP"
        assert encounter.serviceProvider.identifier.value == facility_code
        assert encounter.period.start < encounter.period.end


async def test_encounter_search_of_a_patient_without_encounters_is_an_empty_searchset(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        bundle, body = searchset(await http.get("/fhir/Encounter", params={"patient": str(uuid.uuid4())}))
    assert "entry" not in body
    assert set(links(bundle)) == {"self"}


async def test_encounter_search_is_audited_as_the_http_caller(
    stack: Any, clinical: Any, audit: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        searchset(await http.get("/fhir/Encounter", params={"patient": patient_id}, headers=PORTAL_HEADERS))

    deadline = time.monotonic() + 20
    while True:
        page = await audit.QueryEvents(audit_pb2.QueryEventsRequest(patient_id=patient_id))
        searches = [e for e in page.events if e.operation.endswith("/ListEncounters")]
        if searches:
            break
        assert time.monotonic() < deadline, "the search never reached the audit log"
        await asyncio.sleep(0.1)
    (event,) = searches
    assert event.actor_id == "portal-fhir-test"
    assert event.actor_facility_code == "79002"
    assert event.purpose_of_use == "TREATMENT"
    assert event.action == audit_pb2.AUDIT_ACTION_SEARCH


async def test_bad_search_requests_get_operation_outcomes(stack: Any) -> None:
    patient_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        for path, params, named in [
            ("/fhir/Encounter", {}, "patient"),
            ("/fhir/Encounter", {"patient": ""}, "patient"),
            ("/fhir/Encounter", {"patient": f"Practitioner/{patient_id}"}, "patient"),
            ("/fhir/Encounter", {"patient": "not an id"}, "patient"),
            ("/fhir/Encounter", {"patient": patient_id, "_count": "many"}, "_count"),
            ("/fhir/Encounter", {"patient": patient_id, "_count": "0"}, "_count"),
            ("/fhir/Observation", {}, "patient"),
            ("/fhir/Observation", {"patient": "Patient/a b"}, "patient"),
            (
                "/fhir/Observation",
                {"patient": patient_id, "code": "http://snomed.info/sct|271649006"},
                "code",
            ),
            (
                "/fhir/Observation",
                {"patient": patient_id, "code": f"{HEART_RATE},{BODY_TEMPERATURE}"},
                "code",
            ),
        ]:
            diagnostics = outcome(await http.get(path, params=params), 400, "invalid")
            assert named in diagnostics, (path, params, diagnostics)
        # A cursor the records service never issued: its INVALID_ARGUMENT becomes a 400.
        diagnostics = outcome(
            await http.get("/fhir/Encounter", params={"patient": patient_id, "_cursor": "!!not-issued!!"}),
            400,
            "invalid",
        )
        assert "page_token" in diagnostics
        outcome(await http.get("/fhir/Patient/not%20an%20id/$everything"), 400, "invalid")
        outcome(await http.get("/fhir/NoSuchType"), 404, "not-found")
        outcome(await http.post("/fhir/Encounter"), 405, "not-supported")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Purpose-Of-Use", "trị liệu".encode()),  # UTF-8 bytes, as a browser or HIS sends them
        ("X-Purpose-Of-Use", b"TREATMENT\x01"),
        ("X-Purpose-Of-Use", b"T" * 65),
        ("X-Purpose-Of-Use", "điều trị khẩn".encode()),
        ("Authorization", b"Bearer " + b"a" * 9000),
        ("Authorization", "Bearer ñ".encode("latin-1")),
    ],
    ids=["purpose-utf8", "purpose-control", "purpose-long", "purpose-utf8-d", "token-long", "token-latin1"],
)
async def test_a_forwarded_header_grpc_cannot_carry_is_400_naming_it(
    stack: Any, header: str, value: bytes
) -> None:
    """Before, a non-ASCII X-Purpose-Of-Use never got an answer: gRPC refused the metadata and the
    gateway's call waited for a status forever, holding its memory."""
    headers = {name.encode(): text.encode() for name, text in PORTAL_HEADERS.items()} | {
        header.encode(): value
    }
    async with httpx.AsyncClient(base_url=stack.url("gateway"), timeout=10) as http:
        for path in (f"/fhir/Patient/{uuid.uuid4()}", f"/fhir/Encounter?patient={uuid.uuid4()}"):
            diagnostics = outcome(await http.get(path, headers=headers), 400, "invalid")
            assert header in diagnostics and "printable ASCII" in diagnostics
            assert value.decode("latin-1") not in diagnostics
        # The gateway goes on answering (the unknown patient is the identity service's 404).
        outcome(await http.get(f"/fhir/Patient/{uuid.uuid4()}", headers=PORTAL_HEADERS), 404, "not-found")


async def test_records_service_down_is_503_with_an_operation_outcome(stack: Any) -> None:
    ports = stack.with_ports(gateway=free_port())
    name = "gateway-without-records"
    stack.start_service(
        "gateway", ports, name=name, extra_env={"GATEWAY_RECORDS_TARGET": f"127.0.0.1:{free_port()}"}
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.gateway}", timeout=30) as http:
            response = await http.get("/fhir/Encounter", params={"patient": str(uuid.uuid4())})
        diagnostics = outcome(response, 503, "transient")
        assert "127.0.0.1" not in diagnostics  # no internal addresses to HTTP callers
    finally:
        stack.processes.pop(name).stop()


# --- Observation search (ListObservations; awaits the records service's CreateResource) ------------


async def test_observation_search_by_code_with_or_without_system(
    stack: Any, clinical: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code, 43200)
    heart_rates = [
        await clinical.create(
            observation(patient_id, facility_code, encounter_id, HEART_RATE, rate, "/min", hours)
        )
        for rate, hours in ((88, 11), (96, 10), (104, 9))
    ]
    await clinical.create(
        observation(patient_id, facility_code, encounter_id, BODY_TEMPERATURE, 38.5, "Cel", 10.5)
    )
    newest_first = [r.observation.observation_id for r in reversed(heart_rates)]

    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        first, first_json = searchset(
            await http.get(
                "/fhir/Observation",
                params={"patient": patient_id, "code": f"http://loinc.org|{HEART_RATE}", "_count": "2"},
                headers=PORTAL_HEADERS,
            )
        )
        assert set(links(first)) == {"self", "next"}
        second, _ = searchset(await http.get(links(first)["next"]))
        assert set(links(second)) == {"self"}
        bare_code, _ = searchset(
            await http.get("/fhir/Observation", params={"patient": patient_id, "code": HEART_RATE})
        )
        every_code, _ = searchset(await http.get("/fhir/Observation", params={"patient": patient_id}))

    assert [entry.resource.id for entry in first.entry + second.entry] == newest_first
    assert [entry.resource.id for entry in bare_code.entry] == newest_first
    assert len(every_code.entry) == 4
    for entry in first_json["entry"]:
        resource = Observation.model_validate(entry["resource"])
        assert [(c.system, c.code) for c in resource.code.coding] == [("http://loinc.org", HEART_RATE)]
        assert resource.valueQuantity.system == "http://unitsofmeasure.org"
        assert resource.valueQuantity.code == "/min"
        assert resource.encounter.reference == f"Encounter/{encounter_id}"
        assert resource.subject.reference == f"Patient/{patient_id}"


# --- Patient/$everything (ExportPatient; awaits the records service) -------------------------------


async def test_everything_returns_every_resource_type_as_valid_fhir(
    stack: Any, clinical: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    encounter_id = await clinical.encounter(patient_id, facility_code, 21600)
    resources = clinical.every_resource(patient_id, facility_code, encounter_id)
    content = resources[-1].document_reference.content
    for resource in resources:
        await clinical.create(resource)

    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        response = await http.get(f"/fhir/Patient/{patient_id}/$everything", headers=PORTAL_HEADERS)
    bundle, body = searchset(response)
    assert links(bundle)["self"] == f"{stack.url('gateway')}/fhir/Patient/{patient_id}/$everything"
    resources = [entry["resource"] for entry in body["entry"]]
    assert sorted(r["resourceType"] for r in resources) == sorted(FHIR_MODELS)
    for resource in resources:
        FHIR_MODELS[resource["resourceType"]].model_validate(resource)
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    assert patient["id"] == patient_id

    # Every literal reference resolves to an entry of the bundle.
    full_urls = {entry["fullUrl"] for entry in body["entry"]}
    references = list(_references(resources))
    assert len(references) >= 8
    assert [ref for ref in references if ref not in full_urls] == []

    (document,) = [r for r in resources if r["resourceType"] == "DocumentReference"]
    attachment = document["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]) == content
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(content).digest()).decode()
    sha256 = [e["valueString"] for e in attachment["extension"] if e["url"] == EXT_CONTENT_SHA256]
    assert sha256 == [hashlib.sha256(content).hexdigest()]


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


async def test_everything_of_an_unknown_patient_is_not_found(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.url("gateway"), headers=PORTAL_HEADERS) as http:
        response = await http.get(f"/fhir/Patient/{uuid.uuid4()}/$everything")
    assert "patient_id" in outcome(response, 404, "not-found")
