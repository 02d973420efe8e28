"""The Decision 130/QĐ-BYT claim engine (emr_sync.claim_xml) on two golden visits, pure, no I/O.

Golden files (``golden/<visit>_xml<N>.xml``): the expected table documents of (a) an outpatient
examination and (b) a four-day inpatient stay with drugs, services, a bed day, a supply, a lab result,
progress notes, a card changed during the stay and a transfer out. How they were checked: the files
were written by the builder once, then read element by element against the field table of their
XML (``emr_claims/tables/xmlN.csv``: order, size, format) and against the visit below (each value's
source is named in ``summary_row``/``drug_row``/``service_row``); the money was worked out by hand
with the 3176 formulas and is asserted independently of the files in
``test_inpatient_amounts_worked_by_hand`` and ``test_outpatient_amounts_worked_by_hand``; dates were
converted to Vietnam time (UTC+7) by hand. ``UPDATE_GOLDEN=1`` rewrites them (review the diff).
"""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_claims import build, validate
from emr_claims.spec import table
from emr_sync.claim_xml import (
    ClaimDataError,
    ClaimDetails,
    SubmissionKind,
    birth_moment,
    checkin_xml,
    claim_documents,
    claim_problems,
    claim_rows,
    claim_xml,
    date_time,
    discharge_kind,
    is_insurance_claim,
    personal_number,
    problems_reason,
    sex_code,
    submission_kind,
    treatment_outcome,
    visit_kind,
    withdrawal_xml,
)

GOLDEN = Path(__file__).parent / "golden"
INPATIENT_ID = "6f1e2d3c-4b5a-4c6d-8e7f-901a2b3c4d5e"
OUTPATIENT_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
PREPARED = datetime(2024, 6, 18, 20, 0, tzinfo=UTC)  # 19 June in Vietnam
DOCTOR = "000001/BYT-GPHN"
DETAILS = ClaimDetails(facility_head_code="000002/BYT-GPHN")


def with_claim_profile(patient: identity_pb2.Patient) -> identity_pb2.Patient:
    """What identity holds of the golden patients for the claim: a 2024 address, with its district."""
    patient.nationality_code, patient.ethnicity_code, patient.occupation_code = "000", "01", "00"
    patient.address = "12 Đường Thử, Phường Thử, Quận Thử, TP Thử"
    patient.district_code, patient.commune_code = "760", "26734"
    return patient


def stamp(year: int, month: int, day: int, hour: int, minute: int) -> Timestamp:
    """A UTC moment."""
    result = Timestamp()
    result.FromDatetime(datetime(year, month, day, hour, minute, tzinfo=UTC))
    return result


def inpatient_patient() -> identity_pb2.Patient:
    return with_claim_profile(
        identity_pb2.Patient(
            patient_id="0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d",
            full_name="Nguyễn Thị Ngọc Điệp",
            birth_date="1990-05",  # day unknown: NGAY_SINH 199000000000
            sex=identity_pb2.SEX_FEMALE,
            phone="0901234567",
            province_code="79",
            current_province_code="79",
            identifiers=[
                identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value="079190001234"),
                identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value="DN4790123456789"),
                identity_pb2.Identifier(
                    system=identity_pb2.IDENTIFIER_SYSTEM_MRN, value="HS-0001", facility_code="79001"
                ),
            ],
        )
    )


def charge(line_id: str, kind: int, code: str, name: str, **fields: object) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        charge_line=records_pb2.ChargeLine(
            charge_line_id=line_id,
            kind=kind,  # type: ignore[arg-type]
            code=code,
            name=name,
            scope="1",
            ordering_practitioner_code=DOCTOR,
            **{"status": records_pb2.CHARGE_LINE_STATUS_ACTIVE, **fields},  # type: ignore[arg-type]
        )
    )


def condition(
    code: str, role: int, status: int = records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE
) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        condition=records_pb2.Condition(icd10_code=code, role=role, clinical_status=status)  # type: ignore[arg-type]
    )


