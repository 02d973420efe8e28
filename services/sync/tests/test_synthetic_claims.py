"""The synthetic visits of the bench make valid full claims whose totals are the sums of their lines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from emr_claims import validate
from emr_sync.claim_xml import claim_rows, claim_xml
from emr_sync.synthetic import SYNTHETIC_DETAILS, check_claim_totals, encounter_backlog, synthetic_visits

NOW = datetime(2025, 3, 15, 3, 0, tzinfo=UTC)


def test_synthetic_claims_pass_the_strict_validator() -> None:
    for visit in synthetic_visits(12, per_patient=4, now=NOW):
        submission = claim_xml(visit.patient, visit.encounter, visit.resources, NOW, SYNTHETIC_DETAILS)
        assert validate.validate_submission(submission) == []
        check_claim_totals(visit)


def test_a_total_that_is_not_the_sum_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    visit = next(synthetic_visits(1, per_patient=1, now=NOW))
    rows = claim_rows(visit.patient, visit.encounter, visit.resources, SYNTHETIC_DETAILS)
    rows["XML1"][0]["T_BHTT"] = str(Decimal(rows["XML1"][0]["T_BHTT"]) + 1)
    monkeypatch.setattr("emr_sync.synthetic.claim_rows", lambda *_: rows)
    with pytest.raises(AssertionError, match="T_BHTT"):
        check_claim_totals(visit)


def test_the_backlog_shows_every_visit() -> None:
    seen: list[str] = []
    deliveries = encounter_backlog(
        5, 4, per_patient=2, each_visit=lambda v: seen.append(v.encounter.encounter_id)
    )
    assert seen == [d.resource_id for d in deliveries]
