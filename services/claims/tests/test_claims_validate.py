"""The strict validator: the sample claim passes; each kind of problem is reported as the exact
(table, field, code)."""

import base64
import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from emr_claims import build, sample, validate
from emr_claims.codelists import SHIPPED_DIRECTORY, load_code_lists
from emr_claims.validate import validate_submission

Tweak = Callable[[str, ET.Element], None]


def claim_of(rows: sample.Rows, tweak: Tweak | None = None, facility: str = sample.FACILITY) -> bytes:
    documents = {}
    for kind, table_rows in rows.items():
        element = build.table_element(kind, table_rows)
        if tweak is not None:
            tweak(kind, element)
        documents[kind] = build.serialize(element)
    return build.submission(facility, [documents], sample.PREPARED_ON)


def problems(document: bytes) -> set[tuple[str, str, str]]:
    return {(e.table, e.field, e.code) for e in validate_submission(document)}


def changed(kind: str, index: int, **values: str) -> sample.Rows:
    rows = sample.claim_rows()
    rows[kind][index].update(values)
    return rows


def money(text: str, delta: str) -> str:
    return str(Decimal(text) + Decimal(delta))


def test_the_sample_full_claim_is_valid() -> None:
    assert validate_submission(sample.claim()) == []
    assert set(sample.claim_rows()) == {"XML1", "XML2", "XML3", "XML4", "XML5"}


def test_a_required_value_left_empty() -> None:
    assert problems(claim_of(changed("XML1", 0, HO_TEN=""))) == {("XML1", "HO_TEN", "REQUIRED")}


def test_a_value_longer_than_its_field() -> None:
    assert problems(claim_of(changed("XML1", 0, MA_BENH_CHINH="J18.9001"))) == {
        ("XML1", "MA_BENH_CHINH", "TOO_LONG")
    }


def test_a_number_in_exponent_form() -> None:
    found = validate_submission(claim_of(changed("XML2", 0, SO_LUONG="1E+1")))
    assert {(e.table, e.row, e.field, e.code) for e in found} == {("XML2", 1, "SO_LUONG", "BAD_FORMAT")}
    assert "exponent" in found[0].message


def test_a_money_amount_with_three_decimals() -> None:
    rows = changed("XML2", 0, T_NGUONKHAC_CL="0.001")
    assert ("XML2", "T_NGUONKHAC_CL", "BAD_FORMAT") in problems(claim_of(rows))


def test_a_date_time_not_in_yyyymmddhhmm() -> None:
    assert problems(claim_of(changed("XML5", 0, THOI_DIEM_DBLS="2025-03-10"))) == {
        ("XML5", "THOI_DIEM_DBLS", "BAD_FORMAT")
    }


def test_a_birth_date_with_unknown_day_and_month_is_accepted_but_not_a_half_known_one() -> None:
    assert problems(claim_of(changed("XML1", 0, NGAY_SINH="198500000000"))) == set()
    assert problems(claim_of(changed("XML1", 0, NGAY_SINH="198507000000"))) == {
        ("XML1", "NGAY_SINH", "BAD_FORMAT")
    }


def test_elements_out_of_order() -> None:
    def swap(kind: str, root: ET.Element) -> None:
        if kind == "XML1":
            first, second = root[2], root[3]  # MA_BN, HO_TEN
            root[2], root[3] = second, first

    found = validate_submission(claim_of(sample.claim_rows(), swap))
    assert [(e.table, e.field, e.code) for e in found] == [("XML1", "HO_TEN", "BAD_ORDER")]


def test_an_unknown_element() -> None:
    def extra(kind: str, root: ET.Element) -> None:
        if kind == "XML2":
            ET.SubElement(root[0][1], "GIA_BAN_LE").text = "1"

    found = validate_submission(claim_of(sample.claim_rows(), extra))
    assert [(e.table, e.row, e.field, e.code) for e in found] == [
        ("XML2", 2, "GIA_BAN_LE", "UNKNOWN_ELEMENT")
    ]


