"""/claims of the emulator with NATIONAL_EMULATOR_CLAIM_VALIDATION=strict: a valid full claim is
accepted; each broken variant is refused with 422 naming the field error, in the OperationOutcome
shape the sync service reads (issue[0].diagnostics). Basic mode still takes today's thin claim."""

import copy
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest

from emr_claims import build, sample
from emr_national_emulator.app import create_app
from emr_national_emulator.settings import EmulatorSettings
from emr_sync.claim_signing import generate_dev_signing_key, load_signing_key, sign_claim
from emr_sync.clients import Answer, send_result
from emr_sync.domain import SendOutcome


@pytest.fixture(scope="module")
def facility_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample facility's signing key and certificate, the folder the emulator trusts."""
    directory = tmp_path_factory.mktemp("facility-signing")
    generate_dev_signing_key(directory, sample.FACILITY)
    return directory


async def client_for(mode: str, facility_keys: Path) -> httpx.AsyncClient:
    app = create_app(EmulatorSettings(claim_validation=mode, facility_certificates_dir=str(facility_keys)))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
    answer = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "emr-platform", "client_secret": "dev-secret"},
    )
    assert answer.status_code == 200
    client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return client


@pytest.fixture
async def strict(facility_keys: Path) -> AsyncIterator[httpx.AsyncClient]:
    client = await client_for("strict", facility_keys)
    yield client
    await client.aclose()


@pytest.fixture
async def basic(facility_keys: Path) -> AsyncIterator[httpx.AsyncClient]:
    client = await client_for("basic", facility_keys)
    yield client
    await client.aclose()


async def send(
    client: httpx.AsyncClient, document: bytes, facility_keys: Path | None = None
) -> httpx.Response:
    """Posts ``document``, signed with the sample facility's key when ``facility_keys`` is given."""
    if facility_keys is not None:
        document = sign_claim(document, load_signing_key(facility_keys, sample.FACILITY))
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


async def test_a_valid_full_claim_is_accepted(strict: httpx.AsyncClient, facility_keys: Path) -> None:
    answer = await send(strict, sample.claim(), facility_keys)
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
    basic: httpx.AsyncClient, strict: httpx.AsyncClient, facility_keys: Path
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
    assert (await send(basic, document, facility_keys)).status_code == 201
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


# --- the visit's other documents: check-in, replacement, withdrawal ------------------------------


async def post_signed(
    client: httpx.AsyncClient, path: str, document: bytes, facility_keys: Path
) -> httpx.Response:
    signed = sign_claim(document, load_signing_key(facility_keys, sample.FACILITY))
    return await client.post(
        path,
        content=signed,
        headers={"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/xml"},
    )


async def held_visit(client: httpx.AsyncClient, link_key: str = sample.LINK_KEY) -> dict[str, object]:
    answer = await client.get(f"/claims/visits/{sample.FACILITY}/{link_key}")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


async def test_a_visit_is_checked_in_claimed_replaced_and_withdrawn(
    strict: httpx.AsyncClient, facility_keys: Path
) -> None:
    checked_in = await post_signed(strict, "/claims/checkin", sample.checkin(), facility_keys)
    assert checked_in.status_code == 201, checked_in.text
    assert checked_in.json()["MA_LK"] == sample.LINK_KEY
    first = await post_signed(strict, "/claims", sample.claim(), facility_keys)
    corrected = await post_signed(strict, "/claims", sample.claim(), facility_keys)
    assert (first.status_code, corrected.status_code) == (201, 201)
    held = await held_visit(strict)
    assert (held["checked_in"], held["replacements"], held["withdrawn"]) == (True, 1, False)
    withdrawn = await post_signed(strict, "/claims/withdrawal", sample.withdrawal(), facility_keys)
    assert withdrawn.status_code == 201, withdrawn.text
    held = await held_visit(strict)
    assert (held["withdrawn"], held["current_claim"]) == (True, None)
    # A withdrawn MA_LK takes no further claim.
    again = await post_signed(strict, "/claims", sample.claim(), facility_keys)
    assert field_errors(again) == {("XML1.MA_LK", "BAD_LINK")}


async def test_a_withdrawal_of_a_visit_the_portal_does_not_hold_is_refused(
    strict: httpx.AsyncClient, facility_keys: Path
) -> None:
    answer = await post_signed(
        strict, "/claims/withdrawal", sample.withdrawal("SYN-NEVER-SENT"), facility_keys
    )
    assert field_errors(answer) == {("HUYHOSO.MA_LK", "BAD_LINK")}


async def test_a_check_in_is_refused_by_field_unsigned_or_changed_after_signing(
    strict: httpx.AsyncClient, facility_keys: Path
) -> None:
    broken = await post_signed(
        strict, "/claims/checkin", sample.checkin(dict(sample.checkin_row(), GIOI_TINH="")), facility_keys
    )
    assert field_errors(broken) == {("XML0[1].GIOI_TINH", "REQUIRED")}
    unsigned = await strict.post(
        "/claims/checkin", content=sample.checkin(), headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert unsigned.status_code == 422
    assert unsigned.json()["issue"][0]["expression"] == ["CHUKYDONVI"]
    signed = sign_claim(sample.checkin(), load_signing_key(facility_keys, sample.FACILITY))
    changed = signed.replace(b"BN000123", b"BN000124")
    tampered = await strict.post(
        "/claims/checkin", content=changed, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert tampered.status_code == 422
    assert "digest mismatch" in tampered.json()["issue"][0]["diagnostics"]


async def test_a_code_outside_the_national_lists_is_refused(
    strict: httpx.AsyncClient, facility_keys: Path
) -> None:
    answer = await send(strict, variant({("XML2", 0, "DUONG_DUNG"): "9.99"}), facility_keys)
    assert field_errors(answer) == {("HOSO[1].XML2[1].DUONG_DUNG", "BAD_CODE")}