def inpatient_visit() -> tuple[records_pb2.Encounter, list[records_pb2.ClinicalResource]]:
    """Arrived 15 June 06:30, admitted 08:00, transferred out 18 June 10:05 (Vietnam time): 4 days."""
    encounter = records_pb2.Encounter(
        encounter_id=INPATIENT_ID,
        treatment_method="Nội khoa",
        patient_id="0b6c3f4e-3a1d-5b1f-9c7e-2d6f8a9b0c1d",
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
        visit_type=records_pb2.VISIT_TYPE_INPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=stamp(2024, 6, 14, 23, 30),
        end_time=stamp(2024, 6, 18, 3, 5),
        department="Khoa Nội tổng hợp",
        discharge_disposition="other-hcf",
        insurance=records_pb2.EncounterInsurance(bhyt_number="DN4790123456789", benefit_level=4),
        insurance_cards=[
            records_pb2.InsuranceCard(
                card_number="DN4790123456789",
                registered_facility_code="79001",
                valid_from="2024-01-01",
                valid_to="2024-06-16",
            ),
            records_pb2.InsuranceCard(
                card_number="DN4790123456790",
                registered_facility_code="79003",
                valid_from="2024-06-17",
                valid_to="2025-06-16",
            ),
        ],
        admission=records_pb2.EncounterAdmission(
            reason="Sốt cao, ho",
            admission_diagnosis="Viêm phổi",
            inpatient_admission_time=stamp(2024, 6, 15, 1, 0),
            inpatient_reason="Sốt cao 39 độ, khó thở",
            visit_subject_code="1.1",
        ),
        discharge=records_pb2.EncounterDischarge(
            discharge_diagnosis="Viêm phổi; Đái tháo đường type 2; Tăng huyết áp",
            outcome=records_pb2.TREATMENT_OUTCOME_IMPROVED,
            kind=records_pb2.DISCHARGE_KIND_TRANSFERRED,
            referred_to_facility_code="79002",
        ),
        departments=[
            records_pb2.EncounterDepartment(department_code="K01"),
            records_pb2.EncounterDepartment(department_code="K26"),
        ],
        weight_kg="52.50",
        medical_record_number="HSBA-2024-0001",
        version=1,
    )
    resources = [
        condition("J18.9", records_pb2.DIAGNOSIS_ROLE_PRIMARY),
        condition("E11", records_pb2.DIAGNOSIS_ROLE_SECONDARY),
        condition("I10", records_pb2.DIAGNOSIS_ROLE_SECONDARY),
        condition(
            "K29",
            records_pb2.DIAGNOSIS_ROLE_SECONDARY,
            records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR,
        ),
        charge(
            "d1",
            records_pb2.CHARGE_LINE_KIND_DRUG,
            "40.17",
            "Paracetamol 500mg",
            unit="viên",
            payment_group="4",
            quantity="15",
            hospital_unit_price="1500.5",
            bid_info="100/QĐ-SYT;G1;N1;2024",
            insurance_payment_ratio=100,
            department_code="K01",
            order_time=stamp(2024, 6, 15, 1, 0),
            execution_time=stamp(2024, 6, 15, 1, 30),
            drug=records_pb2.ChargeLineDrug(
                strength="500mg",
                route_code="1.01",
                dose="1 viên/lần x 3 lần/ngày",
                usage="Uống sau ăn",
                registration_number="VD-12345-10",
                dosage_form="Viên nén",
            ),
        ),
        charge(
            "d2",
            records_pb2.CHARGE_LINE_KIND_DRUG,
            "40.2",
            "Amoxicillin 500mg",
            unit="viên",
            payment_group="4",
            quantity="10",
            hospital_unit_price="333.333",
            bid_info="100/QĐ-SYT;G1;N1;2024",
            insurance_payment_ratio=50,
            department_code="K26",
            order_time=stamp(2024, 6, 16, 2, 0),
            execution_time=stamp(2024, 6, 16, 2, 15),
            drug=records_pb2.ChargeLineDrug(
                strength="500mg",
                route_code="1.01",
                dose="1 viên/lần x 2 lần/ngày",
                usage="Uống",
                registration_number="VD-22222-20",
                dosage_form="Viên nang",
            ),
        ),
        charge(
            "s1",
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "02.1896",
            "Khám Nội",
            unit="lần",
            payment_group="13",
            quantity="1",
            hospital_unit_price="50000",
            insurance_unit_price="50000",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K01",
            performer_code=DOCTOR,
            order_time=stamp(2024, 6, 14, 23, 40),
            execution_time=stamp(2024, 6, 14, 23, 45),
            result_time=stamp(2024, 6, 15, 0, 0),
            service=records_pb2.ChargeLineService(diagnosis_codes=["J18.9"]),
        ),
        charge(
            "s2",
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "22.0001.1234",
            "Tổng phân tích tế bào máu ngoại vi",
            unit="lần",
            payment_group="1",
            quantity="1",
            hospital_unit_price="46200",
            insurance_unit_price="46200",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K01",
            performer_code="000004/BYT-GPHN",
            order_time=stamp(2024, 6, 15, 1, 10),
            execution_time=stamp(2024, 6, 15, 1, 20),
            result_time=stamp(2024, 6, 15, 3, 0),
            service=records_pb2.ChargeLineService(diagnosis_codes=["J18.9", "E11"]),
        ),
        charge(
            "s3",
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "K01.1902",
            "Ngày giường bệnh Nội khoa loại 2",
            unit="ngày",
            payment_group="15",
            quantity="3",
            hospital_unit_price="200000",
            insurance_unit_price="180000",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K26",
            order_time=stamp(2024, 6, 15, 1, 0),
            execution_time=stamp(2024, 6, 15, 1, 0),
            result_time=stamp(2024, 6, 18, 3, 0),
            service=records_pb2.ChargeLineService(bed_code="H012"),
        ),
        charge(
            "v1",
            records_pb2.CHARGE_LINE_KIND_SUPPLY,
            "N03.01.010",
            "Bơm tiêm dùng một lần 5ml",
            unit="cái",
            payment_group="10",
            quantity="4",
            hospital_unit_price="12000",
            insurance_unit_price="10000",
            bid_info="101/QĐ-SYT;G2;N1;2024",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K01",
            order_time=stamp(2024, 6, 15, 1, 30),
            execution_time=stamp(2024, 6, 15, 1, 35),
        ),
        charge(
            "x1",
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "18.0001.0001",
            "Chụp X-quang ngực thẳng",
            status=records_pb2.CHARGE_LINE_STATUS_CANCELLED,
            unit="lần",
            payment_group="2",
            quantity="1",
            hospital_unit_price="65400",
            insurance_unit_price="65400",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K01",
            order_time=stamp(2024, 6, 15, 1, 0),
        ),
        records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                loinc_code="6690-2",
                status=records_pb2.OBSERVATION_STATUS_FINAL,
                value_quantity=records_pb2.Quantity(value=12.5, unit="G/L"),
                effective_time=stamp(2024, 6, 15, 3, 0),
                index_code="WBC",
                index_name="Số lượng bạch cầu",
                service_code="22.0001.1234",
                reading_practitioner_code="000003/BYT-GPHN",
                conclusion="Bạch cầu tăng",
            )
        ),
        records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                loinc_code="8867-4",
                status=records_pb2.OBSERVATION_STATUS_FINAL,
                value_quantity=records_pb2.Quantity(value=90, unit="/min"),
                effective_time=stamp(2024, 6, 15, 0, 0),
            )
        ),
        records_pb2.ClinicalResource(
            progress_note=records_pb2.ProgressNote(
                status=records_pb2.PROGRESS_NOTE_STATUS_CURRENT,
                clinical_course="Sốt 39 độ, ho đờm; mạch 90, HA 120/70",
                disease_stage="Giai đoạn cấp",
                note_time=stamp(2024, 6, 15, 5, 0),
                performer_code=DOCTOR,
            )
        ),
        records_pb2.ClinicalResource(
            progress_note=records_pb2.ProgressNote(
                status=records_pb2.PROGRESS_NOTE_STATUS_ENTERED_IN_ERROR,
                clinical_course="Ghi nhầm",
                note_time=stamp(2024, 6, 15, 6, 0),
                performer_code=DOCTOR,
            )
        ),
        records_pb2.ClinicalResource(
            progress_note=records_pb2.ProgressNote(
                status=records_pb2.PROGRESS_NOTE_STATUS_CURRENT,
                clinical_course="Hết sốt, còn ho; chuyển tuyến điều trị tiếp",
                consultation="Hội chẩn khoa: chuyển tuyến",
                note_time=stamp(2024, 6, 18, 2, 0),
                performer_code=DOCTOR,
            )
        ),
    ]
    return encounter, resources


