"""Retention of clinical records (Circular 33/2025/TT-BYT): pure rules, no I/O.

A record's class is derived from its content; the unit that is kept and disposed together is the
episode (an encounter with every resource attached to it; a resource without an encounter is its own
episode), whose class is the longest of its members' classes and of the floors later events raised
(a death raises every record of the patient to 30 years). The clock starts at the end of the
episode: the latest of the encounter's end time and its members' clinical times (an encounter
without an end is still open and never due); for a resource without an encounter, its clinical time.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from emr_records.domain import (
    ChargeLineContent,
    ClinicalRecord,
    ConditionContent,
    EncounterContent,
    ResourceType,
    visit_day,
)


class RetentionClass(enum.Enum):
    """How long a record is kept, ordered: a later class in this list is never shorter."""

    STANDARD_10_YEARS = "10y"
    SPECIAL_20_YEARS = "20y"
    DEATH_30_YEARS = "30y"
    PERMANENT = "permanent"

    @property
    def years(self) -> int | None:
        """Years kept after the end of the episode; None: kept permanently."""
        return _YEARS[self]

    @property
    def rank(self) -> int:
        return _ORDER.index(self)


_ORDER = (
    RetentionClass.STANDARD_10_YEARS,
    RetentionClass.SPECIAL_20_YEARS,
    RetentionClass.DEATH_30_YEARS,
    RetentionClass.PERMANENT,
)
_YEARS: dict[RetentionClass, int | None] = {
    RetentionClass.STANDARD_10_YEARS: 10,
    RetentionClass.SPECIAL_20_YEARS: 20,
    RetentionClass.DEATH_30_YEARS: 30,
    RetentionClass.PERMANENT: None,
}
# The shortest class: no record can be due earlier than this many years after its clinical time.
MINIMUM_YEARS = 10


def longest(classes: Iterable[RetentionClass]) -> RetentionClass:
    return max(classes, key=lambda c: c.rank, default=RetentionClass.STANDARD_10_YEARS)


# --- what marks a class ----------------------------------------------------------------------------
# ICD-10 (WHO) code ranges, by the first three characters. Limits: a code marks a record only when it
# is coded (a condition, a charge line's diagnosis codes); the free-text diagnoses of an encounter
# are not read.
# Psychiatric: chapter V, mental and behavioural disorders.
PSYCHIATRIC = (("F00", "F99"),)
# Occupational disease: ICD-10 has no chapter for it; these mark it (occupational exposure Z57,
# work-related condition Y96, pneumoconioses and airway diseases due to dust J60-J66,
# noise-induced hearing loss H83.3). Not the national list of compensable occupational diseases.
OCCUPATIONAL = (("Z57", "Z57"), ("Y96", "Y96"), ("J60", "J66"))
OCCUPATIONAL_FULL_CODES = frozenset({"H83.3", "H833"})
# Transport accidents (chapter XX, V01-V99).
TRAFFIC_ACCIDENT = (("V01", "V99"),)
# Transplant: transplanted organ status Z94, complications of transplanted organs T86, organ donors Z52.
TRANSPLANT = (("Z94", "Z94"), ("T86", "T86"), ("Z52", "Z52"))
# MA_TAI_NAN of the claim tables: 1 traffic accident, 2 work accident (code list not verified).
ACCIDENT_CODES_20_YEARS = frozenset({"1", "2", "01", "02"})
# Treatment outcome (KET_QUA_DTRI) 5 died at the facility, 8 died outside it; FHIR disposition "exp".
DEATH_OUTCOMES = frozenset({"5", "8"})
DEATH_DISPOSITIONS = frozenset({"exp"})
_ICD_HEAD = re.compile(r"[A-Z][0-9]{2}")


def _in_ranges(code: str, ranges: tuple[tuple[str, str], ...]) -> bool:
    head = code.strip().upper()[:3]
    if not _ICD_HEAD.fullmatch(head):
        return False
    return any(low <= head <= high for low, high in ranges)


def icd10_class(code: str) -> RetentionClass:
    """The class one ICD-10 code calls for."""
    normalized = code.strip().upper()
    if _in_ranges(normalized, TRANSPLANT):
        return RetentionClass.DEATH_30_YEARS
    if (
        _in_ranges(normalized, PSYCHIATRIC)
        or _in_ranges(normalized, OCCUPATIONAL)
        or _in_ranges(normalized, TRAFFIC_ACCIDENT)
        or normalized in OCCUPATIONAL_FULL_CODES
    ):
        return RetentionClass.SPECIAL_20_YEARS
    return RetentionClass.STANDARD_10_YEARS


def records_death(record: ClinicalRecord) -> bool:
    """Whether the record tells of the patient's death."""
    content = record.content
    return isinstance(content, EncounterContent) and (
        content.outcome_code in DEATH_OUTCOMES or content.discharge_disposition in DEATH_DISPOSITIONS
    )


def own_class(record: ClinicalRecord) -> RetentionClass:
    """The class a record's own content calls for."""
    content = record.content
    if records_death(record):
        return RetentionClass.DEATH_30_YEARS
    if isinstance(content, EncounterContent):
        if content.accident_code.strip() in ACCIDENT_CODES_20_YEARS:
            return RetentionClass.SPECIAL_20_YEARS
        return RetentionClass.STANDARD_10_YEARS
    if isinstance(content, ConditionContent):
        return icd10_class(content.icd10_code)
    if isinstance(content, ChargeLineContent) and content.service is not None:
        return longest(icd10_class(code) for code in content.service.diagnosis_codes)
    return RetentionClass.STANDARD_10_YEARS


# --- the episode ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """Records kept and disposed together, with what decides when."""

    key: str  # the encounter id, or the resource id of a resource without an encounter
    patient_id: str
    records: tuple[ClinicalRecord, ...]
    retention_class: RetentionClass
    # When the clock starts; None while the episode is open (an encounter without an end).
    clock_start: datetime | None


def episode_of(
    key: str,
    records: Iterable[ClinicalRecord],
    floors: Iterable[RetentionClass] = (),
) -> Episode:
    """The episode of ``records`` (an encounter and what is attached to it, or one resource), its
    class raised by ``floors`` (the patient's, the records' explicit classes)."""
    members = tuple(records)
    assert members, "an episode has at least one record"
    encounter = next((r for r in members if r.resource_type is ResourceType.ENCOUNTER), None)
    clock_start: datetime | None = max(r.time for r in members)
    if encounter is not None:
        assert isinstance(encounter.content, EncounterContent)
        end = encounter.content.end_time
        clock_start = None if end is None else max(end, clock_start) if clock_start else end
    return Episode(
        key=key,
        patient_id=members[0].patient_id,
        records=members,
        retention_class=longest([*(own_class(r) for r in members), *floors]),
        clock_start=clock_start,
    )


def add_years(day: date, years: int) -> date:
    """The same day ``years`` later (29 February becomes 28 February in a common year)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def disposal_day(episode: Episode) -> date | None:
    """The first day the episode may be disposed of: the day after its retention ends (retention
    counted in whole days of Vietnam time from the day the episode ended). None: never (open, or
    kept permanently)."""
    years = episode.retention_class.years
    if years is None or episode.clock_start is None:
        return None
    return add_years(visit_day(episode.clock_start), years)


def is_due(episode: Episode, as_of: date) -> bool:
    day = disposal_day(episode)
    return day is not None and day <= as_of


def list_digest(items: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of a disposal's list: sorted "<type>:<id>" lines."""
    lines = sorted(f"{kind}:{resource_id}" for kind, resource_id in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
