"""Strict validation of a claim submission, answered the way the national portal answers: one
``FieldError`` per problem, naming the table, the row, the field and a stable error code.

Checks: the envelope's shape; which tables are present (XML1 always, XML2 when drugs are billed, XML0
never: the check-in travels alone, see ``validate_checkin``); every row's elements exactly as the table
lists them (no unknown, duplicate or missing element, table order); required values; sizes; number,
date and list formats; small fixed code lists; MA_LK the same in every table; STT 1..n; money:
each line's THANH_TIEN_BV/BH from quantity x price x rates rounded to 2 places, T_NGUONKHAC the sum
of its parts, T_BHTT + T_BNCCT + T_BNTT + T_NGUONKHAC = THANH_TIEN_BV; the XML1 totals the sums of the
lines; SO_NGAY_DTRI from the dates (Decision 3176/QĐ-BYT).

Messages name fields, rules and limits, never the submitted values: a rejection is logged and kept by
the sender, and the values are patient data.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from xml.etree import ElementTree as ET

from emr_claims import codelists, formats
from emr_claims.spec import (
    CHECKIN_KIND,
    CLAIM_TABLE_KINDS,
    ENVELOPE_ROOT,
    SIGNATURE_ELEMENT,
    WITHDRAWAL_ROOT,
    Field,
    Table,
    table,
)

# Stable error codes (the portal's field-level answers are keyed the same way).
MALFORMED = "MALFORMED"  # not well-formed XML, not base64, or carries a DTD
BAD_ENVELOPE = "BAD_ENVELOPE"  # the GIAMDINHHS envelope is not shaped as specified
BAD_STRUCTURE = "BAD_STRUCTURE"  # a table's root, list or row elements are not the specified ones
MISSING_TABLE = "MISSING_TABLE"
UNEXPECTED_TABLE = "UNEXPECTED_TABLE"  # unknown, repeated, or XML0 inside a claim
MISSING_ELEMENT = "MISSING_ELEMENT"  # a field's element is absent (every element is written, empty or not)
DUPLICATE_ELEMENT = "DUPLICATE_ELEMENT"
UNKNOWN_ELEMENT = "UNKNOWN_ELEMENT"
BAD_ORDER = "BAD_ORDER"
REQUIRED = "REQUIRED"  # a required value is empty
TOO_LONG = "TOO_LONG"
BAD_FORMAT = "BAD_FORMAT"
BAD_CODE = "BAD_CODE"
OUT_OF_RANGE = "OUT_OF_RANGE"
TOO_MANY = "TOO_MANY"  # a list holds more items than allowed
BAD_STT = "BAD_STT"
LINK_MISMATCH = "LINK_MISMATCH"
DATE_ORDER = "DATE_ORDER"
DAYS_MISMATCH = "DAYS_MISMATCH"
AMOUNT_MISMATCH = "AMOUNT_MISMATCH"  # a line's amount does not follow from its quantity, prices and rates
TOTAL_MISMATCH = "TOTAL_MISMATCH"  # an XML1 total is not the sum of the lines
BAD_LINK = "BAD_LINK"  # the MA_LK is not one the portal may take this document for (withdrawn, unknown)
ERROR_CODES = (
    MALFORMED,
    BAD_ENVELOPE,
    BAD_STRUCTURE,
    MISSING_TABLE,
    UNEXPECTED_TABLE,
    MISSING_ELEMENT,
    DUPLICATE_ELEMENT,
    UNKNOWN_ELEMENT,
    BAD_ORDER,
    REQUIRED,
    TOO_LONG,
    BAD_FORMAT,
    BAD_CODE,
    OUT_OF_RANGE,
    TOO_MANY,
    BAD_STT,
    LINK_MISMATCH,
    DATE_ORDER,
    DAYS_MISMATCH,
    AMOUNT_MISMATCH,
    TOTAL_MISMATCH,
    BAD_LINK,
)
ENVELOPE = "GIAMDINHHS"
# Inpatient and day treatment (MA_LOAI_KCB 03, 04) need the admission time.
ADMITTED_KINDS = frozenset({"03", "04"})
# 3176: SO_NGAY_DTRI = NGAY_RA - NGAY_VAO + 1; 0 for 09; other kinds count service or drug days,
# which the claim alone cannot confirm.
SPAN_DAY_KINDS = frozenset({"01", "03", "04", "06"})
ZERO_DAY_KINDS = frozenset({"09"})
# (table, code field, name field): a code given needs its name.
NAMED_CODES = (
    ("XML0", "MA_DICH_VU", "TEN_DICH_VU"),
    ("XML0", "MA_THUOC", "TEN_THUOC"),
    ("XML0", "MA_VAT_TU", "TEN_VAT_TU"),
    ("XML3", "MA_DICH_VU", "TEN_DICH_VU"),
    ("XML3", "MA_VAT_TU", "TEN_VAT_TU"),
)
LINE_SHARES = ("T_BHTT", "T_BNCCT", "T_BNTT", "T_NGUONKHAC")
OTHER_SOURCES = ("T_NGUONKHAC_NSNN", "T_NGUONKHAC_VTNN", "T_NGUONKHAC_VTTN", "T_NGUONKHAC_CL")
# XML1 total -> the line field it sums.
SUMMED_TOTALS = {
    "T_TONGCHI_BV": "THANH_TIEN_BV",
    "T_TONGCHI_BH": "THANH_TIEN_BH",
    "T_BNTT": "T_BNTT",
    "T_BNCCT": "T_BNCCT",
    "T_BHTT": "T_BHTT",
    "T_NGUONKHAC": "T_NGUONKHAC",
}
# Coded columns checked against the national code lists in force on the visit's day (NGAY_VAO) when
# the validator is given the lists (the portal's side). Sync checks the shape only: records checked
# the codes, against the lists the hospital runs with, when they were written.
CODED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("XML1", "MA_LOAI_KCB", codelists.VISIT_TYPES),
    ("XML1", "MA_LOAI_RV", codelists.DISCHARGE_KINDS),
    ("XML1", "KET_QUA_DTRI", codelists.TREATMENT_OUTCOMES),
    ("XML1", "MA_KHOA", codelists.DEPARTMENTS),
    ("XML2", "MA_NHOM", codelists.PAYMENT_GROUPS),
    ("XML2", "DUONG_DUNG", codelists.DRUG_ROUTES),
    ("XML2", "PHAM_VI", codelists.SCOPES),
    ("XML2", "MA_KHOA", codelists.DEPARTMENTS),
    ("XML3", "MA_NHOM", codelists.PAYMENT_GROUPS),
    ("XML3", "PHAM_VI", codelists.SCOPES),
    ("XML3", "MA_KHOA", codelists.DEPARTMENTS),
)
MAX_ERRORS = 500  # a hostile submission cannot make the answer unbounded
_DTD = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)
Row = dict[str, str]


@dataclass(frozen=True)
class FieldError:
    """One problem: ``row`` is 1-based within its table (0 for the envelope or a whole table);
    ``record`` is the HOSO (visit) of the submission it belongs to, 1-based (0 for the envelope)."""

    table: str
    row: int
    field: str
    code: str
    message: str
    record: int = 1

    @property
    def location(self) -> str:
        where = f"HOSO[{self.record}]." if self.record else ""
        row = f"[{self.row}]" if self.row else ""
        name = f".{self.field}" if self.field else ""
        return f"{where}{self.table}{row}{name}"


@dataclass
class _Report:
    errors: list[FieldError] = field(default_factory=list)
    record: int = 0

    def add(self, table_kind: str, row: int, field_name: str, code: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(FieldError(table_kind, row, field_name, code, message, self.record))


def _parse(document: bytes, report: _Report, table_kind: str) -> ET.Element | None:
    if _DTD.search(document):
        report.add(table_kind, 0, "", MALFORMED, "document type declarations and entities are not accepted")
        return None
    try:
        return ET.fromstring(document)  # noqa: S314 - DTDs refused above, so no entity expansion
    except ET.ParseError as error:
        report.add(table_kind, 0, "", MALFORMED, f"not well-formed XML: {error}")
        return None


def _text(element: ET.Element) -> str:
    return element.text or ""


def _children_in_order(
    parent: ET.Element,
    expected: tuple[str, ...],
    optional: frozenset[str],
    report: _Report,
    table_kind: str,
    path: str,
) -> dict[str, ET.Element]:
    """The children of an envelope element, each once, in the expected order; problems reported as
    BAD_ENVELOPE naming the path."""
    found: dict[str, ET.Element] = {}
    order: list[str] = []
    for child in parent:
        if child.tag not in expected:
            report.add(
                table_kind, 0, f"{path}.{child.tag}", BAD_ENVELOPE, f"{child.tag} is not expected in {path}"
            )
        elif child.tag in found:
            report.add(
                table_kind, 0, f"{path}.{child.tag}", BAD_ENVELOPE, f"{child.tag} appears twice in {path}"
            )
        else:
            found[child.tag] = child
            order.append(child.tag)
    for name in expected:
        if name not in found and name not in optional:
            report.add(table_kind, 0, f"{path}.{name}", BAD_ENVELOPE, f"{path} needs {name}")
    if order != [name for name in expected if name in found]:
        report.add(
            table_kind,
            0,
            path,
            BAD_ENVELOPE,
            f"children of {path} must come in the order {', '.join(expected)}",
        )
    return found


def check_value(spec_field: Field, value: str) -> tuple[str, str] | None:
    """(code, message) when a non-empty value breaks its field's size or format."""
    if spec_field.max_size is not None and len(value) > spec_field.max_size:
        return TOO_LONG, f"{len(value)} characters; at most {spec_field.max_size}"
    fmt = spec_field.format
    try:
        if spec_field.codes:
            if value not in spec_field.codes:
                return BAD_CODE, f"not one of {', '.join(sorted(spec_field.codes))}"
        elif spec_field.bounds is not None:
            number = formats.read_integer(value)
            low, high = spec_field.bounds
            if not low <= number <= high:
                return OUT_OF_RANGE, f"outside {low}..{high}"
        elif spec_field.decimal_places is not None:
            formats.read_decimal(value, spec_field.decimal_places)
        elif fmt == "yyyymmddHHMM":
            formats.read_date_time(value)
        elif fmt == "yyyymmdd":
            formats.read_date(value)
        elif fmt == "yyyymmdd|yyyymmddHHMM":
            formats.read_date(value) if len(value) == 8 else formats.read_date_time(value)
        elif fmt == "birth-yyyymmddHHMM":
            formats.read_birth(value)
        elif fmt.startswith("list"):
            items = formats.read_list(value)
            if spec_field.max_items is not None and len(items) > spec_field.max_items:
                return TOO_MANY, f"{len(items)} items; at most {spec_field.max_items}"
            if fmt == "list:yyyymmdd":
                for item in items:
                    formats.read_date(item)
    except formats.FormatError as error:
        return BAD_FORMAT, str(error)
    return None