def outpatient_patient() -> identity_pb2.Patient:
    """A Vietnamese patient with no CCCD on record, identified by passport (the SO_CCCD alternative),
    born in 1985 (year only)."""
    return with_claim_profile(
        identity_pb2.Patient(
            patient_id="9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
            full_name="Phạm Văn Thử",
            birth_date="1985",
            sex=identity_pb2.SEX_MALE,
            province_code="79",
            current_province_code="79",
            identifiers=[
                identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_PASSPORT, value="B1234567"),
                identity_pb2.Identifier(
                    system=identity_pb2.IDENTIFIER_SYSTEM_BHYT,
                    value="HN2790000000123",
                    bhyt_card=identity_pb2.BhytCard(
                        valid_from="2024-01-01", valid_to="2024-12-31", primary_care_facility_code="79001"
                    ),
                ),
            ],
        )
    )


def outpatient_visit() -> tuple[records_pb2.Encounter, list[records_pb2.ClinicalResource]]:
    """An examination on 2 July 08:15-09:40 (Vietnam time) recorded the old way: no visit_type, no
    insurance_cards (the card from encounter.insurance and the patient's BHYT identifier), a
    disposition "home"; benefit level 2 (the card's third character): the fund pays 100%."""
    encounter = records_pb2.Encounter(
        encounter_id=OUTPATIENT_ID,
        treatment_method="Nội khoa",
        patient_id="9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=stamp(2024, 7, 2, 1, 15),
        end_time=stamp(2024, 7, 2, 2, 40),
        reason="Ngứa, nổi mẩn",
        discharge_disposition="home",
        insurance=records_pb2.EncounterInsurance(bhyt_number="HN2790000000123", benefit_level=2),
        admission=records_pb2.EncounterAdmission(admission_diagnosis="Mày đay", visit_subject_code="1.1"),
        discharge=records_pb2.EncounterDischarge(
            discharge_diagnosis="Mày đay dị ứng",
            outcome=records_pb2.TREATMENT_OUTCOME_CURED,
            follow_up_date="2024-07-16",
        ),
        departments=[records_pb2.EncounterDepartment(department_code="K01")],
        weight_kg="70",
        medical_record_number="PK-2024-0777",
        version=1,
    )
    resources = [
        condition("L50.0", records_pb2.DIAGNOSIS_ROLE_PRIMARY),
        charge(
            "s1",
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "02.1896",
            "Khám Da liễu",
            unit="lần",
            payment_group="13",
            quantity="1",
            hospital_unit_price="39000",
            insurance_unit_price="39000",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            department_code="K01",
            performer_code=DOCTOR,
            order_time=stamp(2024, 7, 2, 1, 20),
            execution_time=stamp(2024, 7, 2, 1, 25),
            result_time=stamp(2024, 7, 2, 1, 45),
        ),
        charge(
            "d1",
            records_pb2.CHARGE_LINE_KIND_DRUG,
            "40.525",
            "Loratadin 10mg",
            unit="viên",
            payment_group="4",
            quantity="10",
            hospital_unit_price="420",
            bid_info="100/QĐ-SYT;G1;N4;2024",
            insurance_payment_ratio=100,
            department_code="K01",
            order_time=stamp(2024, 7, 2, 2, 30),
            drug=records_pb2.ChargeLineDrug(
                strength="10mg",
                route_code="1.01",
                dose="1 viên/lần x 1 lần/ngày",
                usage="Uống buổi tối",
                registration_number="VD-33333-30",
                dosage_form="Viên nén",
            ),
        ),
    ]
    return encounter, resources