def test_a_missing_element() -> None:
    def drop(kind: str, root: ET.Element) -> None:
        if kind == "XML5":
            row = root[0][0]
            reserved = row.find("DU_PHONG")
            assert reserved is not None
            row.remove(reserved)

    assert problems(claim_of(sample.claim_rows(), drop)) == {("XML5", "DU_PHONG", "MISSING_ELEMENT")}


def test_a_repeated_element() -> None:
    def repeat(kind: str, root: ET.Element) -> None:
        note = root.find("GHI_CHU")
        if kind == "XML1" and note is not None:
            root.insert(list(root).index(note) + 1, copy.deepcopy(note))

    assert problems(claim_of(sample.claim_rows(), repeat)) == {("XML1", "GHI_CHU", "DUPLICATE_ELEMENT")}


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("XML1", "GIOI_TINH", "4"),
        ("XML1", "MA_LOAI_RV", "6"),
        ("XML1", "KET_QUA_DTRI", "9"),
        ("XML1", "MA_KHUVUC", "K4"),
        ("XML2", "PHAM_VI", "0"),
        ("XML2", "NGUON_CTRA", "5"),
        ("XML3", "MA_PTTT", "4"),
        ("XML3", "PP_VO_CAM", "5"),
    ],
)
def test_a_code_outside_its_list(kind: str, field: str, value: str) -> None:
    assert problems(claim_of(changed(kind, 0, **{field: value}))) == {(kind, field, "BAD_CODE")}


def test_a_kind_of_care_outside_the_list() -> None:
    # 10 is no MA_LOAI_KCB; the day count is then not checked against it.
    assert problems(claim_of(changed("XML1", 0, MA_LOAI_KCB="10"))) == {("XML1", "MA_LOAI_KCB", "BAD_CODE")}


def test_a_rate_outside_its_range() -> None:
    assert problems(claim_of(changed("XML1", 0, THANG_QT="13"))) == {("XML1", "THANG_QT", "OUT_OF_RANGE")}


def test_too_many_secondary_diagnoses() -> None:
    codes = ";".join(f"A0{i % 10}" for i in range(13))
    assert problems(claim_of(changed("XML1", 0, MA_BENH_KT=codes))) == {("XML1", "MA_BENH_KT", "TOO_MANY")}


def test_rows_not_numbered_one_to_n() -> None:
    found = validate_submission(claim_of(changed("XML2", 1, STT="3")))
    assert [(e.table, e.row, e.field, e.code) for e in found] == [("XML2", 2, "STT", "BAD_STT")]


def test_a_row_of_another_visit() -> None:
    found = validate_submission(claim_of(changed("XML3", 0, MA_LK="SYN-OTHER")))
    assert [(e.table, e.row, e.field, e.code) for e in found] == [("XML3", 1, "MA_LK", "LINK_MISMATCH")]


def test_a_facility_other_than_the_envelopes() -> None:
    assert problems(claim_of(sample.claim_rows(), facility="79002")) == {
        ("XML1", "MA_CSKCB", "LINK_MISMATCH")
    }


def test_discharge_before_arrival() -> None:
    assert problems(claim_of(changed("XML1", 0, NGAY_RA="202503090800"))) == {
        ("XML1", "NGAY_RA", "DATE_ORDER")
    }


def test_treatment_days_that_do_not_follow_from_the_dates() -> None:
    assert problems(claim_of(changed("XML1", 0, SO_NGAY_DTRI="4"))) == {
        ("XML1", "SO_NGAY_DTRI", "DAYS_MISMATCH")
    }
    assert problems(claim_of(changed("XML1", 0, SO_NGAY_DTRI="6"))) == {
        ("XML1", "SO_NGAY_DTRI", "DAYS_MISMATCH")
    }


def test_days_before_a_booked_admission_do_not_count() -> None:
    # Admitted on the 12th after a visit on the 10th: 3 to 5 days are both readings of 3176.
    rows = changed("XML1", 0, NGAY_VAO_NOI_TRU="202503120800", SO_NGAY_DTRI="3")
    assert problems(claim_of(rows)) == set()