def _check_row(spec: Table, index: int, element: ET.Element, report: _Report) -> Row:
    """The values of one row, after reporting its element and value problems."""
    kind = spec.kind
    values: Row = {}
    order: list[str] = []
    for child in element:
        name = child.tag
        if name not in spec.names:
            report.add(kind, index, name, UNKNOWN_ELEMENT, f"{kind} has no element {name}")
            continue
        if name in values:
            report.add(kind, index, name, DUPLICATE_ELEMENT, f"{name} appears more than once")
            continue
        if len(child):
            report.add(kind, index, name, BAD_FORMAT, f"{name} holds elements; it must hold text only")
        values[name] = _text(child)
        order.append(name)
    expected_order = [name for name in spec.names if name in values]
    for written, expected in zip(order, expected_order, strict=True):
        if written != expected:
            report.add(
                kind, index, written, BAD_ORDER, f"{written} is out of order: {expected} must come here"
            )
            break
    for spec_field in spec.fields:
        if spec_field.name not in values:
            report.add(kind, index, spec_field.name, MISSING_ELEMENT, f"element {spec_field.name} is missing")
            continue
        value = values[spec_field.name]
        if not value.strip():
            if spec_field.required == "yes":
                report.add(kind, index, spec_field.name, REQUIRED, f"{spec_field.name} is required")
            continue
        problem = check_value(spec_field, value)
        if problem is not None:
            report.add(kind, index, spec_field.name, problem[0], problem[1])
    return values