def documents(visit: str) -> dict[str, bytes]:
    if visit == "inpatient":
        encounter, resources = inpatient_visit()
        patient = inpatient_patient()
    else:
        encounter, resources = outpatient_visit()
        patient = outpatient_patient()
    built = claim_documents(claim_rows(patient, encounter, resources, DETAILS))
    built["XML0"] = checkin_xml(patient, encounter, resources)
    return built


def rows_of(document: bytes) -> list[dict[str, str]]:
    root = ET.fromstring(document)
    elements = [root] if root.tag == "TONG_HOP" else list(root[0])
    return [{child.tag: child.text or "" for child in element} for element in elements]


GOLDEN_TABLES = [("outpatient", kind) for kind in ("XML0", "XML1", "XML2", "XML3")] + [
    ("inpatient", kind) for kind in ("XML0", "XML1", "XML2", "XML3", "XML4", "XML5")
]


@pytest.mark.parametrize(("visit", "kind"), GOLDEN_TABLES)
def test_built_tables_equal_the_golden_files(visit: str, kind: str) -> None:
    built = documents(visit)[kind]
    path = GOLDEN / f"{visit}_{kind.lower()}.xml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        ET.indent(pretty := ET.fromstring(built))
        path.write_bytes(ET.tostring(pretty, encoding="utf-8", xml_declaration=True) + b"\n")
    ET.indent(expected := ET.fromstring(path.read_bytes()))
    ET.indent(written := ET.fromstring(built))
    assert ET.tostring(written, encoding="unicode") == ET.tostring(expected, encoding="unicode")
    # Every field of the table, in order, in every row.
    assert all(list(row) == list(table(kind).names) for row in rows_of(built))


