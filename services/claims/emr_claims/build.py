"""Writing claim documents from rows of text values, in the elements and order ``spec`` defines:
every field of the table is written (empty when the row has no value), nothing else is."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from xml.etree import ElementTree as ET

from emr_claims import formats
from emr_claims.spec import CHECKIN_KIND, ENVELOPE_ROOT, SIGNATURE_ELEMENT, WITHDRAWAL_ROOT, table

Row = Mapping[str, str]


def table_element(kind: str, rows: Sequence[Row]) -> ET.Element:
    """The XML element tree of one table (XML1 takes exactly one row)."""
    spec = table(kind)
    for row in rows:
        unknown = set(row) - set(spec.names)
        if unknown:
            raise ValueError(f"{kind} has no field {', '.join(sorted(unknown))}")
    if not spec.rows_element:
        if len(rows) != 1:
            raise ValueError(f"{kind} holds exactly one row")
        root = ET.Element(spec.root)
        for name in spec.names:
            ET.SubElement(root, name).text = rows[0].get(name, "")
        return root
    root = ET.Element(spec.root)
    container = ET.SubElement(root, spec.rows_element)
    for row in rows:
        element = ET.SubElement(container, spec.row_element)
        for name in spec.names:
            ET.SubElement(element, name).text = row.get(name, "")
    return root


def serialize(element: ET.Element) -> bytes:
    document: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return document


def table_document(kind: str, rows: Sequence[Row]) -> bytes:
    return serialize(table_element(kind, rows))


def checkin_document(rows: Sequence[Row]) -> bytes:
    """The XML0 check-in, sent alone: its table with an empty CHUKYDONVI for the signer."""
    root = table_element(CHECKIN_KIND, rows)
    ET.SubElement(root, SIGNATURE_ELEMENT)
    return serialize(root)


def withdrawal_document(facility_code: str, link_key: str, withdrawn_at: datetime) -> bytes:
    """The withdrawal of a visit's claim (``HUYHOSO``: MACSKCB, MA_LK, NGAYHUY as yyyymmddHHMM,
    Vietnam time), with an empty CHUKYDONVI for the signer."""
    root = ET.Element(WITHDRAWAL_ROOT)
    ET.SubElement(root, "MACSKCB").text = facility_code
    ET.SubElement(root, "MA_LK").text = link_key
    ET.SubElement(root, "NGAYHUY").text = formats.write_date_time(withdrawn_at)
    ET.SubElement(root, SIGNATURE_ELEMENT)
    return serialize(root)


def submission(facility_code: str, records: Sequence[Mapping[str, bytes]], prepared_on: date) -> bytes:
    """The GIAMDINHHS envelope: each record (one visit) maps LOAIHOSO to its table document, which is
    carried base64-encoded in a FILEHOSO; CHUKYDONVI is left empty for the signer."""
    root = ET.Element(ENVELOPE_ROOT)
    ET.SubElement(ET.SubElement(root, "THONGTINDONVI"), "MACSKCB").text = facility_code
    info = ET.SubElement(root, "THONGTINHOSO")
    ET.SubElement(info, "NGAYLAP").text = formats.write_date(prepared_on)
    ET.SubElement(info, "SOLUONGHOSO").text = str(len(records))
    listing = ET.SubElement(info, "DANHSACHHOSO")
    for record in records:
        hoso = ET.SubElement(listing, "HOSO")
        for kind, document in record.items():
            file_element = ET.SubElement(hoso, "FILEHOSO")
            ET.SubElement(file_element, "LOAIHOSO").text = kind
            ET.SubElement(file_element, "NOIDUNGFILE").text = base64.b64encode(document).decode("ascii")
    ET.SubElement(root, SIGNATURE_ELEMENT)
    return serialize(root)
