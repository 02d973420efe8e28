"""What the emulated national system holds: submissions keyed by their Idempotency-Key, the
resource versions they applied, and the order they were applied in.

In memory, by design: the emulator stands in for a remote system in dev and tests; `forget` (or a
restart) is how a test simulates the national side losing data.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ResourceKey = tuple[str, str, str]  # (resource type, id, version)


@dataclass(frozen=True)
class Receipt:
    """The national system's acknowledgement of one submission."""

    transaction_id: str
    received_at: datetime


@dataclass(frozen=True)
class Submission:
    idempotency_key: str
    kind: str  # "fhir" or "claim"
    patient_id: str
    entries: tuple[ResourceKey, ...]
    content: Any
    receipt: Receipt


@dataclass
class Faults:
    """Injected misbehaviour of the submission endpoints; every field off by default."""

    error_rate: float = 0.0
    error_status: int = 503
    throttle_rate: float = 0.0
    retry_after_seconds: int = 1
    latency_ms: int = 0
    outage_until: datetime | None = None
    drop_after_commit_rate: float = 0.0

    def in_outage(self, now: datetime) -> bool:
        return self.outage_until is not None and now < self.outage_until

    def start_outage(self, seconds: float, now: datetime) -> None:
        self.outage_until = now + timedelta(seconds=seconds) if seconds > 0 else None


@dataclass
class VisitClaims:
    """What the portal holds of one visit (a facility's MA_LK): its check-in, its claims in the
    order received (each later one replaces the one before) and whether it was withdrawn."""

    checkin: str = ""  # the check-in's idempotency key
    claims: list[str] = field(default_factory=list)
    withdrawal: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "checked_in": bool(self.checkin),
            "claims": list(self.claims),
            "current_claim": self.claims[-1] if self.claims and not self.withdrawal else None,
            "replacements": max(len(self.claims) - 1, 0),
            "withdrawn": bool(self.withdrawal),
        }


@dataclass
class NationalStore:
    submissions: dict[str, Submission] = field(default_factory=dict)
    resources: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    received: int = 0
    duplicates_received: int = 0
    faults: Faults = field(default_factory=Faults)
    visits: dict[tuple[str, str], VisitClaims] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def accept(
        self,
        idempotency_key: str,
        kind: str,
        patient_id: str,
        resources: list[dict[str, Any]],
        content: Any,
    ) -> tuple[Submission, bool]:
        """Applies a submission once; a repeated key returns the first receipt and counts a duplicate."""
        self.received += 1
        held = self.submissions.get(idempotency_key)
        if held is not None:
            self.duplicates_received += 1
            return held, False
        entries = []
        for resource in resources:
            key = (resource["resourceType"], str(resource.get("id", "")), version_of(resource))
            self.resources.setdefault(key, resource)
            entries.append(key)
        submission = Submission(
            idempotency_key,
            kind,
            patient_id,
            tuple(entries),
            content,
            Receipt(str(uuid.uuid4()), datetime.now(UTC)),
        )
        self.submissions[idempotency_key] = submission
        self.applied.append(idempotency_key)
        return submission, True

    def visit(self, facility_code: str, link_key: str) -> VisitClaims:
        return self.visits.setdefault((facility_code, link_key), VisitClaims())

    def known_visit(self, facility_code: str, link_key: str) -> VisitClaims | None:
        return self.visits.get((facility_code, link_key))

    def forget(self, idempotency_key: str) -> bool:
        """Loses a submission, as a national system that dropped data would."""
        submission = self.submissions.pop(idempotency_key, None)
        if submission is None:
            return False
        self.applied.remove(idempotency_key)
        return True

    def applied_for(self, patient_id: str | None, kind: str | None) -> list[Submission]:
        """Submissions in the order they were applied."""
        chosen = (self.submissions[key] for key in self.applied)
        return [
            s
            for s in chosen
            if (patient_id is None or s.patient_id == patient_id) and (kind is None or s.kind == kind)
        ]

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


def version_of(resource: dict[str, Any]) -> str:
    meta = resource.get("meta")
    return str(meta.get("versionId", "")) if isinstance(meta, dict) else ""