def test_outpatient_has_no_result_or_progress_tables() -> None:
    assert sorted(documents("outpatient")) == ["XML0", "XML1", "XML2", "XML3"]


@pytest.mark.parametrize("visit", ["outpatient", "inpatient"])
def test_golden_claims_pass_the_strict_validator(visit: str) -> None:
    built = documents(visit)
    checkin = built.pop("XML0")
    assert validate.validate_checkin(checkin) == []
    assert validate.validate_submission(build.submission("79001", [built], PREPARED.date())) == []


def test_the_claim_xml_envelope_is_valid_and_carries_the_tables_in_order() -> None:
    encounter, resources = inpatient_visit()
    submission = claim_xml(inpatient_patient(), encounter, resources, PREPARED, DETAILS)
    assert claim_problems(submission) == []
    root = ET.fromstring(submission)
    assert root.findtext("THONGTINHOSO/NGAYLAP") == "20240619"
    files = root.findall("THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO")
    assert [f.findtext("LOAIHOSO") for f in files] == ["XML1", "XML2", "XML3", "XML4", "XML5"]
    assert base64.b64decode(files[0].findtext("NOIDUNGFILE") or "") == documents("inpatient")["XML1"]


def _summary(visit: str) -> dict[str, str]:
    return rows_of(documents(visit)["XML1"])[0]


def test_inpatient_amounts_worked_by_hand() -> None:
    """Benefit level 4 (card DN4...): the fund pays 80% of the insured amount.
    Paracetamol 15 x 1500.5 = 22507.5, insured 100%: fund 18006, co-pay 4501.5.
    Amoxicillin 10 x 333.333 = 3333.33; insured 50%: 1666.665 -> 1666.67; fund 1333.336 -> 1333.34,
    co-pay 333.33, self-pay 3333.33 - 1666.67 = 1666.66.
    Examination 50000: fund 40000, co-pay 10000. Blood count 46200: 36960, 9240.
    Bed 3 days x 200000 = 600000, insured 3 x 180000 = 540000: fund 432000, co-pay 108000, self 60000.
    Syringes 4 x 12000 = 48000, insured 40000: fund 32000, co-pay 8000, self 8000."""
    drugs = rows_of(documents("inpatient")["XML2"])
    assert [
        (r["THANH_TIEN_BV"], r["THANH_TIEN_BH"], r["T_BHTT"], r["T_BNCCT"], r["T_BNTT"]) for r in drugs
    ] == [
        ("22507.5", "22507.5", "18006", "4501.5", "0"),
        ("3333.33", "1666.67", "1333.34", "333.33", "1666.66"),
    ]
    services = rows_of(documents("inpatient")["XML3"])
    assert [
        (r["THANH_TIEN_BV"], r["THANH_TIEN_BH"], r["T_BHTT"], r["T_BNCCT"], r["T_BNTT"]) for r in services
    ] == [
        ("50000", "50000", "40000", "10000", "0"),
        ("46200", "46200", "36960", "9240", "0"),
        ("600000", "540000", "432000", "108000", "60000"),
        ("48000", "40000", "32000", "8000", "8000"),
    ]
    summary = _summary("inpatient")
    assert {name: summary[name] for name in ("T_THUOC", "T_VTYT", "T_TONGCHI_BV", "T_TONGCHI_BH")} == {
        "T_THUOC": "25840.83",
        "T_VTYT": "48000",
        "T_TONGCHI_BV": "770040.83",
        "T_TONGCHI_BH": "700374.17",
    }
    assert (summary["T_BNTT"], summary["T_BNCCT"], summary["T_BHTT"], summary["T_NGUONKHAC"]) == (
        "69666.66",
        "140074.83",
        "560299.34",
        "0",
    )
    assert Decimal("69666.66") + Decimal("140074.83") + Decimal("560299.34") == Decimal("770040.83")
    assert all(row["MUC_HUONG"] == "80" for row in [*drugs, *services])