def _table_rows(spec: Table, root: ET.Element, report: _Report) -> list[Row]:
    kind = spec.kind
    if root.tag != spec.root:
        report.add(kind, 0, "", BAD_STRUCTURE, f"{kind} root must be {spec.root}, not {root.tag}")
        return []
    if not spec.rows_element:
        return [_check_row(spec, 1, root, report)]
    row_elements: list[ET.Element] = []
    lists = [child for child in root if child.tag == spec.rows_element]
    for child in root:
        if child.tag not in (spec.rows_element, SIGNATURE_ELEMENT):
            report.add(kind, 0, child.tag, BAD_STRUCTURE, f"{spec.root} holds only {spec.rows_element}")
    if len(lists) != 1:
        report.add(
            kind, 0, spec.rows_element, BAD_STRUCTURE, f"{spec.root} needs exactly one {spec.rows_element}"
        )
        return []
    for child in lists[0]:
        if child.tag == spec.row_element:
            row_elements.append(child)
        else:
            report.add(
                kind, 0, child.tag, BAD_STRUCTURE, f"{spec.rows_element} holds only {spec.row_element}"
            )
    if not row_elements:
        report.add(kind, 0, spec.row_element, BAD_STRUCTURE, f"{kind} is sent only with at least one row")
    return [_check_row(spec, index, element, report) for index, element in enumerate(row_elements, 1)]


