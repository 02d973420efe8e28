"""/claims of the emulator with NATIONAL_EMULATOR_CLAIM_VALIDATION=strict: a valid full claim is
accepted; each broken variant is refused with 422 naming the field error, in the OperationOutcome
shape the sync service reads (issue[0].diagnostics). Basic mode still takes today's thin claim."""

import copy
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from xml.etree import ElementTree as ET

import httpx
import pytest

from emr_claims import build, sample
from emr_national_emulator.app import create_app
from emr_national_emulator.settings import EmulatorSettings
from emr_sync.clients import Answer, send_result
from emr_sync.domain import SendOutcome


async def client_for(mode: str) -> httpx.AsyncClient:
    app = create_app(EmulatorSettings(claim_validation=mode))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
    answer = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "emr-platform", "client_secret": "dev-secret"},
    )
    assert answer.status_code == 200
    client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return client


@pytest.fixture
async def strict() -> AsyncIterator[httpx.AsyncClient]:
    client = await client_for("strict")
    yield client
    await client.aclose()


@pytest.fixture
async def basic() -> AsyncIterator[httpx.AsyncClient]:
    client = await client_for("basic")
    yield client
    await client.aclose()


async def send(client: httpx.AsyncClient, document: bytes) -> httpx.Response:
    return await client.post(
        "/claims",
        content=document,
        headers={"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/xml"},
    )


def field_errors(answer: httpx.Response) -> set[tuple[str, str]]:
    """(location, code) of each issue of a rejection."""
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/fhir+json")
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    return {(issue["expression"][0], issue["details"]["coding"][0]["code"]) for issue in body["issue"]}


def variant(
    change: dict[tuple[str, int, str], str] | None = None,
    tweak: Callable[[str, ET.Element], None] | None = None,
) -> bytes:
    rows = sample.claim_rows()
    for (kind, index, name), value in (change or {}).items():
        rows[kind][index][name] = value
    documents = {}
    for kind, table_rows in rows.items():
        element = build.table_element(kind, table_rows)
        if tweak is not None:
            tweak(kind, element)
        documents[kind] = build.serialize(element)
    return build.submission(sample.FACILITY, [documents], sample.PREPARED_ON)


async def test_a_valid_full_claim_is_accepted(strict: httpx.AsyncClient) -> None:
    answer = await send(strict, sample.claim())
    assert answer.status_code == 201, answer.text
    assert answer.json()["MA_LK"] == sample.LINK_KEY


async def test_a_missing_required_value_is_refused(strict: httpx.AsyncClient) -> None:
    answer = await send(strict, variant({("XML1", 0, "HO_TEN"): ""}))
    assert field_errors(answer) == {("HOSO[1].XML1[1].HO_TEN", "REQUIRED")}
    assert answer.json()["issue"][0]["diagnostics"].startswith("HOSO[1].XML1[1].HO_TEN REQUIRED")


async def test_a_too_long_value_is_refused(strict: httpx.AsyncClient) -> None:
    answer = await send(strict, variant({("XML2", 1, "MA_KHOA"): "K" * 51}))
    assert field_errors(answer) == {("HOSO[1].XML2[2].MA_KHOA", "TOO_LONG")}


async def test_elements_in_the_wrong_order_are_refused(strict: httpx.AsyncClient) -> None:
    def swap(kind: str, root: ET.Element) -> None:
        if kind == "XML3":
            row = root[0][0]
            row[2], row[3] = copy.deepcopy(row[3]), copy.deepcopy(row[2])  # MA_DICH_VU, MA_PTTT_QT

    answer = await send(strict, variant(tweak=swap))
    assert field_errors(answer) == {("HOSO[1].XML3[1].MA_PTTT_QT", "BAD_ORDER")}


async def test_a_number_in_exponent_form_is_refused(strict: httpx.AsyncClient) -> None:
    answer = await send(strict, variant({("XML3", 0, "DON_GIA_BV"): "5E+4"}))
    assert field_errors(answer) == {("HOSO[1].XML3[1].DON_GIA_BV", "BAD_FORMAT")}


async def test_a_wrong_total_is_refused(strict: httpx.AsyncClient) -> None:
    rows = sample.claim_rows()
    answer = await send(strict, variant({("XML1", 0, "T_TONGCHI_BV"): rows["XML1"][0]["T_THUOC"]}))
    assert field_errors(answer) == {("HOSO[1].XML1[1].T_TONGCHI_BV", "TOTAL_MISMATCH")}


async def test_a_row_of_another_visit_is_refused(strict: httpx.AsyncClient) -> None:
    answer = await send(strict, variant({("XML4", 0, "MA_LK"): "SYN-OTHER"}))
    assert field_errors(answer) == {("HOSO[1].XML4[1].MA_LK", "LINK_MISMATCH")}


async def test_a_refused_claim_is_not_held(strict: httpx.AsyncClient) -> None:
    key = str(uuid.uuid4())
    answer = await strict.post(
        "/claims", content=variant({("XML1", 0, "HO_TEN"): ""}), headers={"Idempotency-Key": key}
    )
    assert answer.status_code == 422
    assert (await strict.get(f"/deliveries/{key}")).status_code == 404


async def test_todays_thin_claim_passes_basic_and_fails_strict(
    basic: httpx.AsyncClient, strict: httpx.AsyncClient
) -> None:
    summary = ET.Element("TONG_HOP")
    for name, value in (
        ("MA_LK", sample.LINK_KEY),
        ("STT", "1"),
        ("MA_BN", "BN000123"),
        ("MA_THE_BHYT", "GD4797900000001"),
        ("NGAY_VAO", "202503100830"),
        ("MA_CSKCB", sample.FACILITY),
    ):
        ET.SubElement(summary, name).text = value
    document = build.submission(sample.FACILITY, [{"XML1": build.serialize(summary)}], sample.PREPARED_ON)
    assert (await send(basic, document)).status_code == 201
    errors = field_errors(await send(strict, document))
    assert ("HOSO[1].XML1[1].HO_TEN", "MISSING_ELEMENT") in errors


async def test_strict_answers_a_body_that_is_not_xml(strict: httpx.AsyncClient) -> None:
    assert field_errors(await send(strict, b"{}")) == {("GIAMDINHHS", "MALFORMED")}


async def test_the_sync_service_reads_a_field_rejection_as_final_with_its_first_error(
    strict: httpx.AsyncClient,
) -> None:
    answer = await send(strict, variant({("XML1", 0, "HO_TEN"): ""}))
    result = send_result(
        Answer(answer.status_code, dict(answer.headers), answer.content),
        default_retry_after=timedelta(seconds=1),
    )
    assert result.outcome == SendOutcome.REJECTED
    assert result.error == "HTTP 422: HOSO[1].XML1[1].HO_TEN REQUIRED: HO_TEN is required"