def test_outpatient_amounts_worked_by_hand() -> None:
    """Benefit level 2 (card HN2...): 100%. Examination 39000, Loratadin 10 x 420 = 4200."""
    summary = _summary("outpatient")
    assert (summary["T_THUOC"], summary["T_VTYT"], summary["T_TONGCHI_BV"], summary["T_BHTT"]) == (
        "4200",
        "0",
        "43200",
        "43200",
    )
    assert (summary["T_BNCCT"], summary["T_BNTT"]) == ("0", "0")


def test_inpatient_summary_facts() -> None:
    """The 3176 rules and the `;` lists of the stay."""
    summary = _summary("inpatient")
    assert summary["NGAY_VAO"] == "202406150630"
    assert summary["NGAY_VAO_NOI_TRU"] == "202406150800"
    assert summary["NGAY_RA"] == "202406181005"
    assert summary["SO_NGAY_DTRI"] == "4"  # 18 - 15 + 1
    assert summary["NGAY_SINH"] == "199000000000"  # no half-known date in the claim
    assert summary["MA_THE_BHYT"] == "DN4790123456789;DN4790123456790"
    assert summary["MA_DKBD"] == "79001;79003"
    assert summary["GT_THE_TU"] == "20240101;20240617"
    assert summary["GT_THE_DEN"] == "20240616;20250616"
    assert summary["MA_KHOA"] == "K01;K26"
    assert summary["MA_BENH_KT"] == "E11;I10"  # K29 was entered in error
    assert (summary["MA_LOAI_KCB"], summary["MA_LOAI_RV"], summary["KET_QUA_DTRI"]) == ("03", "2", "2")
    assert summary["MA_NOI_DEN"] == "79002"
    assert (summary["NAM_QT"], summary["THANG_QT"]) == ("2024", "6")


def test_outpatient_summary_facts() -> None:
    summary = _summary("outpatient")
    assert summary["SO_CCCD"] == "B1234567"  # the passport when no CCCD is on record
    assert summary["NGAY_SINH"] == "198500000000"
    assert summary["SO_NGAY_DTRI"] == "1"
    assert (summary["MA_LOAI_KCB"], summary["MA_LOAI_RV"], summary["KET_QUA_DTRI"]) == ("01", "1", "1")
    assert (summary["MA_THE_BHYT"], summary["MA_DKBD"]) == ("HN2790000000123", "79001")
    assert (summary["GT_THE_TU"], summary["GT_THE_DEN"]) == ("20240101", "20241231")
    assert summary["NGAY_TAI_KHAM"] == "20240716"


# --- broken variants: the strict validator names the field ----------------------------------------


def _tables(visit: str = "inpatient") -> dict[str, list[dict[str, str]]]:
    built = documents(visit)
    built.pop("XML0")
    return {kind: rows_of(document) for kind, document in built.items()}


def _errors(tables: dict[str, list[dict[str, str]]]) -> set[tuple[str, str, str]]:
    documents_ = {kind: build.table_document(kind, rows) for kind, rows in tables.items()}
    errors = validate.validate_submission(build.submission("79001", [documents_], PREPARED.date()))
    return {(error.table, error.field, error.code) for error in errors}


def _reordered(document: bytes) -> bytes:
    root = ET.fromstring(document)
    first, second = root[0], root[1]
    root.remove(first)
    root.insert(1, first)
    assert root[0] is second
    return build.serialize(root)


def test_missing_required_field_is_rejected() -> None:
    tables = _tables()
    tables["XML1"][0]["MA_BENH_CHINH"] = ""
    assert ("XML1", "MA_BENH_CHINH", validate.REQUIRED) in _errors(tables)


def test_too_long_value_is_rejected() -> None:
    tables = _tables()
    tables["XML2"][0]["DUONG_DUNG"] = "1.01.1"
    assert ("XML2", "DUONG_DUNG", validate.TOO_LONG) in _errors(tables)


def test_wrong_total_is_rejected() -> None:
    tables = _tables()
    tables["XML1"][0]["T_TONGCHI_BV"] = "770040.84"
    assert ("XML1", "T_TONGCHI_BV", validate.TOTAL_MISMATCH) in _errors(tables)