def _decimal(row: Row, name: str, places: int) -> Decimal | None:
    try:
        return formats.read_decimal(row.get(name, ""), places)
    except formats.FormatError:
        return None


def _amounts(row: Row, names: Iterable[str], places: int = formats.MONEY_PLACES) -> list[Decimal] | None:
    values = [_decimal(row, name, places) for name in names]
    return None if any(value is None for value in values) else [v for v in values if v is not None]


def _check_line_money(kind: str, index: int, row: Row, report: _Report) -> bool:
    """Report a line whose amounts do not follow from its inputs; False when an amount is unreadable
    (its format error is reported already)."""
    price = "DON_GIA" if kind == "XML2" else "DON_GIA_BV"
    inputs = _amounts(row, ("SO_LUONG", price), formats.QUANTITY_PLACES)
    rates = _amounts(row, ("TYLE_TT_BH", "TYLE_TT_DV") if kind == "XML3" else ("TYLE_TT_BH",), 0)
    insured_price = _decimal(row, "DON_GIA_BH", formats.PRICE_PLACES) if kind == "XML3" else None
    money = _amounts(row, ("THANH_TIEN_BV", "THANH_TIEN_BH", *LINE_SHARES, *OTHER_SOURCES))
    if money is None:
        return False
    facility, insured, paid_by_fund, co_paid, self_paid, other, *sources = money
    if inputs is not None and rates is not None:
        quantity, unit_price = inputs
        insured_rate = rates[0]
        service_rate = rates[1] if kind == "XML3" else Decimal(100)
        expected_facility = formats.round_money(quantity * unit_price * service_rate / 100)
        if kind == "XML3":
            expected_insured = (
                formats.round_money(quantity * insured_price * service_rate / 100 * insured_rate / 100)
                if insured_price is not None
                else None
            )
            formula = "SO_LUONG x DON_GIA_BV x TYLE_TT_DV / 100"
        else:
            expected_insured = formats.round_money(quantity * unit_price * insured_rate / 100)
            formula = "SO_LUONG x DON_GIA"
        if facility != expected_facility:
            report.add(
                kind,
                index,
                "THANH_TIEN_BV",
                AMOUNT_MISMATCH,
                f"not {formula}, rounded to 2 places",
            )
        if expected_insured is not None and insured != expected_insured:
            report.add(
                kind,
                index,
                "THANH_TIEN_BH",
                AMOUNT_MISMATCH,
                "not quantity x insured price x rates, rounded to 2 places",
            )
    if other != sum(sources, Decimal(0)):
        report.add(kind, index, "T_NGUONKHAC", AMOUNT_MISMATCH, "not the sum of the four T_NGUONKHAC_ parts")
    shares = paid_by_fund + co_paid + self_paid + other
    if shares != facility:
        report.add(
            kind,
            index,
            "T_BHTT",
            AMOUNT_MISMATCH,
            "T_BHTT + T_BNCCT + T_BNTT + T_NGUONKHAC is not THANH_TIEN_BV",
        )
    return True


