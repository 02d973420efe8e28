"""National code lists with validity dates (visit types, discharge kinds, departments, ...), shipped as
CSV files in ``codelists/`` and replaceable file by file from a directory (RECORDS_CODE_LISTS_DIR), so
that a hospital takes up a new list without a release. A code is checked against the list in force
on the visit's date: an old visit re-validates with the codes in force then.

File format (UTF-8): lines starting with ``#`` are comments (the first names the legal source), then
the header ``code,name,valid_from,valid_to`` and one code a line; dates are ``YYYY-MM-DD``, valid_to
is the last day the code is in force and empty while it is."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from pathlib import Path

SHIPPED_DIRECTORY = Path(__file__).parent / "codelists"
HEADER = ["code", "name", "valid_from", "valid_to"]
# The lists records validates against; each is a file <name>.csv.
VISIT_TYPES = "visit_types"
DISCHARGE_KINDS = "discharge_kinds"
TREATMENT_OUTCOMES = "treatment_outcomes"
DRUG_ROUTES = "drug_routes"
DEPARTMENTS = "departments"
PAYMENT_GROUPS = "payment_groups"
SCOPES = "scopes"
LIST_NAMES = (
    VISIT_TYPES,
    DISCHARGE_KINDS,
    TREATMENT_OUTCOMES,
    DRUG_ROUTES,
    DEPARTMENTS,
    PAYMENT_GROUPS,
    SCOPES,
)
MAX_CODE_LENGTH = 64


class CodeListError(ValueError):
    """A code list file that cannot be used; the service refuses to start with it."""


@dataclass(frozen=True)
class CodeEntry:
    code: str
    name: str
    valid_from: date
    valid_to: date | None

    def in_force(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@dataclass(frozen=True)
class CodeList:
    name: str
    source: str
    entries: tuple[CodeEntry, ...]

    def in_force(self, code: str, day: date) -> bool:
        return any(entry.code == code and entry.in_force(day) for entry in self.entries)

    def known(self, code: str) -> bool:
        return any(entry.code == code for entry in self.entries)

    def problem(self, code: str, day: date) -> str | None:
        """Why ``code`` may not be used on ``day``; None when it may."""
        if self.in_force(code, day):
            return None
        if self.known(code):
            return f"code {code!r} of the {self.name} list is not in force on {day.isoformat()}"
        return f"not a code of the {self.name} list"


def parse_code_list(name: str, text: str) -> CodeList:
    """A code list from its CSV text; CodeListError naming the line when anything is wrong."""
    lines = text.splitlines()
    comments = [line for line in lines if line.startswith("#")]
    if not comments:
        raise CodeListError(f"{name}: the first line must be a comment naming the legal source")
    rows = list(csv.reader(io.StringIO("\n".join(line for line in lines if not line.startswith("#")))))
    rows = [row for row in rows if row]
    if not rows or [cell.strip() for cell in rows[0]] != HEADER:
        raise CodeListError(f"{name}: the header must be {','.join(HEADER)}")
    entries: list[CodeEntry] = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            raise CodeListError(f"{name}: row {number} must have {len(HEADER)} columns")
        code, label, start, end = (cell.strip() for cell in row)
        if not code or len(code) > MAX_CODE_LENGTH:
            raise CodeListError(
                f"{name}: row {number} has no code (or one over {MAX_CODE_LENGTH} characters)"
            )
        try:
            valid_from = date.fromisoformat(start)
            valid_to = date.fromisoformat(end) if end else None
        except ValueError as error:
            raise CodeListError(f"{name}: row {number}: dates must be YYYY-MM-DD ({error})") from None
        if valid_to is not None and valid_to < valid_from:
            raise CodeListError(f"{name}: row {number}: valid_to is before valid_from")
        entry = CodeEntry(code, label, valid_from, valid_to)
        if any(e.code == code and _overlap(e, entry) for e in entries):
            raise CodeListError(f"{name}: row {number}: code {code!r} is listed twice for the same days")
        entries.append(entry)
    return CodeList(name, comments[0].lstrip("# ").strip(), tuple(entries))


def _overlap(a: CodeEntry, b: CodeEntry) -> bool:
    a_end = a.valid_to or date.max
    b_end = b.valid_to or date.max
    return a.valid_from <= b_end and b.valid_from <= a_end


@dataclass(frozen=True)
class CodeLists:
    lists: dict[str, CodeList]

    def __getitem__(self, name: str) -> CodeList:
        return self.lists[name]


def load_code_lists(override_directory: Path | None = None) -> CodeLists:
    """The shipped lists, each replaced by the file of the same name in ``override_directory`` when
    there is one there (a hospital's newer list). CodeListError when a list is missing or bad."""
    if override_directory is not None and not override_directory.is_dir():
        raise CodeListError(f"code list directory {override_directory} does not exist")
    lists: dict[str, CodeList] = {}
    for name in LIST_NAMES:
        path = SHIPPED_DIRECTORY / f"{name}.csv"
        if override_directory is not None and (override_directory / f"{name}.csv").is_file():
            path = override_directory / f"{name}.csv"
        if not path.is_file():
            raise CodeListError(f"code list {name} is missing ({path})")
        lists[name] = parse_code_list(name, path.read_text(encoding="utf-8"))
    return CodeLists(lists)
