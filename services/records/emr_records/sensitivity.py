"""Special categories of clinical data (docs/privacy-sensitive.md): which categories a resource
carries, and what a facility sees of it. Pure; no I/O.

A resource carries the categories its author marks it with, those its ICD-10 codes imply (the
project's reading of the code ranges below), and those of its visit: a visit carries every category
of any resource attached to it and of its own mark, because a visit's free texts (reason,
diagnoses, notes) tell what it was about. Marks only ever add: an update that drops a code leaves the
visit marked (the safe direction).

A facility always sees its own records. Another facility's record of a special category is hidden
unless a consent grant names every category it carries (emr_runtime.visibility.Visibility.categories);
referrals and emergency access never open one. A hidden record shows on a timeline as a restricted
entry (type, time, facility; no codes or text), and a read of it by id is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from emr_records.domain import (
    ChargeLineContent,
    ClinicalRecord,
    ConditionContent,
    Content,
    ResourceInput,
    ResourceType,
)
from emr_runtime.errors import Violations
from emr_runtime.visibility import ALL_CATEGORIES, Visibility

HIV = "HIV"
MENTAL_HEALTH = "MENTAL_HEALTH"
REPRODUCTIVE_HEALTH = "REPRODUCTIVE_HEALTH"
SUBSTANCE_USE = "SUBSTANCE_USE"

# ICD-10 (WHO) categories (the three characters before the dot) by special category: inclusive
# ranges of (letter, first number, last number). The project's reading; docs/privacy-sensitive.md.
ICD10_RANGES: dict[str, tuple[tuple[str, int, int], ...]] = {
    # HIV disease (B20-B24), asymptomatic HIV infection status (Z21), laboratory evidence of HIV
    # (R75). Subcategories O98.7 (HIV in pregnancy), Z20.6 (exposure) and Z71.7 (HIV counselling)
    # are listed apart.
    HIV: (("B", 20, 24), ("Z", 21, 21), ("R", 75, 75)),
    # Psychoactive substance use disorders.
    SUBSTANCE_USE: (("F", 10, 19),),
    # Mental and behavioural disorders, substance use apart (see categories_of_icd10).
    MENTAL_HEALTH: (("F", 0, 99),),
    # Pregnancy with abortive outcome (O00-O08), male infertility (N46), habitual aborter, female
    # infertility and complications of artificial fertilisation (N96-N98), contraceptive and
    # procreative management (Z30-Z31).
    REPRODUCTIVE_HEALTH: (("O", 0, 8), ("N", 46, 46), ("N", 96, 98), ("Z", 30, 31)),
}
ICD10_SUBCATEGORIES: dict[str, str] = {"O98.7": HIV, "Z20.6": HIV, "Z71.7": HIV}


def categories_of_icd10(code: str) -> frozenset[str]:
    """The special categories an ICD-10 code implies (none for a code outside every range)."""
    code = code.strip().upper()
    found = {category for prefix, category in ICD10_SUBCATEGORIES.items() if code.startswith(prefix)}
    if len(code) >= 3 and code[1:3].isdigit():
        letter, number = code[0], int(code[1:3])
        found.update(
            category
            for category, ranges in ICD10_RANGES.items()
            if any(letter == first and low <= number <= high for first, low, high in ranges)
        )
    if SUBSTANCE_USE in found:
        found.discard(MENTAL_HEALTH)
    return frozenset(found)


def derived_categories(content: Content) -> frozenset[str]:
    """The categories a resource's own codes imply."""
    codes: Iterable[str] = ()
    if isinstance(content, ConditionContent):
        codes = (content.icd10_code,)
    elif isinstance(content, ChargeLineContent) and content.service is not None:
        codes = content.service.diagnosis_codes
    return frozenset(category for code in codes for category in categories_of_icd10(code))


def own_categories(record: ClinicalRecord) -> frozenset[str]:
    """The categories of a resource by itself: its author's mark and its codes."""
    return record.sensitivity | derived_categories(record.content)


def visit_of(record: ClinicalRecord) -> str:
    """The id of the visit whose categories the resource shares: an encounter's own id, the
    encounter a resource is attached to, or "" for a resource outside any visit."""
    return record.resource_id if record.resource_type is ResourceType.ENCOUNTER else record.encounter_id


def check_sensitivity(violations: Violations, raw: ResourceInput) -> None:
    """The author's mark names known categories (None: an unset or unknown enum value)."""
    prefix = f"{raw.path}." if raw.path else ""
    for index, category in enumerate(raw.sensitivity):
        if category is None or category not in ALL_CATEGORIES:
            violations.add(
                f"{prefix}sensitivity[{index}]", "a SensitivityCategory: " + ", ".join(ALL_CATEGORIES)
            )


def keep_marks(updated: ClinicalRecord, current: ClinicalRecord) -> ClinicalRecord:
    """The new version of a resource, keeping every category its author marked it with before."""
    return replace(updated, sensitivity=updated.sensitivity | current.sensitivity)


@dataclass(frozen=True)
class Restricted:
    """A timeline entry the caller may not see: what exists, without any of its content."""

    resource_type: ResourceType
    time: datetime
    facility_code: str


def hidden(seen: Visibility, record: ClinicalRecord) -> bool:
    """Whether the caller (``seen``) may not see this record, whose ``sensitivity`` is its full set
    of categories (own and its visit's)."""
    return bool(record.sensitivity) and not seen.sees_sensitive(record.facility_code, record.sensitivity)


def restricted(record: ClinicalRecord) -> Restricted:
    return Restricted(record.resource_type, record.time, record.facility_code)


DENIED = (
    "the resource belongs to a special category of data (HIV, mental, reproductive health or "
    "substance use) that the caller's facility may not see: it needs the patient's sharing grant "
    "naming the category for this purpose"
)