def _check_totals(summary: Row, lines: dict[str, list[Row]], report: _Report) -> None:
    drugs, services = lines.get("XML2", []), lines.get("XML3", [])

    def total(rows: Iterable[Row], name: str, keep: Callable[[Row], bool] = lambda _: True) -> Decimal:
        return sum((_decimal(row, name, 2) or Decimal(0) for row in rows if keep(row)), Decimal(0))

    expected = {
        "T_THUOC": total(drugs, "THANH_TIEN_BV"),
        "T_VTYT": total(services, "THANH_TIEN_BV", lambda row: bool(row.get("MA_VAT_TU", "").strip())),
        **{name: total([*drugs, *services], line_field) for name, line_field in SUMMED_TOTALS.items()},
    }
    payment_methods = table("XML2").field("MA_PTTT").codes
    if summary.get("T_BHTT_GDV", "").strip() and all(
        row.get("MA_PTTT") in payment_methods for row in (*drugs, *services)
    ):
        expected["T_BHTT_GDV"] = total([*drugs, *services], "T_BHTT", lambda row: row.get("MA_PTTT") == "1")
    for name, value in expected.items():
        written = _decimal(summary, name, 2)
        if written is not None and written != value:
            report.add("XML1", 1, name, TOTAL_MISMATCH, "not the sum of the lines")


def _check_days(summary: Row, report: _Report) -> None:
    try:
        arrived = formats.read_date_time(summary.get("NGAY_VAO", ""))
        left = formats.read_date_time(summary.get("NGAY_RA", ""))
        days = formats.read_integer(summary.get("SO_NGAY_DTRI", ""))
    except formats.FormatError:
        return
    if left < arrived:
        report.add("XML1", 1, "NGAY_RA", DATE_ORDER, "NGAY_RA is before NGAY_VAO")
        return
    kind = summary.get("MA_LOAI_KCB", "")
    span = (left.date() - arrived.date()).days + 1
    if kind in ZERO_DAY_KINDS and days != 0:
        report.add("XML1", 1, "SO_NGAY_DTRI", DAYS_MISMATCH, f"MA_LOAI_KCB {kind} counts 0 days")
    elif kind in SPAN_DAY_KINDS:
        shortest = span
        admitted = summary.get("NGAY_VAO_NOI_TRU", "")
        if admitted.strip() and kind != "01":
            # Days between the visit and a booked admission do not count (3176).
            try:
                shortest = (left.date() - formats.read_date_time(admitted).date()).days + 1
            except formats.FormatError:
                return
        if not min(shortest, span) <= days <= span:
            report.add("XML1", 1, "SO_NGAY_DTRI", DAYS_MISMATCH, "not NGAY_RA - NGAY_VAO + 1 (calendar days)")


