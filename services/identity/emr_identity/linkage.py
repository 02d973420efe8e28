"""Facility records and review tasks: what registrations leave behind for linking. Pure; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from emr_identity.birth_dates import BirthDate
from emr_identity.claim_profile import NO_CLAIM_PROFILE, ClaimProfile
from emr_identity.domain import (
    Identifier,
    IdentifierSystem,
    Outcome,
    Person,
    PersonStatus,
    Registration,
    Sex,
)
from emr_identity.matching import Candidate, MatchRecord
from emr_identity.vietnamese import split_name


@dataclass(frozen=True)
class RecordDemographics:
    """A facility's own demographics of a person: what it registered (normalised), as its later
    updates changed them. ``version``: 1 at registration, +1 per update of the facility's record."""

    full_name: str
    birth_date: BirthDate
    sex: Sex
    phone: str = ""
    province_code: str = ""
    version: int = 1
    claim_profile: ClaimProfile = NO_CLAIM_PROFILE


@dataclass(frozen=True)
class FacilityRecord:
    """One registration by a facility: the demographics as entered (normalised for matching) and
    the person it was linked to. ``outcome`` is None until the registration finished; a repeated
    request returns what the finished record says. ``match`` never changes (the blocks hold it);
    ``demographics`` is what the facility shows and updates of the person when it sees only its own
    data (None for records written before facility records kept them: see ``shown_demographics``)."""

    record_id: str
    person_id: str
    facility_code: str
    match: MatchRecord
    request_fingerprint: str
    created_at: datetime
    outcome: Outcome | None = None
    candidates: tuple[Candidate, ...] = ()
    review_task_id: str = ""
    identifiers: tuple[Identifier, ...] | None = None
    demographics: RecordDemographics | None = None


def record_demographics(registration: Registration) -> RecordDemographics:
    return RecordDemographics(
        full_name=registration.full_name,
        birth_date=registration.birth_date,
        sex=registration.sex,
        phone=registration.phone,
        province_code=registration.province_code,
        claim_profile=registration.claim_profile,
    )


def shown_demographics(record: FacilityRecord) -> tuple[tuple[Identifier, ...], RecordDemographics]:
    """The record's identifiers and demographics; for a record written before records kept them,
    rebuilt from what the matcher keeps (names in title case, no MRN)."""
    match = record.match
    identifiers = record.identifiers
    if identifiers is None:
        identifiers = tuple(
            Identifier(system, value)
            for system, value in (
                (IdentifierSystem.CCCD, match.cccd),
                (IdentifierSystem.BHYT, match.bhyt_code),
                (IdentifierSystem.PASSPORT, match.passport),
            )
            if value
        )
    if record.demographics is not None:
        return identifiers, record.demographics
    name = " ".join(word.capitalize() for word in match.names.full.split())
    return identifiers, RecordDemographics(
        name, match.birth_date, Sex(match.sex), match.phone, match.province_code
    )


def facility_person(person_id: str, record: FacilityRecord) -> Person:
    """The person as one facility's record shows it: what that facility registered (and updated),
    under the person's id and the record's version; nothing another facility entered."""
    identifiers, shown = shown_demographics(record)
    return Person(
        person_id=person_id,
        identifiers=identifiers,
        full_name=shown.full_name,
        birth_date=shown.birth_date,
        sex=shown.sex,
        registering_facility_code=record.facility_code,
        created_at=record.created_at,
        status=PersonStatus.ACTIVE,
        request_fingerprint=record.request_fingerprint,
        phone=shown.phone,
        province_code=shown.province_code,
        version=shown.version,
        claim_profile=shown.claim_profile,
    )


def newest(records: list[FacilityRecord]) -> FacilityRecord | None:
    """The latest finished registration among ``records`` (ties broken by id), None if none."""
    finished = [r for r in records if r.outcome is not None]
    return max(finished, key=lambda r: (r.created_at, r.record_id)) if finished else None


def known_as(person: Person) -> MatchRecord:
    """The person's current demographics as the matcher compares them (names, birth date, sex)."""
    return MatchRecord(
        record_id=f"{person.person_id}:v{person.version}",
        names=split_name(person.full_name),
        birth_date=person.birth_date,
        sex=person.sex.value,
    )


class ReviewKind(enum.Enum):
    # A registration whose best match fell between the thresholds (or several qualified).
    DUPLICATE = "duplicate"
    # A registration carrying an identifier of a person known by another name or birth date.
    IDENTIFIER_CONFLICT = "identifier_conflict"
    # A facility that sees only its own data proposed another name, birth date or sex.
    DEMOGRAPHICS_CHANGE = "demographics_change"


class Resolution(enum.Enum):
    SAME_PERSON = "same"
    DIFFERENT_PERSONS = "different"
    ACCEPT_CHANGE = "accept"
    REJECT_CHANGE = "reject"


# Which resolutions decide which kind of task.
RESOLUTIONS = {
    ReviewKind.DUPLICATE: frozenset({Resolution.SAME_PERSON, Resolution.DIFFERENT_PERSONS}),
    ReviewKind.IDENTIFIER_CONFLICT: frozenset({Resolution.SAME_PERSON, Resolution.DIFFERENT_PERSONS}),
    ReviewKind.DEMOGRAPHICS_CHANGE: frozenset({Resolution.ACCEPT_CHANGE, Resolution.REJECT_CHANGE}),
}


@dataclass(frozen=True)
class ProposedDemographics:
    """The shared demographics a facility proposed for a person."""

    full_name: str
    birth_date: BirthDate
    sex: Sex


@dataclass(frozen=True)
class ReviewTask:
    """A question for a data steward about one person: whether a registration's person is one of
    the candidates (DUPLICATE, IDENTIFIER_CONFLICT), or whether a proposed change of the person's
    demographics is right (DEMOGRAPHICS_CHANGE: ``proposed`` by ``facility_code``)."""

    task_id: str
    person_id: str
    record_id: str
    candidates: tuple[Candidate, ...]
    created_at: datetime
    open: bool = True
    resolution: str = ""
    kind: ReviewKind = ReviewKind.DUPLICATE
    proposed: ProposedDemographics | None = None
    facility_code: str = ""


def proposes_change(person: Person, proposed: ProposedDemographics) -> bool:
    """Whether ``proposed`` differs from the person's shared demographics."""
    return (person.full_name, person.birth_date, person.sex) != (
        proposed.full_name,
        proposed.birth_date,
        proposed.sex,
    )


def review_task_id(sequence: int) -> str:
    """Task ids sort in creation order, so open tasks are listed by reading ids in sequence."""
    return f"review-{sequence:012d}"
