"""Unit tests of the retention rules (Circular 33/2025/TT-BYT): the class a record's content calls
for, the episode's class with floors, when the clock starts and when an episode is due (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from emr_records import retention_service
from emr_records.domain import (
    ChargeLineContent,
    ChargeLineKind,
    ChargeLineStatus,
    ClinicalRecord,
    ConditionClinicalStatus,
    ConditionContent,
    Content,
    DiagnosisRole,
    EncounterClass,
    EncounterContent,
    EncounterStatus,
    ServiceDetails,
    resource_type_of,
)
from emr_records.retention import (
    RetentionClass,
    add_years,
    disposal_day,
    episode_of,
    icd10_class,
    is_due,
    list_digest,
    longest,
    own_class,
    records_death,
)
from emr_records.retention_service import (
    DueEpisode,
    _scan_cutoff,
    _within_record_limit,
    check_as_of,
    episode_key,
)
from emr_runtime.errors import InvalidArgumentError

START = datetime(2010, 3, 1, 1, 0, tzinfo=UTC)
END = datetime(2010, 3, 5, 9, 0, tzinfo=UTC)


def record(content: Content, resource_id: str = "r-1", encounter_id: str = "e-1") -> ClinicalRecord:
    return ClinicalRecord(
        resource_type=resource_type_of(content),
        resource_id=resource_id,
        patient_id="p-1",
        facility_code="79001",
        encounter_id="" if isinstance(content, EncounterContent) else encounter_id,
        content=content,
        version=1,
        created_at=START,
        updated_at=START,
        author_id="dr",
        request_id="q",
        request_fingerprint="f",
    )


def encounter(end: datetime | None = END, **changes: str) -> ClinicalRecord:
    status = EncounterStatus.FINISHED if end else EncounterStatus.IN_PROGRESS
    content = EncounterContent(EncounterClass.INPATIENT, status, START, end, **changes)  # type: ignore[arg-type]
    return record(content, resource_id="e-1")


def condition(code: str, resource_id: str = "c-1", at: datetime = START) -> ClinicalRecord:
    content = ConditionContent(code, ConditionClinicalStatus.ACTIVE, DiagnosisRole.PRIMARY, at)
    return record(content, resource_id=resource_id)


def charge_line(*codes: str) -> ClinicalRecord:
    content = ChargeLineContent(
        kind=ChargeLineKind.SERVICE,
        status=ChargeLineStatus.ACTIVE,
        code="01.0001",
        name="Khám",
        unit="lần",
        payment_group="1",
        scope="1",
        quantity="1",
        hospital_unit_price="1000",
        order_time=START,
        service=ServiceDetails(diagnosis_codes=codes),
    )
    return record(content, resource_id="l-1")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("J18.9", RetentionClass.STANDARD_10_YEARS),
        ("F20.0", RetentionClass.SPECIAL_20_YEARS),  # schizophrenia: psychiatric
        ("F00", RetentionClass.SPECIAL_20_YEARS),
        ("F99", RetentionClass.SPECIAL_20_YEARS),
        ("G30", RetentionClass.STANDARD_10_YEARS),  # first code after chapter V
        ("E99", RetentionClass.STANDARD_10_YEARS),  # last code before it
        ("V43.5", RetentionClass.SPECIAL_20_YEARS),  # car occupant: transport accident
        ("W19", RetentionClass.STANDARD_10_YEARS),  # a fall: not a transport accident
        ("J62.8", RetentionClass.SPECIAL_20_YEARS),  # pneumoconiosis: occupational
        ("Z57.1", RetentionClass.SPECIAL_20_YEARS),  # occupational exposure
        ("H83.3", RetentionClass.SPECIAL_20_YEARS),  # noise-induced hearing loss
        ("H83.0", RetentionClass.STANDARD_10_YEARS),
        ("Z94.0", RetentionClass.DEATH_30_YEARS),  # kidney transplant status
        ("T86.1", RetentionClass.DEATH_30_YEARS),  # kidney transplant failure
        ("z52.4", RetentionClass.DEATH_30_YEARS),  # kidney donor, lower case
        ("", RetentionClass.STANDARD_10_YEARS),
        ("not a code", RetentionClass.STANDARD_10_YEARS),
    ],
)
def test_an_icd10_code_calls_for_its_class(code: str, expected: RetentionClass) -> None:
    assert icd10_class(code) is expected


def test_a_condition_and_a_charge_line_take_the_class_of_their_codes() -> None:
    assert own_class(condition("F32.1")) is RetentionClass.SPECIAL_20_YEARS
    assert own_class(condition("I10")) is RetentionClass.STANDARD_10_YEARS
    assert own_class(charge_line("I10", "T86.0")) is RetentionClass.DEATH_30_YEARS
    assert own_class(charge_line()) is RetentionClass.STANDARD_10_YEARS


def test_an_encounter_of_a_death_or_an_accident_has_its_class() -> None:
    assert own_class(encounter()) is RetentionClass.STANDARD_10_YEARS
    for death in (
        encounter(outcome_code="5"),
        encounter(outcome_code="8"),
        encounter(discharge_disposition="exp"),
    ):
        assert records_death(death)
        assert own_class(death) is RetentionClass.DEATH_30_YEARS
    assert not records_death(encounter(outcome_code="6"))  # grave prognosis, taken home: not a death
    assert own_class(encounter(accident_code="1")) is RetentionClass.SPECIAL_20_YEARS  # traffic
    assert own_class(encounter(accident_code="2")) is RetentionClass.SPECIAL_20_YEARS  # work
    assert own_class(encounter(accident_code="4")) is RetentionClass.STANDARD_10_YEARS  # burn


def test_the_episode_takes_the_longest_class_of_its_members_and_floors() -> None:
    plain = episode_of("e-1", [encounter(), condition("I10")])
    assert plain.retention_class is RetentionClass.STANDARD_10_YEARS
    psychiatric = episode_of("e-1", [encounter(), condition("F20.0")])
    assert psychiatric.retention_class is RetentionClass.SPECIAL_20_YEARS
    # The patient's death floor raises an ordinary episode to 30 years ...
    floored = episode_of("e-1", [encounter(), condition("I10")], [RetentionClass.DEATH_30_YEARS])
    assert floored.retention_class is RetentionClass.DEATH_30_YEARS
    # ... and a floor never lowers a class.
    explicit = episode_of("e-1", [encounter()], [RetentionClass.PERMANENT, RetentionClass.SPECIAL_20_YEARS])
    assert explicit.retention_class is RetentionClass.PERMANENT
    assert longest([]) is RetentionClass.STANDARD_10_YEARS


def test_the_clock_starts_at_the_end_of_the_episode() -> None:
    late_note = condition("I10", at=END + timedelta(days=2))
    assert episode_of("e-1", [encounter(), late_note]).clock_start == END + timedelta(days=2)
    assert episode_of("e-1", [encounter(), condition("I10")]).clock_start == END
    # An open encounter (no end) never starts the clock, whatever its members' times.
    assert episode_of("e-1", [encounter(end=None), condition("I10")]).clock_start is None
    # A resource without an encounter: its own time.
    alone = condition("I10", resource_id="c-9")
    assert episode_of("c-9", [alone]).clock_start == START


def test_an_episode_is_due_the_day_its_retention_has_run_in_vietnam_time() -> None:
    # END is 16:00 on 5 March 2010 in Vietnam; ten years later, that day.
    episode = episode_of("e-1", [encounter()])
    assert disposal_day(episode) == date(2020, 3, 5)
    assert not is_due(episode, date(2020, 3, 4))
    assert is_due(episode, date(2020, 3, 5))
    died = episode_of("e-1", [encounter()], [RetentionClass.DEATH_30_YEARS])
    assert disposal_day(died) == date(2040, 3, 5)
    assert not is_due(died, date(2039, 12, 31))
    permanent = episode_of("e-1", [encounter()], [RetentionClass.PERMANENT])
    assert disposal_day(permanent) is None
    assert not is_due(permanent, date(9999, 12, 31))
    assert not is_due(episode_of("e-1", [encounter(end=None)]), date(2099, 1, 1))


def test_years_are_added_to_a_leap_day() -> None:
    assert add_years(date(2012, 2, 29), 10) == date(2022, 2, 28)
    assert add_years(date(2012, 2, 29), -10) == date(2002, 2, 28)
    assert add_years(date(2012, 2, 29), 20) == date(2032, 2, 29)


def test_the_scan_reads_every_record_that_can_be_due() -> None:
    as_of = date(2020, 3, 5)
    cutoff = _scan_cutoff(as_of)
    episode = episode_of("e-1", [encounter()])
    assert is_due(episode, as_of) and cutoff > END
    # The first moment of the next day in Vietnam: an end then is not yet due.
    later = episode_of("e-1", [encounter(end=cutoff)])
    assert not is_due(later, as_of)


def test_the_episode_of_a_record_is_its_encounter() -> None:
    assert episode_key(encounter()) == "e-1"
    assert episode_key(condition("I10")) == "e-1"
    assert episode_key(record(condition("I10").content, resource_id="c-2", encounter_id="")) == "c-2"


def test_a_disposal_day_is_not_after_today() -> None:
    today = date(2026, 12, 8)
    assert check_as_of("2026-12-08", today) == today
    assert check_as_of("2016-01-31", today) == date(2016, 1, 31)
    for bad in ("2026-12-09", "2999-01-01", "", "2026-13-01", "08/12/2026", "2026-12-8"):
        with pytest.raises(InvalidArgumentError) as raised:
            check_as_of(bad, today)
        assert [v.field for v in raised.value.violations] == ["as_of"]


def test_the_list_digest_is_independent_of_order() -> None:
    first = list_digest([("Encounter", "e-1"), ("Condition", "c-1")])
    assert first == list_digest([("Condition", "c-1"), ("Encounter", "e-1")])
    assert first != list_digest([("Condition", "c-1")])
    assert len(first) == 64


def test_a_disposal_lists_no_more_records_than_one_plan_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    big = episode_of("e-1", [encounter()] + [condition("I10", resource_id=f"c-{n}") for n in range(9)])
    due = [DueEpisode(big, date(2020, 3, 5)) for _ in range(5)]
    monkeypatch.setattr(retention_service, "MAX_DISPOSAL_RECORDS", 25)
    assert len(_within_record_limit(due)) == 2
    monkeypatch.setattr(retention_service, "MAX_DISPOSAL_RECORDS", 5)
    assert len(_within_record_limit(due)) == 1  # one episode always fits, however large
