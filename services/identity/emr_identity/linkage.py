"""Facility records and review tasks: what registrations leave behind for linking. Pure; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from emr_identity.domain import Outcome
from emr_identity.matching import Candidate, MatchRecord


@dataclass(frozen=True)
class FacilityRecord:
    """One registration by a facility: the demographics as entered (normalised for matching) and
    the person it was linked to. ``outcome`` is None until the registration finished; a repeated
    request returns what the finished record says."""

    record_id: str
    person_id: str
    facility_code: str
    match: MatchRecord
    request_fingerprint: str
    created_at: datetime
    outcome: Outcome | None = None
    candidates: tuple[Candidate, ...] = ()
    review_task_id: str = ""


@dataclass(frozen=True)
class ReviewTask:
    """A registration whose best match fell between the thresholds."""

    task_id: str
    person_id: str
    record_id: str
    candidates: tuple[Candidate, ...]
    created_at: datetime
    open: bool = True
    resolution: str = ""


def review_task_id(sequence: int) -> str:
    """Task ids sort in creation order, so open tasks are listed by reading ids in sequence."""
    return f"review-{sequence:012d}"
