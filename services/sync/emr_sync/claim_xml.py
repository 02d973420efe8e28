"""Health-insurance (BHYT) claim of one visit in the Decision 130/QĐ-BYT layout. Pure functions.

One module holds every field and format rule: XML1 (summary, root TONG_HOP), XML2 (drugs,
CHI_TIET_THUOC rows), XML3 (services, CHI_TIET_DVKT rows), each base64-encoded into a FILEHOSO of the
GIAMDINHHS submission envelope. Rules: dates and times are yyyymmddHHMM in Vietnam time (UTC+7);
sex (GIOI_TINH) is 1 male, 2 female, 3 not determined; MA_LK, the visit's link key, is the same in
every table; secondary diagnoses (MA_BENH_KT) are ICD-10 codes joined by ";". The platform keeps no
prices, so the money columns are left out rather than filled with invented figures.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from xml.etree import ElementTree as ET

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")
DATE_TIME_FORMAT = "%Y%m%d%H%M"
DATE_FORMAT = "%Y%m%d"
SEX_CODES: dict[int, str] = {
    identity_pb2.SEX_MALE: "1",
    identity_pb2.SEX_FEMALE: "2",
    identity_pb2.SEX_OTHER: "3",
    identity_pb2.SEX_UNKNOWN: "3",
}
# MA_LOAI_KCB: 01 examination, 02 outpatient treatment, 03 inpatient, 04 inpatient by day.
VISIT_KINDS = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: "01",
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: "01",
    records_pb2.ENCOUNTER_CLASS_INPATIENT: "03",
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: "04",
}
# MA_LOAI_RV: 1 discharged, 2 transferred, 3 absconded, 4 left on request.
DISCHARGE_KINDS = {"home": "1", "transferred": "2", "other-hcf": "2", "hosp": "2", "aadvice": "4"}
XML1_FIELDS = (
    "MA_LK",
    "STT",
    "MA_BN",
    "HO_TEN",
    "SO_CCCD",
    "NGAY_SINH",
    "GIOI_TINH",
    "MA_THE_BHYT",
    "MA_BENH_CHINH",
    "MA_BENH_KT",
    "NGAY_VAO",
    "NGAY_RA",
    "SO_NGAY_DTRI",
    "MA_LOAI_RV",
    "MA_LOAI_KCB",
    "MA_KHOA",
    "MA_CSKCB",
    "NAM_QT",
    "THANG_QT",
)
XML2_FIELDS = (
    "MA_LK",
    "STT",
    "MA_THUOC",
    "TEN_THUOC",
    "DON_VI_TINH",
    "LIEU_DUNG",
    "DUONG_DUNG",
    "SO_LUONG",
    "MA_KHOA",
    "NGAY_YL",
)
XML3_FIELDS = ("MA_LK", "STT", "MA_DICH_VU", "SO_LUONG", "MA_KHOA", "NGAY_YL", "NGAY_TH_YL", "NGAY_KQ")


@dataclass(frozen=True)
class ClaimFile:
    """One table of the claim: its LOAIHOSO and its XML document."""

    kind: str
    document: bytes


def date_time(stamp: Timestamp) -> str:
    """yyyymmddHHMM in Vietnam time; empty when the time is unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return ""
    moment = datetime.fromtimestamp(stamp.seconds, UTC).astimezone(VIETNAM_TIME)
    return moment.strftime(DATE_TIME_FORMAT)


def birth_date(iso_date: str) -> str:
    """NGAY_SINH: yyyymmddHHMM with the hour unknown, so 0000."""
    return iso_date.replace("-", "") + "0000" if iso_date else ""


def sex_code(sex: int) -> str:
    return SEX_CODES.get(sex, "3")