def _check_conditions(kind: str, index: int, row: Row, report: _Report) -> None:
    for table_kind, code, name in NAMED_CODES:
        if table_kind == kind and row.get(code, "").strip() and not row.get(name, "").strip():
            report.add(kind, index, name, REQUIRED, f"{name} is required with {code}")
    if kind == "XML3" and not row.get("MA_DICH_VU", "").strip() and not row.get("MA_VAT_TU", "").strip():
        report.add(kind, index, "MA_DICH_VU", REQUIRED, "a row needs MA_DICH_VU, MA_VAT_TU or both")
    if (
        kind == "XML1"
        and row.get("MA_LOAI_KCB") in ADMITTED_KINDS
        and not row.get("NGAY_VAO_NOI_TRU", "").strip()
    ):
        report.add(
            kind, index, "NGAY_VAO_NOI_TRU", REQUIRED, "inpatient and day treatment need NGAY_VAO_NOI_TRU"
        )


def _check_sequence(kind: str, rows: list[Row], first: int, report: _Report) -> None:
    for index, row in enumerate(rows, 1):
        stt = row.get("STT", "")
        if stt.isdigit() and int(stt) != first + index - 1:
            report.add(
                kind,
                index,
                "STT",
                BAD_STT,
                f"rows are numbered 1, 2, ...: this one is {first + index - 1}",
            )


def _decode(kind: str, content: str, report: _Report) -> ET.Element | None:
    try:
        document = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        report.add(kind, 0, "NOIDUNGFILE", MALFORMED, "NOIDUNGFILE is not base64")
        return None
    return _parse(document, report, kind)


def _check_codes(rows: dict[str, list[Row]], lists: codelists.CodeLists, report: _Report) -> None:
    summary = rows["XML1"][0] if rows.get("XML1") else {}
    try:
        day = formats.read_date_time(summary.get("NGAY_VAO", "")).date()
    except formats.FormatError:
        return  # NGAY_VAO's own error is reported; no day to check the codes on
    # A value already refused (too long, bad format) is not reported again as an unknown code.
    refused = {(e.table, e.row, e.field) for e in report.errors if e.record == report.record}
    for kind, name, list_name in CODED_COLUMNS:
        for index, row in enumerate(rows.get(kind, []), 1):
            if (kind, index, name) in refused:
                continue
            codes = [code.strip() for code in row.get(name, "").split(";") if code.strip()]
            if any(lists[list_name].problem(code, day) for code in codes):
                report.add(
                    kind,
                    index,
                    name,
                    BAD_CODE,
                    f"not a code of the {list_name} list in force on the visit's day",
                )


