"""The Decision 130/QĐ-BYT claim of a sample visit, checked field by field (pure, no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_sync.claim_xml import (
    XML1_FIELDS,
    XML2_FIELDS,
    XML3_FIELDS,
    birth_date,
    claim_xml,
    date_time,
    is_insurance_claim,
    sex_code,
)

ENCOUNTER_ID = "6f1e2d3c-4b5a-4c6d-8e7f-901a2b3c4d5e"


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def sample_patient() -> identity_pb2.Patient:
    return identity_pb2.Patient(
        patient_id="0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d",
        full_name="Nguyễn Thị Ngọc Điệp",
        birth_date="1990-05-01",
        sex=identity_pb2.SEX_FEMALE,
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079190001234"),
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value="DN4790123456789"),
            identity_pb2.Identifier(
                system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="HS-0001", facility_code="79001"
            ),
        ],
    )


def sample_visit() -> tuple[records_pb2.Encounter, list[records_pb2.ClinicalResource]]:
    encounter = records_pb2.Encounter(
        encounter_id=ENCOUNTER_ID,
        patient_id="0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d",
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        # 23:30 UTC on 14 June is 06:30 on 15 June in Vietnam.
        start_time=stamp(datetime(2024, 6, 14, 23, 30, tzinfo=UTC)),
        end_time=stamp(datetime(2024, 6, 18, 3, 5, tzinfo=UTC)),
        department="K01",
        discharge_disposition="transferred",
        insurance=records_pb2.EncounterInsurance(bhyt_number="DN4790123456789", benefit_level=4),
        version=2,
    )
    resources = [
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                condition_id="c1",
                icd10_code="J18.9",
                role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
            )
        ),
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                condition_id="c2",
                icd10_code="E11",
                role=records_pb2.DIAGNOSIS_ROLE_SECONDARY,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
            )
        ),
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                condition_id="c3",
                icd10_code="I10",
                role=records_pb2.DIAGNOSIS_ROLE_SECONDARY,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
            )
        ),
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                condition_id="c4",
                icd10_code="K29",
                role=records_pb2.DIAGNOSIS_ROLE_SECONDARY,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR,
            )
        ),
        records_pb2.ClinicalResource(
            medication_request=records_pb2.MedicationRequest(
                medication_request_id="m1",
                drug_code="40.17",
                drug_name="Paracetamol 500mg",
                status=records_pb2.MEDICATION_REQUEST_STATUS_ACTIVE,
                dose=records_pb2.Quantity(value=500, unit="mg"),
                route="oral",
                doses_per_day=3,
                quantity=records_pb2.Quantity(value=15, unit="viên"),
                authored_time=stamp(datetime(2024, 6, 15, 1, 0, tzinfo=UTC)),
            )
        ),
        records_pb2.ClinicalResource(
            procedure=records_pb2.Procedure(
                procedure_id="p1",
                code="18.0001.0001",
                status=records_pb2.PROCEDURE_STATUS_COMPLETED,
                performed_start_time=stamp(datetime(2024, 6, 15, 2, 0, tzinfo=UTC)),
                performed_end_time=stamp(datetime(2024, 6, 15, 2, 20, tzinfo=UTC)),
            )
        ),
    ]
    return encounter, resources


def envelope() -> ET.Element:
    encounter, resources = sample_visit()
    prepared = datetime(2024, 6, 18, 20, 0, tzinfo=UTC)  # 19 June in Vietnam
    return ET.fromstring(claim_xml(sample_patient(), encounter, resources, prepared))


def files() -> dict[str, ET.Element]:
    found = {}
    for element in envelope().iter("FILEHOSO"):
        kind = element.findtext("LOAIHOSO")
        content = element.findtext("NOIDUNGFILE")
        assert kind and content
        found[kind] = ET.fromstring(base64.b64decode(content, validate=True))
    return found


def test_envelope_layout() -> None:
    root = envelope()
    assert root.tag == "GIAMDINHHS"
    assert root.findtext("THONGTINDONVI/MACSKCB") == "79001"
    assert root.findtext("THONGTINHOSO/NGAYLAP") == "20240619"
    assert root.findtext("THONGTINHOSO/SOLUONGHOSO") == "1"
    kinds = [e.findtext("LOAIHOSO") for e in root.findall("THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO")]
    assert kinds == ["XML1", "XML2", "XML3"]
    assert root.find("CHUKYDONVI") is not None


def test_xml1_summary_field_by_field() -> None:
    summary = files()["XML1"]
    assert summary.tag == "TONG_HOP"
    assert [child.tag for child in summary] == list(XML1_FIELDS)
    assert {child.tag: child.text or "" for child in summary} == {
        "MA_LK": ENCOUNTER_ID,
        "STT": "1",
        "MA_BN": "HS-0001",
        "HO_TEN": "Nguyễn Thị Ngọc Điệp",
        "SO_CCCD": "079190001234",
        "NGAY_SINH": "199005010000",
        "GIOI_TINH": "2",
        "MA_THE_BHYT": "DN4790123456789",
        "MA_BENH_CHINH": "J18.9",
        "MA_BENH_KT": "E11;I10",
        "NGAY_VAO": "202406150630",
        "NGAY_RA": "202406181005",
        "SO_NGAY_DTRI": "3",
        "MA_LOAI_RV": "2",
        "MA_LOAI_KCB": "03",
        "MA_KHOA": "K01",
        "MA_CSKCB": "79001",
        "NAM_QT": "2024",
        "THANG_QT": "06",
    }


def test_xml2_drugs_field_by_field() -> None:
    drugs = files()["XML2"]
    assert drugs.tag == "CHITIEU_CHITIET_THUOC"
    (row,) = drugs.findall("DSACH_CHI_TIET_THUOC/CHI_TIET_THUOC")
    assert [child.tag for child in row] == list(XML2_FIELDS)
    assert {child.tag: child.text or "" for child in row} == {
        "MA_LK": ENCOUNTER_ID,
        "STT": "1",
        "MA_THUOC": "40.17",
        "TEN_THUOC": "Paracetamol 500mg",
        "DON_VI_TINH": "viên",
        "LIEU_DUNG": "500 mg x 3 lần/ngày",
        "DUONG_DUNG": "oral",
        "SO_LUONG": "15",
        "MA_KHOA": "K01",
        "NGAY_YL": "202406150800",
    }


def test_xml3_services_field_by_field() -> None:
    services = files()["XML3"]
    assert services.tag == "CHITIEU_CHITIET_DVKT_VTYT"
    (row,) = services.findall("DSACH_CHI_TIET_DVKT/CHI_TIET_DVKT")
    assert [child.tag for child in row] == list(XML3_FIELDS)
    assert {child.tag: child.text or "" for child in row} == {
        "MA_LK": ENCOUNTER_ID,
        "STT": "1",
        "MA_DICH_VU": "18.0001.0001",
        "SO_LUONG": "1",
        "MA_KHOA": "K01",
        "NGAY_YL": "202406150900",
        "NGAY_TH_YL": "202406150900",
        "NGAY_KQ": "202406150920",
    }


def test_visit_without_drugs_or_services_has_xml1_only() -> None:
    encounter, _ = sample_visit()
    root = ET.fromstring(claim_xml(sample_patient(), encounter, [], datetime(2024, 6, 18, tzinfo=UTC)))
    assert [e.findtext("LOAIHOSO") for e in root.iter("FILEHOSO")] == ["XML1"]


@pytest.mark.parametrize(
    ("sex", "code"),
    [
        (identity_pb2.SEX_MALE, "1"),
        (identity_pb2.SEX_FEMALE, "2"),
        (identity_pb2.SEX_OTHER, "3"),
        (identity_pb2.SEX_UNKNOWN, "3"),
        (identity_pb2.SEX_UNSPECIFIED, "3"),
    ],
)
def test_sex_codes(sex: int, code: str) -> None:
    assert sex_code(sex) == code


def test_dates_are_twelve_digits_in_vietnam_time() -> None:
    assert date_time(stamp(datetime(2024, 12, 31, 17, 59, tzinfo=UTC))) == "202501010059"
    assert date_time(Timestamp()) == ""
    assert birth_date("2001-02-03") == "200102030000"


def test_only_insured_visits_are_claimed() -> None:
    encounter, _ = sample_visit()
    assert is_insurance_claim(encounter)
    encounter.ClearField("insurance")
    assert not is_insurance_claim(encounter)