def test_under_four_hours_counts_zero_days() -> None:
    rows = changed("XML1", 0, MA_LOAI_KCB="09", NGAY_RA="202503101130", SO_NGAY_DTRI="1")
    assert problems(claim_of(rows)) == {("XML1", "SO_NGAY_DTRI", "DAYS_MISMATCH")}
    rows = changed("XML1", 0, MA_LOAI_KCB="09", NGAY_RA="202503101130", SO_NGAY_DTRI="0")
    assert problems(claim_of(rows)) == set()


def test_a_line_amount_that_is_not_quantity_times_price() -> None:
    rows = changed("XML2", 0, DON_GIA="1500.6")
    assert problems(claim_of(rows)) == {
        ("XML2", "THANH_TIEN_BV", "AMOUNT_MISMATCH"),
        ("XML2", "THANH_TIEN_BH", "AMOUNT_MISMATCH"),
    }


def test_a_service_line_priced_without_its_service_rate() -> None:
    rows = changed("XML3", 0, TYLE_TT_DV="50")
    assert problems(claim_of(rows)) == {
        ("XML3", "THANH_TIEN_BV", "AMOUNT_MISMATCH"),
        ("XML3", "THANH_TIEN_BH", "AMOUNT_MISMATCH"),
    }


def test_other_sources_that_are_not_the_sum_of_their_parts() -> None:
    rows = changed("XML3", 1, T_NGUONKHAC_NSNN="900")
    assert problems(claim_of(rows)) == {("XML3", "T_NGUONKHAC", "AMOUNT_MISMATCH")}


def test_shares_that_do_not_add_up_to_the_line() -> None:
    rows = sample.claim_rows()
    line, summary = rows["XML2"][0], rows["XML1"][0]
    line["T_BHTT"] = money(line["T_BHTT"], "1")
    summary["T_BHTT"] = money(summary["T_BHTT"], "1")
    summary["T_BHTT_GDV"] = money(summary["T_BHTT_GDV"], "1")
    assert problems(claim_of(rows)) == {("XML2", "T_BHTT", "AMOUNT_MISMATCH")}


@pytest.mark.parametrize(
    "total",
    [
        "T_THUOC",
        "T_VTYT",
        "T_TONGCHI_BV",
        "T_TONGCHI_BH",
        "T_BNTT",
        "T_BNCCT",
        "T_BHTT",
        "T_NGUONKHAC",
        "T_BHTT_GDV",
    ],
)
def test_a_total_that_is_not_the_sum_of_the_lines(total: str) -> None:
    rows = sample.claim_rows()
    rows["XML1"][0][total] = money(rows["XML1"][0][total], "0.01")
    assert problems(claim_of(rows)) == {("XML1", total, "TOTAL_MISMATCH")}


def test_the_summary_is_required() -> None:
    rows = sample.claim_rows()
    del rows["XML1"]
    assert problems(claim_of(rows)) == {("XML1", "", "MISSING_TABLE")}


def test_drug_lines_are_required_when_drugs_are_billed() -> None:
    rows = sample.claim_rows()
    del rows["XML2"]
    assert ("XML2", "", "MISSING_TABLE") in problems(claim_of(rows))


def test_service_lines_are_required_when_services_are_billed() -> None:
    rows = sample.claim_rows()
    del rows["XML3"]
    found = problems(claim_of(rows))
    assert ("XML3", "", "MISSING_TABLE") in found
    assert ("XML2", "", "MISSING_TABLE") not in found


def test_a_claim_without_drugs_or_services_is_valid_with_zero_totals() -> None:
    rows = sample.claim_rows()
    for kind in ("XML2", "XML3"):
        del rows[kind]
    for total in ("T_THUOC", "T_VTYT", *validate.SUMMED_TOTALS, "T_BHTT_GDV"):
        rows["XML1"][0][total] = "0"
    assert problems(claim_of(rows)) == set()