def test_exponent_number_is_rejected() -> None:
    tables = _tables()
    tables["XML3"][2]["THANH_TIEN_BV"] = "6e+05"
    assert ("XML3", "THANH_TIEN_BV", validate.BAD_FORMAT) in _errors(tables)


def test_link_key_mismatch_is_rejected() -> None:
    tables = _tables()
    tables["XML4"][0]["MA_LK"] = OUTPATIENT_ID
    assert ("XML4", "MA_LK", validate.LINK_MISMATCH) in _errors(tables)


def test_wrong_treatment_days_are_rejected() -> None:
    tables = _tables()
    tables["XML1"][0]["SO_NGAY_DTRI"] = "3"
    assert ("XML1", "SO_NGAY_DTRI", validate.DAYS_MISMATCH) in _errors(tables)


def test_wrong_order_is_rejected() -> None:
    built = documents("inpatient")
    built.pop("XML0")
    built["XML1"] = _reordered(built["XML1"])
    errors = validate.validate_submission(build.submission("79001", [built], PREPARED.date()))
    assert ("XML1", validate.BAD_ORDER) in {(error.table, error.code) for error in errors}


def test_a_wrong_line_amount_is_rejected() -> None:
    tables = _tables()
    tables["XML2"][1]["THANH_TIEN_BH"] = "1666.66"
    assert ("XML2", "THANH_TIEN_BH", validate.AMOUNT_MISMATCH) in _errors(tables)


def test_a_visit_without_the_claim_data_is_invalid_and_says_which() -> None:
    encounter, resources = inpatient_visit()
    encounter.treatment_method = ""
    patient = inpatient_patient()
    patient.nationality_code = patient.address = ""
    problems = claim_problems(claim_xml(patient, encounter, resources, PREPARED))
    missing = {(p.field, p.code) for p in problems}
    assert missing == {
        ("MA_QUOCTICH", "REQUIRED"),
        ("DIA_CHI", "REQUIRED"),
        ("PP_DIEU_TRI", "REQUIRED"),
        ("MA_TTDV", "REQUIRED"),
    }
    reason = problems_reason(problems)
    assert reason.startswith("claim fails Decision 130 checks: HOSO[1].XML1[1].")
    assert "Nguyễn" not in reason and "079190001234" not in reason


def test_zero_days_for_a_stay_under_four_hours() -> None:
    encounter, resources = inpatient_visit()
    encounter.visit_type = records_pb2.VISIT_TYPE_INPATIENT_UNDER_4_HOURS
    encounter.end_time.CopyFrom(stamp(2024, 6, 15, 2, 0))
    summary = claim_rows(inpatient_patient(), encounter, resources, DETAILS)["XML1"][0]
    assert summary["SO_NGAY_DTRI"] == "0"


def test_bad_record_values_are_named_by_field_without_the_value() -> None:
    encounter, resources = inpatient_visit()
    patient = inpatient_patient()
    patient.birth_date = "1990-13-45"
    with pytest.raises(ClaimDataError) as bad_birth:
        claim_rows(patient, encounter, resources, DETAILS)
    assert str(bad_birth.value).startswith("NGAY_SINH:") and "1990" not in str(bad_birth.value)
    resources[4].charge_line.quantity = "1e5x"
    with pytest.raises(ClaimDataError, match=r"^SO_LUONG: not a decimal$"):
        claim_rows(inpatient_patient(), encounter, resources, DETAILS)


def test_measured_values_are_plain_digits() -> None:
    encounter, resources = inpatient_visit()
    resources[11].observation.value_quantity.value = 1e-05
    resources[11].observation.service_code = "22.0001.1235"
    (result,) = [r for r in claim_rows(inpatient_patient(), encounter, resources, DETAILS)["XML4"]]
    assert result["GIA_TRI"] == "0.00001"
    resources[11].observation.value_quantity.value = -2e6
    assert claim_rows(inpatient_patient(), encounter, resources, DETAILS)["XML4"][0]["GIA_TRI"] == "-2000000"