def _check_record(
    hoso: ET.Element, facility: str, report: _Report, lists: codelists.CodeLists | None = None
) -> None:
    roots: dict[str, ET.Element] = {}
    for child in hoso:
        if child.tag != "FILEHOSO":
            report.add(ENVELOPE, 0, f"HOSO.{child.tag}", BAD_ENVELOPE, "HOSO holds only FILEHOSO elements")
            continue
        parts = _children_in_order(
            child, ("LOAIHOSO", "NOIDUNGFILE"), frozenset(), report, ENVELOPE, "FILEHOSO"
        )
        if "LOAIHOSO" not in parts or "NOIDUNGFILE" not in parts:
            continue
        kind = _text(parts["LOAIHOSO"]).strip()
        if kind == CHECKIN_KIND:
            report.add(
                kind, 0, "LOAIHOSO", UNEXPECTED_TABLE, "XML0 is sent alone, as the check-in, not in a claim"
            )
            continue
        if kind not in CLAIM_TABLE_KINDS:
            report.add(
                ENVELOPE, 0, "LOAIHOSO", UNEXPECTED_TABLE, f"{kind[:16]!r} is not a table this portal takes"
            )
            continue
        if kind in roots:
            report.add(kind, 0, "LOAIHOSO", UNEXPECTED_TABLE, f"{kind} appears twice in one HOSO")
            continue
        root = _decode(kind, _text(parts["NOIDUNGFILE"]), report)
        if root is not None:
            roots[kind] = root
    if "XML1" not in roots:
        if not any(e.record == report.record and e.table == "XML1" for e in report.errors):
            report.add("XML1", 0, "", MISSING_TABLE, "every claim carries XML1")
        return
    rows = {kind: _table_rows(table(kind), root, report) for kind, root in roots.items()}
    summary = rows["XML1"][0] if rows["XML1"] else {}
    link = summary.get("MA_LK", "")
    _check_sequence("XML1", rows["XML1"], report.record, report)
    for kind, table_rows in rows.items():
        if kind != "XML1":
            _check_sequence(kind, table_rows, 1, report)
        for index, row in enumerate(table_rows, 1):
            _check_conditions(kind, index, row, report)
            if kind != "XML1" and link and row.get("MA_LK", "").strip() and row.get("MA_LK") != link:
                report.add(kind, index, "MA_LK", LINK_MISMATCH, "MA_LK differs from XML1's")
    if facility and summary.get("MA_CSKCB", "").strip() and summary.get("MA_CSKCB") != facility:
        report.add("XML1", 1, "MA_CSKCB", LINK_MISMATCH, "MA_CSKCB differs from the envelope's MACSKCB")
    _check_days(summary, report)
    if lists is not None:
        _check_codes(rows, lists, report)
    readable = True
    for kind in ("XML2", "XML3"):
        for index, row in enumerate(rows.get(kind, []), 1):
            readable = _check_line_money(kind, index, row, report) and readable
    drug_total = _decimal(summary, "T_THUOC", 2)
    if "XML2" not in roots and drug_total:
        report.add("XML2", 0, "", MISSING_TABLE, "T_THUOC is not 0, so the drug lines (XML2) are required")
    facility_total = _decimal(summary, "T_TONGCHI_BV", 2)
    if "XML3" not in roots and facility_total is not None and facility_total > (drug_total or 0):
        report.add(
            "XML3",
            0,
            "",
            MISSING_TABLE,
            "T_TONGCHI_BV exceeds T_THUOC, so the service lines (XML3) are required",
        )
    if readable:
        _check_totals(summary, rows, report)


