"""The health-insurance (BHYT) claim of one visit in the Decision 130/QĐ-BYT layout (as amended by
4750/QĐ-BYT and 3176/QĐ-BYT). Pure functions.

Fields, their order, element names and value formats come from ``emr_claims`` (spec, formats, money,
build); this module only maps the platform's records onto them:

- XML1 (summary) from the encounter, the patient and the totals of the lines;
- XML2 drug lines and XML3 service, bed-day and supply lines from the visit's active charge lines,
  their money computed by ``emr_claims.money`` from quantity, prices, ratios and the coverage share
  of the card's benefit level (MUC_HUONG);
- XML4 from observations that carry a service code (lab results with index codes);
- XML5 from the current progress notes;
- XML0, the check-in, from the visit as it starts (a submission of its own).

The patient's nationality, ethnic group, occupation and address come from identity's Patient, the
treatment method from the encounter; the facility head's licence code (MA_TTDV) is the facility's, from
sync's configuration, in ``ClaimDetails``. A claim missing a required value is caught by
``claim_problems`` (``emr_claims.validate``), and sync never sends such a claim.

A corrected visit (a new finished version) is resent as a replacement of the same MA_LK, and a visit
entered in error as a withdrawal (``withdrawal_xml``): see ``submission_kind``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from emr_claims import build, formats, validate
from emr_claims.money import HUNDRED, LineAmounts, line_amounts
from emr_claims.spec import table
from emr_identity.birth_dates import BirthDate
from emr_identity.vietnamese import bhyt_benefit_level, coverage_share

Row = dict[str, str]
Rows = dict[str, list[Row]]

SEX_CODES: dict[int, str] = {
    identity_pb2.SEX_MALE: "1",
    identity_pb2.SEX_FEMALE: "2",
    identity_pb2.SEX_OTHER: "3",
    identity_pb2.SEX_UNKNOWN: "3",
}
# MA_LOAI_KCB of visits recorded before visit_type existed.
VISIT_KINDS_BY_CLASS = {
    records_pb2.ENCOUNTER_CLASS_OUTPATIENT: "01",
    records_pb2.ENCOUNTER_CLASS_EMERGENCY: "01",
    records_pb2.ENCOUNTER_CLASS_INPATIENT: "03",
    records_pb2.ENCOUNTER_CLASS_DAY_CARE: "04",
}
# MA_LOAI_RV and KET_QUA_DTRI of visits recorded before discharge existed, from the FHIR
# discharge-disposition code: a death leaves as discharged (the MA_LOAI_RV list has no death code)
# with outcome 5; an unknown outcome is 7 (not determined), never a guess.
DISCHARGE_KINDS_BY_DISPOSITION = {
    "home": "1",
    "alt-home": "1",
    "transferred": "2",
    "other-hcf": "2",
    "hosp": "2",
    "rehab": "2",
    "snf": "2",
    "psy": "2",
    "long": "2",
    "absconded": "3",
    "aadvice": "4",
    "left-on-request": "4",
    "exp": "1",
    "deceased": "1",
}
DEATH_DISPOSITIONS = frozenset({"exp", "deceased"})
OUTCOME_DIED = "5"
OUTCOME_UNDETERMINED = "7"
# SO_NGAY_DTRI (3176): 09 counts 0; 02 and 08 count the days with a service.
ZERO_DAY_KINDS = frozenset({"09"})
SERVICE_DAY_KINDS = frozenset({"02", "08"})
# MA_PTTT 1: paid per service (the platform records no capitation or DRG arrangement).
FEE_FOR_SERVICE = "1"
# NGUON_CTRA 1: the drug was paid for from the insurance-covered budget of the facility.
FUNDED_BY_INSURANCE = "1"
MAX_SECONDARY_DIAGNOSES = table("XML1").field("MA_BENH_KT").max_items or 12


@dataclass(frozen=True)
class ClaimDetails:
    """Claim values of the facility, not of the visit (sync's configuration); empty leaves the field
    empty, and a required one then fails validation rather than being invented."""

    facility_head_code: str = ""  # MA_TTDV


NO_DETAILS = ClaimDetails()


class ClaimDataError(ValueError):
    """A record value the claim cannot be written from; the message names the field, never the
    value (it is patient data)."""


class SubmissionKind(StrEnum):
    """What a claim submission does at the portal for its MA_LK."""

    NEW = "new"  # the first claim of the visit
    REPLACEMENT = "replacement"  # a corrected visit: replaces the claim held for the MA_LK
    WITHDRAWAL = "withdrawal"  # the visit was entered in error: the claim is withdrawn


def submission_kind(encounter: records_pb2.Encounter) -> SubmissionKind:
    """A visit's first finished version is new; a later version replaces; entered in error withdraws."""
    if encounter.status == records_pb2.ENCOUNTER_STATUS_ENTERED_IN_ERROR:
        return SubmissionKind.WITHDRAWAL
    return SubmissionKind.REPLACEMENT if encounter.version > 1 else SubmissionKind.NEW


# --- values ---------------------------------------------------------------------------------------


def _is_set(stamp: Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def date_time(stamp: Timestamp) -> str:
    """yyyymmddHHMM in Vietnam time; empty when the time is unset."""
    if not _is_set(stamp):
        return ""
    return formats.write_date_time(datetime.fromtimestamp(stamp.seconds, UTC))


def _iso_day(text: str, field: str) -> str:
    """yyyymmdd of a YYYY-MM-DD day; empty when empty."""
    try:
        return formats.write_date(date.fromisoformat(text)) if text else ""
    except ValueError:
        raise ClaimDataError(f"{field}: not a YYYY-MM-DD day") from None


def birth_moment(iso_birth_date: str) -> str:
    """NGAY_SINH (12 characters): 0000 for the time (the platform records none), and 0000 for the
    day and month unless both are known; the claim format has no half-known date, so a known month
    without its day is written 0000 too (19850700 would be refused)."""
    if not iso_birth_date:
        return ""
    try:
        birth = BirthDate.parse(iso_birth_date)
    except ValueError:
        raise ClaimDataError("NGAY_SINH: the birth date is not YYYY, YYYY-MM or YYYY-MM-DD") from None
    known_day = bool(birth.month and birth.day)
    return formats.write_birth(
        formats.BirthMoment(birth.year, birth.month if known_day else None, birth.day if known_day else None)
    )


def sex_code(sex: int) -> str:
    return SEX_CODES.get(sex, "3")


def _decimal(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text) if text else Decimal(0)
    except InvalidOperation:
        raise ClaimDataError(f"{field}: not a decimal") from None
    if not value.is_finite() or value < 0:
        raise ClaimDataError(f"{field}: not a finite, non-negative decimal")
    return value


def _identifier(patient: identity_pb2.Patient, system: int, facility_code: str = "") -> str:
    for identifier in patient.identifiers:
        if identifier.system == system and (not facility_code or identifier.facility_code == facility_code):
            return str(identifier.value)
    return ""


def personal_number(patient: identity_pb2.Patient) -> str:
    """SO_CCCD: the citizen id (the personal number of a birth certificate is the same 12 digits),
    else the passport number of a foreigner, else empty (a newborn or an unconscious patient without
    papers)."""
    return _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_CCCD) or _identifier(
        patient, identity_pb2.IDENTIFIER_SYSTEM_PASSPORT
    )


def visit_kind(encounter: records_pb2.Encounter) -> str:
    """MA_LOAI_KCB: the visit type's code (its enum number), else from the encounter class."""
    if encounter.visit_type != records_pb2.VISIT_TYPE_UNSPECIFIED:
        return f"{encounter.visit_type:02d}"
    return VISIT_KINDS_BY_CLASS.get(encounter.encounter_class, "")


def discharge_kind(encounter: records_pb2.Encounter) -> str:
    """MA_LOAI_RV: the discharge kind's code, else from the FHIR discharge disposition."""
    if encounter.discharge.kind != records_pb2.DISCHARGE_KIND_UNSPECIFIED:
        return str(encounter.discharge.kind)
    return DISCHARGE_KINDS_BY_DISPOSITION.get(encounter.discharge_disposition, "")


def treatment_outcome(encounter: records_pb2.Encounter) -> str:
    """KET_QUA_DTRI: the outcome's code; for old visits 5 after a death, else 7 (not determined)."""
    if encounter.discharge.outcome != records_pb2.TREATMENT_OUTCOME_UNSPECIFIED:
        return str(encounter.discharge.outcome)
    return OUTCOME_DIED if encounter.discharge_disposition in DEATH_DISPOSITIONS else OUTCOME_UNDETERMINED


@dataclass(frozen=True)
class Card:
    number: str
    registered_facility: str
    valid_from: str  # yyyymmdd or empty
    valid_to: str


def cards(patient: identity_pb2.Patient, encounter: records_pb2.Encounter) -> list[Card]:
    """The cards used during the visit, in order; for old visits the one card of encounter.insurance,
    with what the patient's BHYT identifier says about it."""
    if encounter.insurance_cards:
        return [
            Card(
                card.card_number,
                card.registered_facility_code,
                _iso_day(card.valid_from, "GT_THE_TU"),
                _iso_day(card.valid_to, "GT_THE_DEN"),
            )
            for card in encounter.insurance_cards
        ]
    number = encounter.insurance.bhyt_number
    if not number:
        return []
    for identifier in patient.identifiers:
        if identifier.system == identity_pb2.IDENTIFIER_SYSTEM_BHYT and identifier.value == number:
            details = identifier.bhyt_card
            return [
                Card(
                    number,
                    details.primary_care_facility_code,
                    _iso_day(details.valid_from, "GT_THE_TU"),
                    _iso_day(details.valid_to, "GT_THE_DEN"),
                )
            ]
    return [Card(number, "", "", "")]


def _joined(values: Sequence[str]) -> str:
    """A ``;`` list, or empty when any item is unknown (a list item may not be empty)."""
    return formats.write_list(values) if values and all(values) else ""


def benefit_percent(patient: identity_pb2.Patient, encounter: records_pb2.Encounter) -> Decimal:
    """MUC_HUONG in percent: the coverage share of the first card's benefit level (the digit in a
    15-character card code, else encounter.insurance.benefit_level); 0 without insurance."""
    visit_cards = cards(patient, encounter)
    level = bhyt_benefit_level(visit_cards[0].number) if visit_cards else None
    level = level or encounter.insurance.benefit_level
    if not level:
        return Decimal(0)
    return coverage_share(level) * HUNDRED


def _percent(value: Decimal) -> str:
    return formats.write_integer(int(value))


# --- lines ----------------------------------------------------------------------------------------


def _active_lines(resources: Sequence[records_pb2.ClinicalResource]) -> list[records_pb2.ChargeLine]:
    return [
        message.charge_line
        for message in resources
        if message.WhichOneof("resource") == "charge_line"
        and message.charge_line.status == records_pb2.CHARGE_LINE_STATUS_ACTIVE
    ]


def _money(amounts: LineAmounts) -> Row:
    # The platform records no other payer yet: T_NGUONKHAC and its parts are 0.
    return {
        "THANH_TIEN_BV": formats.write_money(amounts.facility),
        "THANH_TIEN_BH": formats.write_money(amounts.insured),
        "T_NGUONKHAC_NSNN": "0",
        "T_NGUONKHAC_VTNN": "0",
        "T_NGUONKHAC_VTTN": "0",
        "T_NGUONKHAC_CL": "0",
        "T_NGUONKHAC": formats.write_money(amounts.other_sources),
        "T_BNTT": formats.write_money(amounts.self_pay),
        "T_BNCCT": formats.write_money(amounts.co_payment),
        "T_BHTT": formats.write_money(amounts.fund),
    }


def drug_row(link_key: str, number: int, line: records_pb2.ChargeLine, benefit: Decimal) -> Row:
    """One XML2 row: THANH_TIEN_BV = SO_LUONG x DON_GIA, THANH_TIEN_BH x TYLE_TT_BH (3176)."""
    quantity, price = _decimal(line.quantity, "SO_LUONG"), _decimal(line.hospital_unit_price, "DON_GIA")
    amounts = line_amounts(quantity, price, price, Decimal(line.insurance_payment_ratio), benefit)
    drug = line.drug
    return {
        "MA_LK": link_key,
        "STT": str(number),
        "MA_THUOC": line.code,
        "MA_NHOM": line.payment_group,
        "TEN_THUOC": line.name,
        "DON_VI_TINH": line.unit,
        "HAM_LUONG": drug.strength,
        "DUONG_DUNG": drug.route_code,
        "DANG_BAO_CHE": drug.dosage_form,
        "LIEU_DUNG": drug.dose,
        "CACH_DUNG": drug.usage,
        "SO_DANG_KY": drug.registration_number,
        "TT_THAU": line.bid_info,
        "PHAM_VI": line.scope,
        "TYLE_TT_BH": str(line.insurance_payment_ratio),
        "SO_LUONG": formats.write_quantity(quantity),
        "DON_GIA": formats.write_price(price),
        **_money(amounts),
        "MUC_HUONG": _percent(benefit),
        "MA_KHOA": line.department_code,
        "MA_BAC_SI": line.ordering_practitioner_code,
        "NGAY_YL": date_time(line.order_time),
        "NGAY_TH_YL": date_time(line.execution_time),
        "MA_PTTT": FEE_FOR_SERVICE,
        "NGUON_CTRA": FUNDED_BY_INSURANCE,
    }


def service_row(link_key: str, number: int, line: records_pb2.ChargeLine, benefit: Decimal) -> Row:
    """One XML3 row (service, bed day or supply): THANH_TIEN_BV = SO_LUONG x DON_GIA_BV x
    TYLE_TT_DV, THANH_TIEN_BH = SO_LUONG x DON_GIA_BH x TYLE_TT_DV x TYLE_TT_BH (3176)."""
    quantity = _decimal(line.quantity, "SO_LUONG")
    facility_price = _decimal(line.hospital_unit_price, "DON_GIA_BV")
    insured_price = _decimal(line.insurance_unit_price, "DON_GIA_BH")
    amounts = line_amounts(
        quantity,
        facility_price,
        insured_price,
        Decimal(line.insurance_payment_ratio),
        benefit,
        service_rate=Decimal(line.service_payment_ratio),
    )
    supply = line.kind == records_pb2.CHARGE_LINE_KIND_SUPPLY
    details = line.service
    anaesthesia = details.anaesthesia_method
    return {
        "MA_LK": link_key,
        "STT": str(number),
        "MA_DICH_VU": "" if supply else line.code,
        "MA_VAT_TU": line.code if supply else "",
        "MA_NHOM": line.payment_group,
        "TEN_VAT_TU": line.name if supply else "",
        "TEN_DICH_VU": "" if supply else line.name,
        "DON_VI_TINH": line.unit,
        "PHAM_VI": line.scope,
        "SO_LUONG": formats.write_quantity(quantity),
        "DON_GIA_BV": formats.write_price(facility_price),
        "DON_GIA_BH": formats.write_price(insured_price),
        "TT_THAU": line.bid_info,
        "TYLE_TT_DV": str(line.service_payment_ratio),
        "TYLE_TT_BH": str(line.insurance_payment_ratio),
        **_money(amounts),
        "MUC_HUONG": _percent(benefit),
        "MA_KHOA": line.department_code,
        "MA_GIUONG": details.bed_code,
        "MA_BAC_SI": line.ordering_practitioner_code,
        "NGUOI_THUC_HIEN": line.performer_code,
        "MA_BENH": _joined(list(details.diagnosis_codes)),
        "NGAY_YL": date_time(line.order_time),
        "NGAY_TH_YL": date_time(line.execution_time),
        "NGAY_KQ": date_time(line.result_time),
        "MA_PTTT": FEE_FOR_SERVICE,
        "PP_VO_CAM": str(anaesthesia) if anaesthesia else "",
    }


def _measured_text(value: float) -> str:
    """A measured value (GIA_TRI is text, and may be negative) in plain digits, never an exponent."""
    number = Decimal(repr(value))
    if not number.is_finite():
        raise ClaimDataError("GIA_TRI: not a finite number")
    return format(number.normalize(), "f")


def result_rows(link_key: str, resources: Sequence[records_pb2.ClinicalResource]) -> list[Row]:
    """XML4: observations with a result of a billed service (a service code), not entered in error."""
    rows: list[Row] = []
    for message in resources:
        if message.WhichOneof("resource") != "observation":
            continue
        observation = message.observation
        if not observation.service_code or observation.status in (
            records_pb2.OBSERVATION_STATUS_ENTERED_IN_ERROR,
            records_pb2.OBSERVATION_STATUS_REGISTERED,
        ):
            continue
        value, unit = "", ""
        which = observation.WhichOneof("value")
        if which == "value_quantity":
            value, unit = _measured_text(observation.value_quantity.value), observation.value_quantity.unit
        elif which == "value_coding":
            value = observation.value_coding.code
        elif which == "value_text":
            value = observation.value_text
        rows.append(
            {
                "MA_LK": link_key,
                "STT": str(len(rows) + 1),
                "MA_DICH_VU": observation.service_code,
                "MA_CHI_SO": observation.index_code,
                "TEN_CHI_SO": observation.index_name,
                "GIA_TRI": value,
                "DON_VI_DO": unit,
                "MO_TA": observation.description,
                "KET_LUAN": observation.conclusion,
                "NGAY_KQ": date_time(observation.effective_time),
                "MA_BS_DOC_KQ": observation.reading_practitioner_code,
            }
        )
    return rows


def progress_rows(link_key: str, resources: Sequence[records_pb2.ClinicalResource]) -> list[Row]:
    """XML5: the current progress notes, in the order given."""
    rows: list[Row] = []
    for message in resources:
        if message.WhichOneof("resource") != "progress_note":
            continue
        note = message.progress_note
        if note.status != records_pb2.PROGRESS_NOTE_STATUS_CURRENT:
            continue
        rows.append(
            {
                "MA_LK": link_key,
                "STT": str(len(rows) + 1),
                "DIEN_BIEN_LS": note.clinical_course,
                "GIAI_DOAN_BENH": note.disease_stage,
                "HOI_CHAN": note.consultation,
                "PHAU_THUAT": note.surgery,
                "THOI_DIEM_DBLS": date_time(note.note_time),
                "NGUOI_THUC_HIEN": note.performer_code,
            }
        )
    return rows


# --- summary --------------------------------------------------------------------------------------


def _diagnoses(resources: Sequence[records_pb2.ClinicalResource]) -> tuple[str, list[str]]:
    primary, secondary = "", []
    for message in resources:
        if message.WhichOneof("resource") != "condition":
            continue
        condition = message.condition
        if condition.clinical_status == records_pb2.CONDITION_CLINICAL_STATUS_ENTERED_IN_ERROR:
            continue
        if condition.role == records_pb2.DIAGNOSIS_ROLE_PRIMARY and not primary:
            primary = condition.icd10_code
        elif condition.icd10_code not in secondary and condition.icd10_code != primary:
            secondary.append(condition.icd10_code)
    return primary, secondary[:MAX_SECONDARY_DIAGNOSES]


def _departments(encounter: records_pb2.Encounter, lines: Sequence[records_pb2.ChargeLine]) -> list[str]:
    """MA_KHOA: the encounter's departments in order; for old visits those of its lines."""
    codes = [department.department_code for department in encounter.departments]
    if not codes:
        codes = [line.department_code for line in lines if line.department_code]
    return list(dict.fromkeys(codes))


def treatment_days(kind: str, arrived: str, left: str, service_rows: Sequence[Row]) -> str:
    """SO_NGAY_DTRI (3176): 0 for 09; the days with a service for 02 and 08; otherwise NGAY_RA -
    NGAY_VAO + 1 in calendar days (Vietnam time)."""
    if kind in ZERO_DAY_KINDS:
        return "0"
    if kind in SERVICE_DAY_KINDS:
        return str(len({row["NGAY_YL"][:8] for row in service_rows if row.get("NGAY_YL")}))
    if not arrived or not left:
        return ""
    span = (formats.read_date_time(left).date() - formats.read_date_time(arrived).date()).days + 1
    return str(max(span, 0))


def _total(rows: Sequence[Row], name: str) -> str:
    return formats.write_money(sum((Decimal(row[name]) for row in rows), Decimal(0)))


def summary_row(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
    details: ClaimDetails,
    drugs: Sequence[Row],
    services: Sequence[Row],
) -> Row:
    """XML1 (TONG_HOP) of the visit; the totals are the sums of the drug and service rows."""
    link_key = encounter.encounter_id
    primary, secondary = _diagnoses(resources)
    visit_cards = cards(patient, encounter)
    kind = visit_kind(encounter)
    arrived, left = date_time(encounter.start_time), date_time(encounter.end_time)
    lines = [*drugs, *services]
    supplies = [row for row in services if row["MA_VAT_TU"]]
    admission, discharge = encounter.admission, encounter.discharge
    weight = (
        formats.write_decimal(_decimal(encounter.weight_kg, "CAN_NANG"), 2) if encounter.weight_kg else ""
    )
    return {
        "MA_LK": link_key,
        "STT": "1",
        "MA_BN": _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_MRN, encounter.facility_code)
        or patient.patient_id,
        "HO_TEN": patient.full_name,
        "SO_CCCD": personal_number(patient),
        "NGAY_SINH": birth_moment(patient.birth_date),
        "GIOI_TINH": sex_code(patient.sex),
        "NHOM_MAU": "",  # the platform records no blood group
        "MA_QUOCTICH": patient.nationality_code,
        "MA_DANTOC": patient.ethnicity_code,
        "MA_NGHE_NGHIEP": patient.occupation_code,
        "DIA_CHI": patient.address,
        "MATINH_CU_TRU": patient.current_province_code or patient.province_code,
        # Empty for a current address: districts were abolished on 1 July 2025.
        "MAHUYEN_CU_TRU": patient.district_code,
        "MAXA_CU_TRU": patient.commune_code,
        "DIEN_THOAI": patient.phone,
        "MA_THE_BHYT": _joined([card.number for card in visit_cards]),
        "MA_DKBD": _joined([card.registered_facility for card in visit_cards]),
        "GT_THE_TU": _joined([card.valid_from for card in visit_cards]),
        "GT_THE_DEN": _joined([card.valid_to for card in visit_cards]),
        "LY_DO_VV": admission.reason or encounter.reason,
        "LY_DO_VNT": admission.inpatient_reason,
        "MA_LY_DO_VNT": admission.inpatient_reason_code,
        "CHAN_DOAN_VAO": admission.admission_diagnosis,
        "CHAN_DOAN_RV": discharge.discharge_diagnosis,
        "MA_BENH_CHINH": primary,
        "MA_BENH_KT": _joined(secondary),
        "MA_DOITUONG_KCB": admission.visit_subject_code,
        "MA_NOI_DI": admission.referred_from_facility_code,
        "MA_NOI_DEN": discharge.referred_to_facility_code,
        "MA_TAI_NAN": admission.accident_code,
        "NGAY_VAO": arrived,
        "NGAY_VAO_NOI_TRU": date_time(admission.inpatient_admission_time),
        "NGAY_RA": left,
        "GIAY_CHUYEN_TUYEN": admission.referral_paper_number,
        "SO_NGAY_DTRI": treatment_days(kind, arrived, left, services),
        "PP_DIEU_TRI": encounter.treatment_method,
        "KET_QUA_DTRI": treatment_outcome(encounter),
        "MA_LOAI_RV": discharge_kind(encounter),
        "T_THUOC": _total(drugs, "THANH_TIEN_BV"),
        "T_VTYT": _total(supplies, "THANH_TIEN_BV"),
        "T_TONGCHI_BV": _total(lines, "THANH_TIEN_BV"),
        "T_TONGCHI_BH": _total(lines, "THANH_TIEN_BH"),
        "T_BNTT": _total(lines, "T_BNTT"),
        "T_BNCCT": _total(lines, "T_BNCCT"),
        "T_BHTT": _total(lines, "T_BHTT"),
        "T_NGUONKHAC": _total(lines, "T_NGUONKHAC"),
        # Every line is paid per service (MA_PTTT 1), so all of T_BHTT is outside capitation.
        "T_BHTT_GDV": _total(lines, "T_BHTT"),
        "NAM_QT": left[:4],
        "THANG_QT": str(int(left[4:6])) if left else "",
        "MA_LOAI_KCB": kind,
        "MA_KHOA": _joined(_departments(encounter, _active_lines(resources))),
        "MA_CSKCB": encounter.facility_code,
        "CAN_NANG": weight,
        "NGAY_TAI_KHAM": _iso_day(discharge.follow_up_date, "NGAY_TAI_KHAM"),
        "MA_HSBA": encounter.medical_record_number,
        "MA_TTDV": details.facility_head_code,
    }