def test_the_check_in_table_and_unknown_tables_are_refused_in_a_claim() -> None:
    documents = sample.claim_documents()
    checkin = build.table_document("XML0", [{"MA_LK": sample.LINK_KEY, "STT": "1"}])
    document = build.submission(sample.FACILITY, [{**documents, "XML0": checkin}], sample.PREPARED_ON)
    assert problems(document) == {("XML0", "LOAIHOSO", "UNEXPECTED_TABLE")}
    document = build.submission(sample.FACILITY, [{**documents, "XML99": b"<X/>"}], sample.PREPARED_ON)
    assert problems(document) == {("GIAMDINHHS", "LOAIHOSO", "UNEXPECTED_TABLE")}


def test_conditional_requirements_that_the_claim_itself_shows() -> None:
    assert problems(claim_of(changed("XML1", 0, NGAY_VAO_NOI_TRU=""))) == {
        ("XML1", "NGAY_VAO_NOI_TRU", "REQUIRED")
    }
    assert problems(claim_of(changed("XML3", 1, TEN_VAT_TU=""))) == {("XML3", "TEN_VAT_TU", "REQUIRED")}
    rows = changed("XML3", 1, MA_VAT_TU="", TEN_VAT_TU="")
    rows["XML1"][0]["T_VTYT"] = "0"
    assert problems(claim_of(rows)) == {("XML3", "MA_DICH_VU", "REQUIRED")}


def test_a_table_with_the_wrong_root() -> None:
    def rename(kind: str, root: ET.Element) -> None:
        if kind == "XML4":
            root.tag = "CHI_TIEU_CLS"

    assert ("XML4", "", "BAD_STRUCTURE") in problems(claim_of(sample.claim_rows(), rename))


@pytest.mark.parametrize(
    "document",
    [
        b"not xml",
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><GIAMDINHHS>&x;</GIAMDINHHS>',
    ],
)
def test_a_body_that_is_not_plain_xml(document: bytes) -> None:
    assert problems(document) == {("GIAMDINHHS", "", "MALFORMED")}


def test_a_table_that_is_not_base64() -> None:
    document = sample.claim().replace(b"<NOIDUNGFILE>", b"<NOIDUNGFILE>!!", 1)
    # The summary is reported unreadable, not missing as well.
    assert problems(document) == {("XML1", "NOIDUNGFILE", "MALFORMED")}


def test_an_envelope_of_the_wrong_shape() -> None:
    assert problems(b"<HOSO/>") == {("GIAMDINHHS", "", "BAD_ENVELOPE")}
    document = sample.claim().replace(b"<SOLUONGHOSO>1<", b"<SOLUONGHOSO>2<")
    assert problems(document) == {("GIAMDINHHS", "THONGTINHOSO.SOLUONGHOSO", "BAD_ENVELOPE")}
    document = sample.claim().replace(b"<THONGTINDONVI>", b"<EXTRA/><THONGTINDONVI>")
    assert ("GIAMDINHHS", "GIAMDINHHS.EXTRA", "BAD_ENVELOPE") in problems(document)


def test_two_visits_in_one_submission_are_numbered_in_xml1() -> None:
    first = sample.claim_rows()
    second = sample.claim_rows()
    for table_rows in second.values():
        for row in table_rows:
            row["MA_LK"] = "SYN-2025-000124"
    second["XML1"][0]["STT"] = "2"
    documents = [sample.claim_documents(first), sample.claim_documents(second)]
    assert validate_submission(build.submission(sample.FACILITY, documents, sample.PREPARED_ON)) == []
    second["XML1"][0]["STT"] = "1"
    documents[1] = sample.claim_documents(second)
    found = validate_submission(build.submission(sample.FACILITY, documents, sample.PREPARED_ON))
    assert [(e.record, e.table, e.field, e.code) for e in found] == [(2, "XML1", "STT", "BAD_STT")]
    assert found[0].location == "HOSO[2].XML1[1].STT"