# --- codes and fallbacks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "kind", "outcome"),
    [
        ("home", "1", "7"),
        ("transferred", "2", "7"),
        ("other-hcf", "2", "7"),
        ("absconded", "3", "7"),
        ("aadvice", "4", "7"),
        ("exp", "1", "5"),
        ("deceased", "1", "5"),
    ],
)
def test_discharge_fallbacks_of_old_visits(disposition: str, kind: str, outcome: str) -> None:
    encounter = records_pb2.Encounter(discharge_disposition=disposition)
    assert (discharge_kind(encounter), treatment_outcome(encounter)) == (kind, outcome)


@pytest.mark.parametrize(
    ("encounter_class", "code"),
    [
        (records_pb2.ENCOUNTER_CLASS_OUTPATIENT, "01"),
        (records_pb2.ENCOUNTER_CLASS_EMERGENCY, "01"),
        (records_pb2.ENCOUNTER_CLASS_INPATIENT, "03"),
        (records_pb2.ENCOUNTER_CLASS_DAY_CARE, "04"),
    ],
)
def test_visit_kind_falls_back_to_the_encounter_class(encounter_class: int, code: str) -> None:
    assert visit_kind(records_pb2.Encounter(encounter_class=encounter_class)) == code  # type: ignore[arg-type]
    assert visit_kind(records_pb2.Encounter(visit_type=records_pb2.VISIT_TYPE_OTHER)) == "10"


def test_personal_number_alternatives() -> None:
    assert personal_number(inpatient_patient()) == "079190001234"
    assert personal_number(outpatient_patient()) == "B1234567"
    newborn = identity_pb2.Patient(full_name="Con bà Thử", birth_date="2024-06-15")
    assert personal_number(newborn) == ""


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
    assert date_time(stamp(2024, 12, 31, 17, 59)) == "202501010059"
    assert date_time(Timestamp()) == ""
    assert birth_moment("2001-02-03") == "200102030000"
    assert birth_moment("1985-07") == "198500000000"


def test_only_insured_visits_are_claimed() -> None:
    encounter, _ = inpatient_visit()
    assert is_insurance_claim(encounter)
    encounter.ClearField("insurance")
    assert is_insurance_claim(encounter)  # the cards still say so
    encounter.ClearField("insurance_cards")
    assert not is_insurance_claim(encounter)


# --- replacement and withdrawal -------------------------------------------------------------------


def test_a_corrected_visit_is_a_replacement_and_an_error_a_withdrawal() -> None:
    encounter, _ = inpatient_visit()
    assert submission_kind(encounter) is SubmissionKind.NEW
    encounter.version = 2
    assert submission_kind(encounter) is SubmissionKind.REPLACEMENT
    encounter.status = records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR
    assert submission_kind(encounter) is SubmissionKind.WITHDRAWAL


def test_withdrawal_names_the_facility_and_the_link_key() -> None:
    encounter, _ = inpatient_visit()
    root = ET.fromstring(withdrawal_xml(encounter, PREPARED))
    assert root.tag == "HUYHOSO"
    assert [(child.tag, child.text) for child in root] == [
        ("MACSKCB", "79001"),
        ("MA_LK", INPATIENT_ID),
        ("NGAYHUY", "202406190300"),
        ("CHUKYDONVI", None),
    ]
    assert validate.validate_withdrawal(withdrawal_xml(encounter, PREPARED)) == []


def test_a_current_address_needs_no_district() -> None:
    """Districts were abolished on 1 July 2025: MAHUYEN_CU_TRU stays empty and the claim is valid."""
    encounter, resources = inpatient_visit()
    patient = inpatient_patient()
    patient.district_code = ""
    submission = claim_xml(patient, encounter, resources, PREPARED, DETAILS)
    assert claim_problems(submission) == []
    assert claim_rows(patient, encounter, resources, DETAILS)["XML1"][0]["MAHUYEN_CU_TRU"] == ""


def test_the_claim_data_comes_from_the_patient_and_the_encounter() -> None:
    encounter, resources = inpatient_visit()
    encounter.treatment_method = "Ngoại khoa"
    patient = inpatient_patient()
    patient.ethnicity_code, patient.occupation_code, patient.commune_code = "08", "61", "00001"
    summary = claim_rows(patient, encounter, resources, DETAILS)["XML1"][0]
    assert (summary["PP_DIEU_TRI"], summary["MA_DANTOC"], summary["MA_NGHE_NGHIEP"]) == (
        "Ngoại khoa",
        "08",
        "61",
    )
    assert (summary["MAXA_CU_TRU"], summary["MA_TTDV"]) == ("00001", "000002/BYT-GPHN")