# --- claim ----------------------------------------------------------------------------------------


def claim_rows(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
    details: ClaimDetails = NO_DETAILS,
) -> Rows:
    """The rows of XML1..XML5 of a finished visit; a line table only when it has rows."""
    link_key = encounter.encounter_id
    benefit = benefit_percent(patient, encounter)
    lines = _active_lines(resources)
    drugs = [line for line in lines if line.kind == records_pb2.CHARGE_LINE_KIND_DRUG]
    others = [line for line in lines if line.kind != records_pb2.CHARGE_LINE_KIND_DRUG]
    drug_rows = [drug_row(link_key, n, line, benefit) for n, line in enumerate(drugs, 1)]
    service_rows = [service_row(link_key, n, line, benefit) for n, line in enumerate(others, 1)]
    rows: Rows = {
        "XML1": [summary_row(patient, encounter, resources, details, drug_rows, service_rows)],
        "XML2": drug_rows,
        "XML3": service_rows,
        "XML4": result_rows(link_key, resources),
        "XML5": progress_rows(link_key, resources),
    }
    return {kind: table_rows for kind, table_rows in rows.items() if table_rows}


def claim_documents(rows: Rows) -> dict[str, bytes]:
    return {kind: build.table_document(kind, table_rows) for kind, table_rows in rows.items()}


