"""The claim tables XML0..XML5 as data: one CSV per table in ``tables/`` (official order, type, size;
required, format and an English meaning as this project reads the decisions), plus the XML element
names each table is written in. Builders and validators take both from here.

Format tokens of the ``format`` column:
``integer``; ``decimal(N)`` (at most N decimal places, never an exponent); ``yyyymmddHHMM``;
``yyyymmdd``; ``yyyymmdd|yyyymmddHHMM`` (either); ``birth-yyyymmddHHMM`` (day and month may be 0000
when unknown); ``list`` / ``list(N)`` (``;``-separated, at most N items); ``list:yyyymmdd`` (a list of
dates); ``codes:a|b|c`` (one of the codes); ``range:a..b`` (an integer within bounds); empty: free text.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

Requirement = Literal["yes", "no", "conditional"]
TABLE_KINDS = ("XML0", "XML1", "XML2", "XML3", "XML4", "XML5")
# The tables a GIAMDINHHS claim may carry; XML0 (check-in) travels alone, as its own submission.
CLAIM_TABLE_KINDS = ("XML1", "XML2", "XML3", "XML4", "XML5")
CHECKIN_KIND = "XML0"
ENVELOPE_ROOT = "GIAMDINHHS"
SIGNATURE_ELEMENT = "CHUKYDONVI"
# The documents a facility sends and signs (each with its CHUKYDONVI as the root's last child): the
# claim (GIAMDINHHS), the check-in sent alone (XML0's root) and the withdrawal of a visit's claim
# (HUYHOSO, this project's own form: the decisions publish none). Each maps to where it names the
# facility; every such element of the document must name the same one.
CHECKIN_ROOT = "CHI_TIEU_TRANG_THAI_KCB"
WITHDRAWAL_ROOT = "HUYHOSO"
FACILITY_PATHS: dict[str, str] = {
    ENVELOPE_ROOT: "THONGTINDONVI/MACSKCB",
    CHECKIN_ROOT: "DSACH_TRANG_THAI_KCB/TRANG_THAI_KCB/MA_CSKCB",
    WITHDRAWAL_ROOT: "MACSKCB",
}


@dataclass(frozen=True)
class Field:
    """One element of a table row."""

    order: int
    name: str
    type: str  # string | integer | decimal | date | datetime
    max_size: int | None  # characters of the written value; None: unlimited ("n")
    required: Requirement
    condition: str  # when required is "conditional": the rule, in words
    format: str
    meaning: str

    @property
    def codes(self) -> frozenset[str]:
        """The allowed values when the format is a code list, else empty."""
        if self.format.startswith("codes:"):
            return frozenset(self.format.removeprefix("codes:").split("|"))
        return frozenset()

    @property
    def bounds(self) -> tuple[int, int] | None:
        """(low, high) when the format is an integer range."""
        if not self.format.startswith("range:"):
            return None
        low, _, high = self.format.removeprefix("range:").partition("..")
        return int(low), int(high)

    @property
    def decimal_places(self) -> int | None:
        """N of a ``decimal(N)`` format, 0 for integers (and code lists and ranges of a number field)."""
        if self.format.startswith("decimal("):
            return int(self.format.removeprefix("decimal(").removesuffix(")"))
        if self.type == "integer":
            return 0
        return None

    @property
    def max_items(self) -> int | None:
        """N of a ``list(N)`` format."""
        if self.format.startswith("list("):
            return int(self.format.removeprefix("list(").removesuffix(")"))
        return None


@dataclass(frozen=True)
class Table:
    """A table and the elements it is written in: ``root`` holds ``rows_element`` holding one
    ``row_element`` per row; XML1 is a single row whose root is the row itself (rows_element empty)."""

    kind: str
    root: str
    rows_element: str
    row_element: str
    fields: tuple[Field, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)

    def field(self, name: str) -> Field:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.kind} has no field {name}")


# (root, rows element, row element) of each table in the Decision 130 layout.
ELEMENTS: dict[str, tuple[str, str, str]] = {
    "XML0": (CHECKIN_ROOT, "DSACH_TRANG_THAI_KCB", "TRANG_THAI_KCB"),
    "XML1": ("TONG_HOP", "", "TONG_HOP"),
    "XML2": ("CHITIEU_CHITIET_THUOC", "DSACH_CHI_TIET_THUOC", "CHI_TIET_THUOC"),
    "XML3": ("CHITIEU_CHITIET_DVKT_VTYT", "DSACH_CHI_TIET_DVKT", "CHI_TIET_DVKT"),
    "XML4": ("CHITIEU_CHITIET_DICHVUCANLAMSANG", "DSACH_CHI_TIET_CLS", "CHI_TIET_CLS"),
    "XML5": ("CHITIEU_CHITIET_DIENBIENLAMSANG", "DSACH_CHI_TIET_DIEN_BIEN_BENH", "CHI_TIET_DIEN_BIEN_BENH"),
}


def _requirement(cell: str) -> tuple[Requirement, str]:
    kind, _, rule = cell.partition(":")
    if kind == "yes":
        return "yes", ""
    if kind == "no":
        return "no", ""
    if kind == "conditional" and rule.strip():
        return "conditional", rule.strip()
    raise ValueError(f"bad required cell {cell!r}")


def _load(kind: str) -> tuple[Field, ...]:
    text = resources.files("emr_claims").joinpath("tables", f"{kind.lower()}.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    fields = []
    for row in csv.DictReader(lines):
        required, condition = _requirement(row["required"])
        fields.append(
            Field(
                order=int(row["order"]),
                name=row["field"],
                type=row["type"],
                max_size=int(row["max_size"]) if row["max_size"] else None,
                required=required,
                condition=condition,
                format=row["format"],
                meaning=row["meaning"],
            )
        )
    return tuple(fields)


@cache
def table(kind: str) -> Table:
    """The table of a LOAIHOSO (``XML0``..``XML5``)."""
    if kind not in ELEMENTS:
        raise KeyError(f"unknown claim table {kind}")
    root, rows_element, row_element = ELEMENTS[kind]
    return Table(kind, root, rows_element, row_element, _load(kind))


def tables() -> dict[str, Table]:
    return {kind: table(kind) for kind in TABLE_KINDS}
