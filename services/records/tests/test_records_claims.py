"""Unit tests of what records holds for insurance claims: the code lists and their validity dates, the
visit facts of an encounter, charge lines and progress notes, their conversions and storage form
(pure, no network or database; the code list loader reads files of a temporary directory)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from emr.records.v1 import records_pb2

from emr_claims.codelists import (
    LIST_NAMES,
    CodeListError,
    load_code_lists,
    parse_code_list,
)
from emr_records import converters
from emr_records.domain import (
    ChargeLineContent,
    ChargeLineKind,
    ChargeLineStatus,
    Department,
    DrugDetails,
    EncounterClass,
    EncounterContent,
    EncounterStatus,
    InsuranceCard,
    ObservationContent,
    ProgressNoteContent,
    ProgressNoteStatus,
    ResourceInput,
    ServiceDetails,
    check_codes,
    decimal_problem,
    new_record,
    validate_resource,
    visit_day,
)
from emr_records.repository import _record, _record_document
from emr_runtime.errors import InvalidArgumentError
from emr_runtime.fieldcrypt import FieldCrypt

NOW = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
ADMITTED = NOW - timedelta(days=4)
LISTS = load_code_lists()


def violations(call: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    return {v.field: v.description for v in caught.value.violations}


def raw(content: Any, path: str = "resource.charge_line", encounter_id: str = "enc-1") -> ResourceInput:
    return ResourceInput(
        request_id="8c1d6a51-51a4-4d0b-9a55-1f3c0e2b7a10",
        resource_id="",
        patient_id="patient-1",
        facility_code="79001",
        encounter_id=encounter_id,
        content=content,
        fingerprint="f",
        author_id="dr-synthetic-02",
        path=path,
    )


def inpatient_stay(**changes: Any) -> EncounterContent:
    content = EncounterContent(
        encounter_class=EncounterClass.INPATIENT,
        status=EncounterStatus.FINISHED,
        start_time=ADMITTED,
        end_time=NOW,
        insurance_cards=(
            InsuranceCard("DN4790123456789", "79001", "2024-01-01", "2025-03-12"),
            InsuranceCard("DN4790123456790", "79001", "2025-03-13", ""),
        ),
        visit_type_code="03",
        admission_reason="Sốt cao, ho",
        admission_diagnosis="Viêm phổi",
        inpatient_admission_time=ADMITTED + timedelta(hours=2),
        referred_from_facility_code="79002",
        referral_paper_number="CT-2025-001",
        accident_code="",
        visit_subject_code="1.3",
        discharge_diagnosis="Viêm phổi đã ổn định",
        outcome_code="2",
        discharge_kind_code="2",
        referred_to_facility_code="01001",
        follow_up_date="2025-03-21",
        departments=(Department("K02", ADMITTED), Department("K50", ADMITTED + timedelta(days=1))),
        weight_kg="58.5",
        medical_record_number="HSBA-2025-000123",
    )
    return replace(content, **changes)


def drug_line(**changes: Any) -> ChargeLineContent:
    content = ChargeLineContent(
        kind=ChargeLineKind.DRUG,
        status=ChargeLineStatus.ACTIVE,
        code="40.17",
        name="Paracetamol",
        unit="viên",
        payment_group="4",
        scope="1",
        quantity="6",
        hospital_unit_price="1234.567",
        order_time=ADMITTED + timedelta(hours=3),
        insurance_unit_price="1234.567",
        bid_info="G1;N4;2024;01",
        insurance_payment_ratio=100,
        service_payment_ratio=100,
        department_code="K50",
        ordering_practitioner_code="BS-0001",
        performer_code="DD-0001",
        execution_time=ADMITTED + timedelta(hours=4),
        drug=DrugDetails(
            strength="500mg",
            route_code="1.01",
            dose="1 viên/lần, 3 lần/ngày",
            usage="Uống sau ăn",
            registration_number="VD-12345-10",
            dosage_form="Viên nén",
        ),
    )
    return replace(content, **changes)


def service_line(**changes: Any) -> ChargeLineContent:
    content = ChargeLineContent(
        kind=ChargeLineKind.SERVICE,
        status=ChargeLineStatus.ACTIVE,
        code="15.1906",
        name="Ngày giường bệnh Nội khoa",
        unit="ngày",
        payment_group="15",
        scope="1",
        quantity="3.5",
        hospital_unit_price="200000",
        insurance_unit_price="180000",
        order_time=ADMITTED,
        service_payment_ratio=100,
        insurance_payment_ratio=80,
        department_code="K50",
        service=ServiceDetails(bed_code="H001", diagnosis_codes=("J18.9",)),
    )
    return replace(content, **changes)


# --- code lists -----------------------------------------------------------------------------


CUSTOM = """# Source: a test list
code,name,valid_from,valid_to
K99,Khoa cũ,2020-01-01,2023-12-31
K03,Khoa Nội tổng hợp,2017-09-20,
"""


def test_a_code_is_in_force_from_its_first_to_its_last_day_inclusive() -> None:
    departments = parse_code_list("departments", CUSTOM)
    assert departments.source == "Source: a test list"
    assert not departments.in_force("K99", date(2019, 12, 31))
    assert departments.in_force("K99", date(2020, 1, 1))
    assert departments.in_force("K99", date(2023, 12, 31))
    assert not departments.in_force("K99", date(2024, 1, 1))
    assert departments.in_force("K03", date(2099, 1, 1))
    assert departments.problem("K99", date(2024, 1, 1)) == (
        "code 'K99' of the departments list is not in force on 2024-01-01"
    )
    assert departments.problem("K77", date(2024, 1, 1)) == "not a code of the departments list"
    assert departments.problem("K99", date(2022, 6, 1)) is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("code,name,valid_from,valid_to\nK1,x,2020-01-01,\n", "legal source"),
        ("# s\ncode;name;valid_from;valid_to\n", "header"),
        ("# s\ncode,name,valid_from,valid_to\nK1,x,2020-01-01\n", "row 2 must have 4 columns"),
        ("# s\ncode,name,valid_from,valid_to\n,x,2020-01-01,\n", "row 2 has no code"),
        ("# s\ncode,name,valid_from,valid_to\nK1,x,01/01/2020,\n", "row 2: dates must be YYYY-MM-DD"),
        ("# s\ncode,name,valid_from,valid_to\nK1,x,2020-01-02,2020-01-01\n", "valid_to is before valid_from"),
        (
            "# s\ncode,name,valid_from,valid_to\nK1,x,2020-01-01,2021-01-01\nK1,y,2020-06-01,\n",
            "row 3: code 'K1' is listed twice",
        ),
    ],
)
def test_a_bad_code_list_is_refused_naming_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(CodeListError, match=complaint):
        parse_code_list("departments", text)


def test_a_code_may_come_back_after_a_gap() -> None:
    text = "# s\ncode,name,valid_from,valid_to\nK1,x,2020-01-01,2020-12-31\nK1,x,2022-01-01,\n"
    listed = parse_code_list("departments", text)
    assert [listed.in_force("K1", date(y, 6, 1)) for y in (2020, 2021, 2022)] == [True, False, True]


def test_every_shipped_list_loads_and_names_its_source() -> None:
    assert set(LISTS.lists) == set(LIST_NAMES)
    for code_list in LISTS.lists.values():
        assert code_list.source.startswith("Source:")
        assert code_list.entries


@pytest.mark.parametrize(
    ("proto_enum", "list_name", "width"),
    [
        (records_pb2.VisitType, "visit_types", 2),
        (records_pb2.TreatmentOutcome, "treatment_outcomes", 1),
        (records_pb2.DischargeKind, "discharge_kinds", 1),
    ],
)
def test_every_enum_value_is_a_code_of_its_shipped_list(proto_enum: Any, list_name: str, width: int) -> None:
    codes = {entry.code for entry in LISTS[list_name].entries}
    assert {f"{number:0{width}d}" for number in proto_enum.values() if number} == codes


def test_a_directory_replaces_the_shipped_lists_of_the_same_name_only(tmp_path: Path) -> None:
    (tmp_path / "departments.csv").write_text(CUSTOM, encoding="utf-8")
    lists = load_code_lists(tmp_path)
    assert lists["departments"].in_force("K99", date(2022, 1, 1))
    assert not lists["departments"].known("K50")  # the hospital's list replaces the shipped one
    assert lists["visit_types"] == LISTS["visit_types"]


def test_a_missing_directory_or_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(CodeListError, match="does not exist"):
        load_code_lists(tmp_path / "absent")
    (tmp_path / "scopes.csv").write_text("code,name,valid_from,valid_to\n", encoding="utf-8")
    with pytest.raises(CodeListError, match="scopes: the first line"):
        load_code_lists(tmp_path)


def test_codes_are_checked_against_the_list_in_force_on_the_day_the_visit_started(tmp_path: Path) -> None:
    (tmp_path / "departments.csv").write_text(CUSTOM, encoding="utf-8")
    lists = load_code_lists(tmp_path)
    line = raw(drug_line(department_code="K99"))
    check_codes(line, datetime(2023, 12, 31, 16, 59, tzinfo=UTC), lists)  # 23:59 in Vietnam
    assert violations(lambda: check_codes(line, datetime(2023, 12, 31, 17, 0, tzinfo=UTC), lists)) == {
        "resource.charge_line.department_code": "code 'K99' of the departments list is not in force on 2024-01-01"
    }


def test_visit_days_are_days_in_vietnam() -> None:
    assert visit_day(datetime(2024, 12, 31, 17, 0, tzinfo=UTC)) == date(2025, 1, 1)
    assert visit_day(datetime(2024, 12, 31, 16, 59, tzinfo=UTC)) == date(2024, 12, 31)


def test_every_national_code_of_an_encounter_is_checked() -> None:
    stay = inpatient_stay(
        visit_type_code="11",
        outcome_code="9",
        discharge_kind_code="2",
        departments=(Department("K02"), Department("K77")),
    )
    assert violations(lambda: check_codes(raw(stay, path=""), ADMITTED, LISTS)) == {
        "visit_type": "not a code of the visit_types list",
        "discharge.outcome": "not a code of the treatment_outcomes list",
        "departments[1].department_code": "not a code of the departments list",
    }
    check_codes(raw(inpatient_stay(), path=""), ADMITTED, LISTS)


def test_a_code_not_yet_in_force_is_refused_for_an_old_visit() -> None:
    # Visit types of Decision 130/QĐ-BYT are in force from 2023-01-18.
    old = raw(inpatient_stay(), path="")
    assert violations(lambda: check_codes(old, datetime(2022, 5, 1, tzinfo=UTC), LISTS)) == {
        "visit_type": "code '03' of the visit_types list is not in force on 2022-05-01"
    }


def test_every_national_code_of_a_charge_line_is_checked() -> None:
    line = drug_line(payment_group="99", scope="7", department_code="K77")
    line = replace(line, drug=replace(line.drug or DrugDetails(), route_code="9.99"))
    assert set(violations(lambda: check_codes(raw(line), ADMITTED, LISTS))) == {
        "resource.charge_line.payment_group",
        "resource.charge_line.scope",
        "resource.charge_line.department_code",
        "resource.charge_line.drug.route_code",
    }


# --- the visit facts of an encounter ----------------------------------------------------------


def test_a_full_inpatient_stay_is_valid() -> None:
    validate_resource(raw(inpatient_stay(), path="", encounter_id=""), NOW)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"insurance_cards": (InsuranceCard("DN479012345678", "79001", "2024-01-01"),)}, "card_number"),
        ({"insurance_cards": (InsuranceCard("0123456789", "79001", "2024-01-01"),)}, "card_number"),
        (
            {"insurance_cards": (InsuranceCard("DN4790123456789", "79", "2024-01-01"),)},
            "registered_facility_code",
        ),
        ({"insurance_cards": (InsuranceCard("DN4790123456789", "79001", ""),)}, "valid_from"),
        ({"insurance_cards": (InsuranceCard("DN4790123456789", "79001", "2024-02-30"),)}, "valid_from"),
        (
            {"insurance_cards": (InsuranceCard("DN4790123456789", "79001", "2024-01-01", "2023-01-01"),)},
            "valid_to",
        ),
    ],
)
def test_a_bad_card_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    found = violations(
        lambda: validate_resource(raw(inpatient_stay(**changes), path="", encounter_id=""), NOW)
    )
    assert list(found) == [f"insurance_cards[0].{field}"], found


def test_a_card_must_be_valid_on_the_day_the_visit_started_but_may_expire_during_the_stay() -> None:
    expired_before = (InsuranceCard("DN4790123456789", "79001", "2024-01-01", "2025-03-09"),)
    found = violations(
        lambda: validate_resource(
            raw(inpatient_stay(insurance_cards=expired_before), path="", encounter_id=""), NOW
        )
    )
    assert found == {"insurance_cards": "no card is valid on 2025-03-10, the day the visit started"}
    # Valid on the first day, expired before discharge: insurance pays the stay through discharge.
    expires_during = (InsuranceCard("DN4790123456789", "79001", "2024-01-01", "2025-03-11"),)
    validate_resource(raw(inpatient_stay(insurance_cards=expires_during), path="", encounter_id=""), NOW)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"end_time": None, "status": EncounterStatus.IN_PROGRESS}, "end_time"),
        ({"inpatient_admission_time": ADMITTED - timedelta(minutes=1)}, "admission.inpatient_admission_time"),
        ({"inpatient_admission_time": NOW + timedelta(minutes=1)}, "admission.inpatient_admission_time"),
        ({"referred_to_facility_code": ""}, "discharge.referred_to_facility_code"),
        ({"referred_to_facility_code": "0100"}, "discharge.referred_to_facility_code"),
        ({"discharge_kind_code": "1"}, "discharge.kind"),
        ({"follow_up_date": "2025-03-13"}, "discharge.follow_up_date"),
        ({"follow_up_date": "21/03/2025"}, "discharge.follow_up_date"),
        (
            {"referred_from_facility_code": "", "referral_paper_number": "CT-1"},
            "admission.referred_from_facility_code",
        ),
        ({"referral_paper_number": "x" * 51}, "admission.referral_paper_number"),
        ({"accident_code": "abc"}, "admission.accident_code"),
        ({"visit_subject_code": "1,1"}, "admission.visit_subject_code"),
        ({"admission_reason": "x" * 1025}, "admission.reason"),
        ({"discharge_diagnosis": "x" * 2049}, "discharge.discharge_diagnosis"),
        ({"departments": (Department(""),)}, "departments[0].department_code"),
        ({"departments": (Department("K02", NOW + timedelta(hours=1)),)}, "departments[0].start_time"),
        ({"weight_kg": "0"}, "weight_kg"),
        ({"weight_kg": "58.555"}, "weight_kg"),
        ({"weight_kg": "-3"}, "weight_kg"),
        ({"medical_record_number": "x" * 101}, "medical_record_number"),
        ({"treatment_method": "x" * 1025}, "treatment_method"),
    ],
)
def test_a_bad_visit_fact_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    found = violations(
        lambda: validate_resource(raw(inpatient_stay(**changes), path="", encounter_id=""), NOW)
    )
    assert list(found) == [field], found


# --- charge lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "positive", "ok"),
    [
        ("1", True, True),
        ("0.001", True, True),
        ("1234.567", False, True),
        ("0", False, True),
        ("0", True, False),
        ("0.000", True, False),
        ("1.2345", False, False),
        ("-1", False, False),
        ("+1", False, False),
        ("1e3", False, False),
        ("1,5", False, False),
        (".5", False, False),
        ("NaN", False, False),
        ("Infinity", False, False),
        ("", False, False),
        ("1" * 16, False, False),
        (" 1", False, False),
    ],
)
def test_quantities_and_prices_are_decimal_strings_with_at_most_3_decimals(
    value: str, positive: bool, ok: bool
) -> None:
    assert (decimal_problem(value, positive) is None) is ok


def test_drug_service_bed_and_supply_lines_are_valid() -> None:
    for content in (
        drug_line(),
        service_line(),
        service_line(code="N03.04.010", kind=ChargeLineKind.SUPPLY, payment_group="10", service=None),
    ):
        validate_resource(raw(content), NOW)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": None}, "kind"),
        ({"status": None}, "status"),
        ({"code": ""}, "code"),
        ({"code": "x" * 256}, "code"),
        ({"name": " "}, "name"),
        ({"name": "x" * 1025}, "name"),
        ({"unit": ""}, "unit"),
        ({"unit": "x" * 51}, "unit"),
        ({"payment_group": ""}, "payment_group"),
        ({"scope": ""}, "scope"),
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "1.5e2"}, "quantity"),
        ({"hospital_unit_price": "-1"}, "hospital_unit_price"),
        ({"hospital_unit_price": "12.3456"}, "hospital_unit_price"),
        ({"insurance_unit_price": "1,000"}, "insurance_unit_price"),
        ({"bid_info": "x" * 51}, "bid_info"),
        ({"insurance_payment_ratio": 101}, "insurance_payment_ratio"),
        ({"service_payment_ratio": -1}, "service_payment_ratio"),
        ({"department_code": ""}, "department_code"),
        ({"ordering_practitioner_code": "x" * 256}, "ordering_practitioner_code"),
        ({"order_time": None}, "order_time"),
        ({"order_time": NOW + timedelta(hours=1), "execution_time": None}, "order_time"),
        ({"execution_time": ADMITTED}, "execution_time"),
        ({"result_time": ADMITTED + timedelta(hours=3, minutes=30)}, "result_time"),
        ({"drug": None}, "drug.route_code"),
        ({"drug": DrugDetails(route_code="1.011")}, "drug.route_code"),
        ({"drug": DrugDetails(route_code="1.01", strength="x" * 1025)}, "drug.strength"),
        ({"drug": DrugDetails(route_code="1.01", registration_number="x" * 256)}, "drug.registration_number"),
        ({"service": ServiceDetails()}, "service"),
    ],
)
def test_a_bad_drug_line_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    found = violations(lambda: validate_resource(raw(drug_line(**changes)), NOW))
    assert list(found) == [f"resource.charge_line.{field}"], found


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"code": "x" * 51}, "code"),
        ({"bid_info": "x" * 26}, "bid_info"),
        ({"drug": DrugDetails(route_code="1.01")}, "drug"),
        ({"service": ServiceDetails(bed_code="x" * 51)}, "service.bed_code"),
        ({"service": ServiceDetails(anaesthesia_method_code="7")}, "service.anaesthesia_method"),
        ({"service": ServiceDetails(surgery_class="unknown:9")}, "service.surgery_class"),
        ({"service": ServiceDetails(diagnosis_codes=("J18.9", "XYZ"))}, "service.diagnosis_codes[1]"),
    ],
)
def test_a_bad_service_line_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    found = violations(lambda: validate_resource(raw(service_line(**changes)), NOW))
    assert list(found) == [f"resource.charge_line.{field}"], found


def test_a_supply_code_may_be_longer_than_a_service_code_but_not_its_bid_info() -> None:
    supply = service_line(kind=ChargeLineKind.SUPPLY, code="x" * 255, service=None)
    validate_resource(raw(supply), NOW)
    found = violations(lambda: validate_resource(raw(replace(supply, bid_info="x" * 26)), NOW))
    assert list(found) == ["resource.charge_line.bid_info"]


def test_a_result_comes_after_the_execution_and_the_execution_after_the_order() -> None:
    ordered = ADMITTED + timedelta(hours=3)
    line = service_line(order_time=ordered, execution_time=ordered, result_time=ordered)
    validate_resource(raw(line), NOW)  # equal times are in order
    no_execution = replace(line, execution_time=None, result_time=ordered - timedelta(seconds=1))
    assert list(violations(lambda: validate_resource(raw(no_execution), NOW))) == [
        "resource.charge_line.result_time"
    ]


def test_charge_lines_and_progress_notes_belong_to_a_visit() -> None:
    note = ProgressNoteContent(ProgressNoteStatus.CURRENT, "Hết sốt", ADMITTED)
    for content, path in ((drug_line(), "resource.charge_line"), (note, "resource.progress_note")):
        found = violations(lambda c=content, p=path: validate_resource(raw(c, path=p, encounter_id=""), NOW))
        assert list(found) == [f"{path}.encounter_id"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": None}, "status"),
        ({"clinical_course": "  "}, "clinical_course"),
        ({"clinical_course": "x" * 4001}, "clinical_course"),
        ({"consultation": "x" * 4001}, "consultation"),
        ({"note_time": None}, "note_time"),
        ({"performer_code": "x" * 256}, "performer_code"),
    ],
)
def test_a_bad_progress_note_is_refused_naming_its_field(changes: dict[str, Any], field: str) -> None:
    note = ProgressNoteContent(ProgressNoteStatus.CURRENT, "Hết sốt", ADMITTED, "Ổn định", "", "", "BS-0001")
    found = violations(
        lambda: validate_resource(raw(replace(note, **changes), path="resource.progress_note"), NOW)
    )
    assert list(found) == [f"resource.progress_note.{field}"]


# --- conversions and the stored form -------------------------------------------------------------


def full_encounter_request() -> records_pb2.CreateEncounterRequest:
    request = records_pb2.CreateEncounterRequest(
        request_id="8c1d6a51-51a4-4d0b-9a55-1f3c0e2b7a10",
        patient_id="patient-1",
        facility_code="79001",
        encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        insurance_cards=[
            records_pb2.InsuranceCard(
                card_number="DN4790123456789",
                registered_facility_code="79001",
                valid_from="2024-01-01",
                valid_to="2025-03-12",
            ),
            records_pb2.InsuranceCard(
                card_number="DN4790123456790", registered_facility_code="79001", valid_from="2025-03-13"
            ),
        ],
        visit_type=records_pb2.VISIT_TYPE_INPATIENT,
        admission=records_pb2.EncounterAdmission(
            reason="Sốt",
            admission_diagnosis="Viêm phổi",
            referred_from_facility_code="79002",
            referral_paper_number="CT-1",
            accident_code="1",
            inpatient_reason="Theo dõi",
            inpatient_reason_code="1",
            visit_subject_code="1.3",
        ),
        discharge=records_pb2.EncounterDischarge(
            discharge_diagnosis="Ổn định",
            outcome=records_pb2.TREATMENT_OUTCOME_IMPROVED,
            kind=records_pb2.DISCHARGE_KIND_TRANSFERRED,
            referred_to_facility_code="01001",
            follow_up_date="2025-03-21",
        ),
        departments=[records_pb2.EncounterDepartment(department_code="K02")],
        weight_kg="58.5",
        medical_record_number="HSBA-1",
        treatment_method="Nội khoa",
    )
    request.start_time.FromDatetime(ADMITTED)
    request.end_time.FromDatetime(NOW)
    request.admission.inpatient_admission_time.FromDatetime(ADMITTED + timedelta(hours=2))
    request.departments[0].start_time.FromDatetime(ADMITTED)
    return request


def test_the_visit_facts_convert_both_ways_and_enum_numbers_are_the_national_codes() -> None:
    request = full_encounter_request()
    given = converters.encounter_input(request, "dr", b"k" * 32)
    assert isinstance(given.content, EncounterContent)
    assert (given.content.visit_type_code, given.content.outcome_code, given.content.discharge_kind_code) == (
        "03",
        "2",
        "2",
    )
    message = converters.encounter_message(new_record(given, "enc-1", NOW))
    for name in ("insurance_cards", "visit_type", "admission", "discharge", "departments", "weight_kg"):
        assert getattr(message, name) == getattr(request, name), name
    assert message.medical_record_number == "HSBA-1"
    assert message.treatment_method == request.treatment_method == "Nội khoa"


def test_an_unknown_enum_number_reaches_validation_as_an_unknown_code() -> None:
    request = full_encounter_request()
    request.visit_type = 42  # type: ignore[assignment]
    given = converters.encounter_input(request, "dr", b"k" * 32)
    assert violations(lambda: check_codes(given, ADMITTED, LISTS)) == {
        "visit_type": "not a code of the visit_types list"
    }


def charge_line_message() -> records_pb2.ChargeLine:
    message = records_pb2.ChargeLine(
        patient_id="patient-1",
        facility_code="79001",
        encounter_id="enc-1",
        kind=records_pb2.CHARGE_LINE_KIND_SERVICE,
        status=records_pb2.CHARGE_LINE_STATUS_ACTIVE,
        code="10.0001",
        name="Phẫu thuật",
        unit="lần",
        payment_group="8",
        scope="1",
        quantity="1",
        hospital_unit_price="2500000",
        insurance_unit_price="2400000.5",
        bid_info="",
        service_payment_ratio=100,
        insurance_payment_ratio=80,
        department_code="K19",
        ordering_practitioner_code="BS-1",
        performer_code="BS-2;BS-3",
        service=records_pb2.ChargeLineService(
            anaesthesia_method=records_pb2.ANAESTHESIA_METHOD_GENERAL,
            surgery_class=records_pb2.SURGERY_CLASS_1,
            diagnosis_codes=["K35.8"],
        ),
    )
    message.order_time.FromDatetime(ADMITTED)
    message.execution_time.FromDatetime(ADMITTED + timedelta(hours=1))
    message.result_time.FromDatetime(ADMITTED + timedelta(hours=3))
    return message


def test_a_charge_line_converts_both_ways_and_is_stored_without_floats() -> None:
    request = records_pb2.CreateResourceRequest(
        request_id="8c1d6a51-51a4-4d0b-9a55-1f3c0e2b7a10",
        resource=records_pb2.ClinicalResource(charge_line=charge_line_message()),
    )
    given = converters.resource_input(request, "dr", b"k" * 32)
    assert given is not None
    validate_resource(given, NOW)
    record = new_record(given, "line-1", NOW)
    crypt = FieldCrypt({"k1": b"e" * 32}, "k1", b"i" * 32)
    document = _record_document(crypt, record)
    stored = document["content"]
    assert stored["quantity"] == "1" and stored["insurance_unit_price"] == "2400000.5"
    assert not any(isinstance(value, float) for value in stored.values())
    back = _record(crypt, document)
    assert back == record
    message = converters.resource_message(back).charge_line
    expected = charge_line_message()
    expected.charge_line_id = "line-1"
    expected.version = 1
    expected.create_time.FromDatetime(NOW)
    expected.update_time.FromDatetime(NOW)
    assert message == expected


def test_card_numbers_are_stored_encrypted_and_read_back() -> None:
    given = converters.encounter_input(full_encounter_request(), "dr", b"k" * 32)
    record = new_record(given, "enc-1", NOW)
    crypt = FieldCrypt({"k1": b"e" * 32}, "k1", b"i" * 32)
    document = _record_document(crypt, record)
    stored_cards = document["content"]["insurance_cards"]
    assert [card["card_number"][:5] for card in stored_cards] == ["enc1:", "enc1:"]
    assert "DN4790123456789" not in repr(document)
    assert _record(crypt, document) == record


def test_a_progress_note_converts_both_ways() -> None:
    note = records_pb2.ProgressNote(
        progress_note_id="ignored",
        patient_id="patient-1",
        facility_code="79001",
        encounter_id="enc-1",
        status=records_pb2.PROGRESS_NOTE_STATUS_CURRENT,
        clinical_course="Hết sốt, ăn uống được",
        disease_stage="Hồi phục",
        consultation="Hội chẩn khoa",
        surgery="",
        performer_code="BS-1",
    )
    note.note_time.FromDatetime(ADMITTED)
    request = records_pb2.CreateResourceRequest(
        request_id="8c1d6a51-51a4-4d0b-9a55-1f3c0e2b7a10",
        resource=records_pb2.ClinicalResource(progress_note=note),
    )
    given = converters.resource_input(request, "dr", b"k" * 32)
    assert given is not None
    validate_resource(given, NOW)
    back = converters.resource_message(new_record(given, "note-1", NOW)).progress_note
    assert back.clinical_course == note.clinical_course and back.note_time == note.note_time
    assert back.progress_note_id == "note-1" and back.performer_code == "BS-1"


def test_an_observation_carries_the_lab_result_codes_of_the_claim() -> None:
    observation = records_pb2.Observation(
        patient_id="patient-1",
        facility_code="79001",
        loinc_code="718-7",
        status=records_pb2.OBSERVATION_STATUS_FINAL,
        value_quantity=records_pb2.Quantity(value=13.5, unit="g/dL"),
        index_code="HGB",
        index_name="Huyết sắc tố",
        service_code="22.0121.1370",
        reading_practitioner_code="BS-9",
        description="Bình thường",
        conclusion="Không thiếu máu",
    )
    observation.effective_time.FromDatetime(ADMITTED)
    request = records_pb2.CreateResourceRequest(
        request_id="8c1d6a51-51a4-4d0b-9a55-1f3c0e2b7a10",
        resource=records_pb2.ClinicalResource(observation=observation),
    )
    given = converters.resource_input(request, "dr", b"k" * 32)
    assert given is not None
    validate_resource(given, NOW)
    back = converters.observation_message(new_record(given, "obs-1", NOW))
    for name in (
        "index_code",
        "index_name",
        "service_code",
        "reading_practitioner_code",
        "description",
        "conclusion",
    ):
        assert getattr(back, name) == getattr(observation, name)
    assert isinstance(given.content, ObservationContent)
    too_long = replace(given, content=replace(given.content, index_code="x" * 51))
    assert list(violations(lambda: validate_resource(too_long, NOW))) == ["resource.observation.index_code"]