def claim_xml(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
    prepared_at: datetime,
    details: ClaimDetails = NO_DETAILS,
) -> bytes:
    """The GIAMDINHHS submission of one BHYT-paid visit."""
    documents = claim_documents(claim_rows(patient, encounter, resources, details))
    return build.submission(encounter.facility_code, [documents], _prepared_on(prepared_at))


def _prepared_on(prepared_at: datetime) -> date:
    return formats.read_date(formats.write_date_time(prepared_at)[:8])


def claim_problems(submission: bytes) -> list[validate.FieldError]:
    """What the portal's strict checks would reject in a submission (empty when it is valid)."""
    return validate.validate_submission(submission)


def problems_reason(problems: Sequence[validate.FieldError], limit: int = 8) -> str:
    """The fields and error codes of the problems, never their values (they are patient data)."""
    shown = ", ".join(f"{problem.location} {problem.code}" for problem in problems[:limit])
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"claim fails Decision 130 checks: {shown}{more}"


def is_insurance_claim(encounter: records_pb2.Encounter) -> bool:
    """A visit is claimed from BHYT when it was paid by insurance."""
    return bool(encounter.insurance.bhyt_number or encounter.insurance_cards)


# --- check-in (XML0) ------------------------------------------------------------------------------


def checkin_row(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
) -> Row:
    """XML0 of a visit as it starts: who, which card (the first), and the first cost ordered in the
    treating department (a service, drug or supply)."""
    visit_cards = cards(patient, encounter)
    card = visit_cards[0] if visit_cards else Card("", "", "", "")
    lines = sorted(
        _active_lines(resources), key=lambda line: (line.order_time.seconds, line.order_time.nanos)
    )
    first: Row = {}
    if lines:
        line = lines[0]
        prefix = {
            records_pb2.CHARGE_LINE_KIND_DRUG: "THUOC",
            records_pb2.CHARGE_LINE_KIND_SUPPLY: "VAT_TU",
        }.get(line.kind, "DICH_VU")
        first = {f"MA_{prefix}": line.code, f"TEN_{prefix}": line.name, "NGAY_YL": date_time(line.order_time)}
    return {
        "MA_LK": encounter.encounter_id,
        "STT": "1",
        "MA_BN": _identifier(patient, identity_pb2.IDENTIFIER_SYSTEM_MRN, encounter.facility_code)
        or patient.patient_id,
        "HO_TEN": patient.full_name,
        "SO_CCCD": personal_number(patient),
        "NGAY_SINH": birth_moment(patient.birth_date),
        "GIOI_TINH": sex_code(patient.sex),
        "MA_THE_BHYT": card.number,
        "MA_DKBD": card.registered_facility,
        "GT_THE_TU": card.valid_from,
        "GT_THE_DEN": card.valid_to,
        "MA_DOITUONG_KCB": encounter.admission.visit_subject_code,
        "NGAY_VAO": date_time(encounter.start_time),
        "NGAY_VAO_NOI_TRU": date_time(encounter.admission.inpatient_admission_time),
        "LY_DO_VNT": encounter.admission.inpatient_reason,
        "MA_LY_DO_VNT": encounter.admission.inpatient_reason_code,
        "MA_LOAI_KCB": visit_kind(encounter),
        "MA_CSKCB": encounter.facility_code,
        **first,
        "NGAY_YL": first.get("NGAY_YL") or date_time(encounter.start_time),
    }


def checkin_xml(
    patient: identity_pb2.Patient,
    encounter: records_pb2.Encounter,
    resources: Sequence[records_pb2.ClinicalResource],
) -> bytes:
    """The XML0 check-in document of a visit (sent alone, not in a GIAMDINHHS claim), its
    CHUKYDONVI empty for the signer."""
    return build.checkin_document([checkin_row(patient, encounter, resources)])


# --- withdrawal -----------------------------------------------------------------------------------


def withdrawal_xml(encounter: records_pb2.Encounter, withdrawn_at: datetime) -> bytes:
    """The withdrawal of the claim of a visit entered in error (``emr_claims.build``'s HUYHOSO)."""
    return build.withdrawal_document(encounter.facility_code, encounter.encounter_id, withdrawn_at)