def treatment_days(encounter: records_pb2.Encounter) -> int:
    """SO_NGAY_DTRI: calendar days between admission and discharge, Vietnam time; at least 1 for
    inpatient stays (a same-day stay counts one day), 0 for an examination."""
    start, end = date_time(encounter.start_time), date_time(encounter.end_time)
    if not start or not end:
        return 0
    days = (datetime.strptime(end[:8], DATE_FORMAT) - datetime.strptime(start[:8], DATE_FORMAT)).days
    if encounter.encounter_class == records_pb2.ENCOUNTER_CLASS_INPATIENT:
        return max(days, 1)
    return days


def _identifier(patient: identity_pb2.Patient, system: int, facility_code: str = "") -> str:
    for identifier in patient.identifiers:
        if identifier.system == system and (not facility_code or identifier.facility_code == facility_code):
            return identifier.value
    return ""


def _number(value: float) -> str:
    return f"{value:g}"


def _table(root_tag: str, rows_tag: str, row_tag: str, rows: list[dict[str, str]]) -> bytes:
    root = ET.Element(root_tag)
    container = ET.SubElement(root, rows_tag) if rows_tag else root
    for row in rows:
        element = ET.SubElement(container, row_tag) if row_tag else container
        for name, value in row.items():
            ET.SubElement(element, name).text = value
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _diagnoses(resources: Sequence[records_pb2.ClinicalResource]) -> tuple[str, str]:
    primary, secondary = "", []
    for message in resources:
        if message.WhichOneof("resource") != "condition":
            continue
        condition = message.condition
        if condition.clinical_status == records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR:
            continue
        if condition.role == records_pb2.DIAGNOSIS_ROLE_PRIMARY and not primary:
            primary = condition.icd10_code
        else:
            secondary.append(condition.icd10_code)
    return primary, ";".join(secondary)


def summary_row(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
) -> dict[str, str]:
    """XML1 (TONG_HOP): one row per visit, fields in XML1_FIELDS order."""
    primary, secondary = _diagnoses(resources)
    medical_record = _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_MRN, encounter.facility_code)
    settled = date_time(encounter.end_time) or date_time(encounter.start_time)
    row = {
        "MA_LK": encounter.encounter_id,
        "STT": "1",
        "MA_BN": medical_record or patient.patient_id,
        "HO_TEN": patient.full_name,
        "SO_CCCD": _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_CCCD),
        "NGAY_SINH": birth_date(patient.birth_date),
        "GIOI_TINH": sex_code(patient.sex),
        "MA_THE_BHYT": encounter.insurance.bhyt_number
        or _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_BHYT),
        "MA_BENH_CHINH": primary,
        "MA_BENH_KT": secondary,
        "NGAY_VAO": date_time(encounter.start_time),
        "NGAY_RA": date_time(encounter.end_time),
        "SO_NGAY_DTRI": str(treatment_days(encounter)),
        "MA_LOAI_RV": DISCHARGE_KINDS.get(encounter.discharge_disposition, "1"),
        "MA_LOAI_KCB": VISIT_KINDS.get(encounter.encounter_class, "01"),
        "MA_KHOA": encounter.department,
        "MA_CSKCB": encounter.facility_code,
        "NAM_QT": settled[:4],
        "THANG_QT": settled[4:6],
    }
    return {name: row[name] for name in XML1_FIELDS}


def drug_rows(
    encounter: records_pb2.Encounter, resources: Sequence[records_pb2.ClinicalResource]
) -> list[dict[str, str]]:
    """XML2 (CHI_TIET_THUOC): one row per prescription of the visit that was not recorded in error."""
    rows: list[dict[str, str]] = []
    for message in resources:
        if message.WhichOneof("resource") != "medication_request":
            continue
        drug = message.medication_request
        if drug.status == records_pb2.MEDICATION_REQUEST_STATUS_ENTERED_IN_ERROR:
            continue
        dose = f"{_number(drug.dose.value)} {drug.dose.unit}".strip() if drug.HasField("dose") else ""
        if dose and drug.doses_per_day:
            dose = f"{dose} x {drug.doses_per_day} lần/ngày"
        row = {
            "MA_LK": encounter.encounter_id,
            "STT": str(len(rows) + 1),
            "MA_THUOC": drug.drug_code,
            "TEN_THUOC": drug.drug_name,
            "DON_VI_TINH": drug.quantity.unit,
            "LIEU_DUNG": dose,
            "DUONG_DUNG": drug.route,
            "SO_LUONG": _number(drug.quantity.value) if drug.HasField("quantity") else "0",
            "MA_KHOA": encounter.department,
            "NGAY_YL": date_time(drug.authored_time),
        }
        rows.append({name: row[name] for name in XML2_FIELDS})
    return rows