def validate_submission(document: bytes, lists: codelists.CodeLists | None = None) -> list[FieldError]:
    """Every problem of a GIAMDINHHS claim submission; empty when it is valid. With ``lists``, the
    coded columns are checked against the code lists in force on the visit's day too."""
    report = _Report()
    root = _parse(document, report, ENVELOPE)
    if root is None:
        return report.errors
    if root.tag != ENVELOPE_ROOT:
        report.add(ENVELOPE, 0, "", BAD_ENVELOPE, f"root element must be {ENVELOPE_ROOT}, not {root.tag}")
        return report.errors
    parts = _children_in_order(
        root,
        ("THONGTINDONVI", "THONGTINHOSO", SIGNATURE_ELEMENT),
        frozenset({SIGNATURE_ELEMENT}),
        report,
        ENVELOPE,
        ENVELOPE,
    )
    facility = ""
    if "THONGTINDONVI" in parts:
        unit = _children_in_order(
            parts["THONGTINDONVI"], ("MACSKCB",), frozenset(), report, ENVELOPE, "THONGTINDONVI"
        )
        facility = _text(unit["MACSKCB"]).strip() if "MACSKCB" in unit else ""
        if "MACSKCB" in unit and not facility:
            report.add(ENVELOPE, 0, "THONGTINDONVI.MACSKCB", REQUIRED, "MACSKCB is required")
    if "THONGTINHOSO" not in parts:
        return report.errors
    info = _children_in_order(
        parts["THONGTINHOSO"],
        ("NGAYLAP", "SOLUONGHOSO", "DANHSACHHOSO"),
        frozenset(),
        report,
        ENVELOPE,
        "THONGTINHOSO",
    )
    if "NGAYLAP" in info:
        try:
            formats.read_date(_text(info["NGAYLAP"]))
        except formats.FormatError as error:
            report.add(ENVELOPE, 0, "THONGTINHOSO.NGAYLAP", BAD_FORMAT, str(error))
    if "DANHSACHHOSO" not in info:
        return report.errors
    records = list(info["DANHSACHHOSO"])
    for child in records:
        if child.tag != "HOSO":
            report.add(ENVELOPE, 0, f"DANHSACHHOSO.{child.tag}", BAD_ENVELOPE, "DANHSACHHOSO holds only HOSO")
    records = [child for child in records if child.tag == "HOSO"]
    if not records:
        report.add(ENVELOPE, 0, "DANHSACHHOSO", BAD_ENVELOPE, "a submission holds at least one HOSO")
    if "SOLUONGHOSO" in info and _text(info["SOLUONGHOSO"]).strip() != str(len(records)):
        report.add(
            ENVELOPE,
            0,
            "THONGTINHOSO.SOLUONGHOSO",
            BAD_ENVELOPE,
            f"SOLUONGHOSO must be {len(records)}, the HOSO count",
        )
    for number, hoso in enumerate(records, 1):
        report.record = number
        _check_record(hoso, facility, report, lists)
    return report.errors


def validate_checkin(document: bytes) -> list[FieldError]:
    """Every problem of an XML0 check-in document (CHI_TIEU_TRANG_THAI_KCB); empty when valid."""
    report = _Report()
    root = _parse(document, report, CHECKIN_KIND)
    if root is None:
        return report.errors
    rows = _table_rows(table(CHECKIN_KIND), root, report)
    _check_sequence(CHECKIN_KIND, rows, 1, report)
    for index, row in enumerate(rows, 1):
        _check_conditions(CHECKIN_KIND, index, row, report)
    return report.errors


# HUYHOSO: the project's withdrawal form (emr_claims.build.withdrawal_document), checked like a table.
WITHDRAWAL_FIELDS = (
    Field(1, "MACSKCB", "string", 5, "yes", "", "", "Facility whose claim is withdrawn."),
    Field(2, "MA_LK", "string", 100, "yes", "", "", "Link key of the withdrawn visit."),
    Field(3, "NGAYHUY", "datetime", 12, "yes", "", "yyyymmddHHMM", "When the visit was withdrawn."),
)


def validate_withdrawal(document: bytes) -> list[FieldError]:
    """Every problem of a withdrawal (HUYHOSO); empty when it is valid."""
    report = _Report()
    root = _parse(document, report, WITHDRAWAL_ROOT)
    if root is None:
        return report.errors
    if root.tag != WITHDRAWAL_ROOT:
        report.add(
            WITHDRAWAL_ROOT, 0, "", BAD_STRUCTURE, f"root element must be {WITHDRAWAL_ROOT}, not {root.tag}"
        )
        return report.errors
    signatures = [child for child in root if child.tag == SIGNATURE_ELEMENT]
    if len(signatures) != 1 or root[-1] is not signatures[0]:
        report.add(
            WITHDRAWAL_ROOT,
            0,
            SIGNATURE_ELEMENT,
            BAD_STRUCTURE,
            f"one {SIGNATURE_ELEMENT} must close the document",
        )
    for signature in signatures:
        root.remove(signature)
    spec = Table(WITHDRAWAL_ROOT, WITHDRAWAL_ROOT, "", WITHDRAWAL_ROOT, WITHDRAWAL_FIELDS)
    _check_row(spec, 1, root, report)
    return report.errors