def test_todays_thin_summary_is_refused_field_by_field() -> None:
    thin = {
        name: sample.claim_rows()["XML1"][0][name] for name in ("MA_LK", "STT", "MA_BN", "HO_TEN", "MA_CSKCB")
    }
    summary = ET.Element("TONG_HOP")
    for name, value in thin.items():
        ET.SubElement(summary, name).text = value
    document = build.submission(sample.FACILITY, [{"XML1": build.serialize(summary)}], sample.PREPARED_ON)
    found = problems(document)
    assert ("XML1", "NGAY_VAO", "MISSING_ELEMENT") in found
    assert ("XML1", "T_TONGCHI_BV", "MISSING_ELEMENT") in found


def test_the_answer_is_bounded() -> None:
    rows = sample.claim_rows()
    rows["XML5"] = [dict(rows["XML5"][0], STT=str(i), THOI_DIEM_DBLS="bad") for i in range(1, 600)]
    assert len(validate_submission(claim_of(rows))) == validate.MAX_ERRORS


def test_a_check_in_document() -> None:
    row = sample.checkin_row()
    assert validate.validate_checkin(sample.checkin()) == []
    found = validate.validate_checkin(sample.checkin(dict(row, TEN_DICH_VU="", GIOI_TINH="")))
    assert {(e.table, e.field, e.code) for e in found} == {
        ("XML0", "GIOI_TINH", "REQUIRED"),
        ("XML0", "TEN_DICH_VU", "REQUIRED"),
    }


def test_a_withdrawal_names_a_visit_and_closes_with_its_signature_place() -> None:
    assert validate.validate_withdrawal(sample.withdrawal()) == []
    root = ET.fromstring(sample.withdrawal())
    root.find("NGAYHUY").text = "2025-03-16"  # type: ignore[union-attr]
    root.find("MA_LK").text = ""  # type: ignore[union-attr]
    found = validate.validate_withdrawal(ET.tostring(root))
    assert {(e.table, e.field, e.code) for e in found} == {
        ("HUYHOSO", "NGAYHUY", "BAD_FORMAT"),
        ("HUYHOSO", "MA_LK", "REQUIRED"),
    }
    root.remove(root.find("CHUKYDONVI"))  # type: ignore[arg-type]
    unsigned = validate.validate_withdrawal(ET.tostring(root))
    assert ("HUYHOSO", "CHUKYDONVI", "BAD_STRUCTURE") in {(e.table, e.field, e.code) for e in unsigned}


def test_base64_with_line_breaks_is_read() -> None:
    documents = sample.claim_documents()
    document = sample.claim()
    wrapped = base64.encodebytes(documents["XML1"]).decode()
    plain = base64.b64encode(documents["XML1"]).decode()
    assert problems(document.replace(plain.encode(), wrapped.encode())) == set()


# --- coded columns against the national code lists -----------------------------------------------


def test_coded_columns_are_checked_against_the_lists_only_when_given() -> None:
    document = claim_of(changed("XML2", 0, DUONG_DUNG="9.99"))
    assert validate_submission(document) == []  # the sender's own check: shape only
    found = validate_submission(document, load_code_lists())
    assert {(e.table, e.row, e.field, e.code) for e in found} == {("XML2", 1, "DUONG_DUNG", "BAD_CODE")}
    assert "9.99" not in found[0].message  # names the list, never the value


def test_a_department_code_no_longer_in_force_on_the_visit_day_is_refused(tmp_path: Path) -> None:
    shipped = (SHIPPED_DIRECTORY / "departments.csv").read_text(encoding="utf-8")
    # K01 closed the day before the sample visit's arrival (2025-03-10).
    (tmp_path / "departments.csv").write_text(
        shipped.replace("K01,Khoa Khám bệnh,2017-09-20,", "K01,Khoa Khám bệnh,2017-09-20,2025-03-09"),
        encoding="utf-8",
    )
    found = validate_submission(sample.claim(), load_code_lists(tmp_path))
    refused = {(e.table, e.field, e.code) for e in found}
    assert ("XML1", "MA_KHOA", "BAD_CODE") in refused
    assert {code for _, _, code in refused} == {"BAD_CODE"}
    assert validate_submission(sample.claim(), load_code_lists()) == []