def service_rows(
    encounter: records_pb2.Encounter, resources: Sequence[records_pb2.ClinicalResource]
) -> list[dict[str, str]]:
    """XML3 (CHI_TIET_DVKT): one row per procedure of the visit that was not recorded in error."""
    rows: list[dict[str, str]] = []
    for message in resources:
        if message.WhichOneof("resource") != "procedure":
            continue
        procedure = message.procedure
        if procedure.status == records_pb2.PROCEDURE_STATUS_ENTERED_IN_ERROR:
            continue
        row = {
            "MA_LK": encounter.encounter_id,
            "STT": str(len(rows) + 1),
            "MA_DICH_VU": procedure.code,
            "SO_LUONG": "1",
            "MA_KHOA": encounter.department,
            "NGAY_YL": date_time(procedure.performed_start_time),
            "NGAY_TH_YL": date_time(procedure.performed_start_time),
            "NGAY_KQ": date_time(procedure.performed_end_time),
        }
        rows.append({name: row[name] for name in XML3_FIELDS})
    return rows


def claim_files(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
) -> list[ClaimFile]:
    """XML1, XML2 and XML3 of one visit (XML2 and XML3 only when the visit has rows for them)."""
    files = [ClaimFile("XML1", _table("TONG_HOP", "", "", [summary_row(patient, encounter, resources)]))]
    drugs = drug_rows(encounter, resources)
    if drugs:
        files.append(
            ClaimFile(
                "XML2", _table("CHITIEU_CHITIET_THUOC", "DSACH_CHI_TIET_THUOC", "CHI_TIET_THUOC", drugs)
            )
        )
    services = service_rows(encounter, resources)
    if services:
        files.append(
            ClaimFile(
                "XML3", _table("CHITIEU_CHITIET_DVKT_VTYT", "DSACH_CHI_TIET_DVKT", "CHI_TIET_DVKT", services)
            )
        )
    return files


def submission(facility_code: str, files: Sequence[ClaimFile], prepared_at: datetime) -> bytes:
    """The GIAMDINHHS envelope: the facility, the date it was prepared, and one HOSO whose FILEHOSO
    elements carry each table as LOAIHOSO and base64 NOIDUNGFILE."""
    root = ET.Element("GIAMDINHHS")
    ET.SubElement(ET.SubElement(root, "THONGTINDONVI"), "MACSKCB").text = facility_code
    record = ET.SubElement(root, "THONGTINHOSO")
    ET.SubElement(record, "NGAYLAP").text = prepared_at.astimezone(VIETNAM_TIME).strftime(DATE_FORMAT)
    ET.SubElement(record, "SOLUONGHOSO").text = "1"
    visit = ET.SubElement(ET.SubElement(record, "DANHSACHHOSO"), "HOSO")
    for claim_file in files:
        element = ET.SubElement(visit, "FILEHOSO")
        ET.SubElement(element, "LOAIHOSO").text = claim_file.kind
        ET.SubElement(element, "NOIDUNGFILE").text = base64.b64encode(claim_file.document).decode("ascii")
    ET.SubElement(root, "CHUKYDONVI")
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def claim_xml(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
    prepared_at: datetime,
) -> bytes:
    """The submission of one BHYT-paid visit."""
    return submission(encounter.facility_code, claim_files(patient, encounter, resources), prepared_at)


def is_insurance_claim(encounter: records_pb2.Encounter) -> bool:
    """A visit is claimed from BHYT when it was paid by insurance."""
    return bool(encounter.insurance.bhyt_number)
