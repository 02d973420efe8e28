"""Unit tests of the matcher: blocking, Fellegi–Sunter scoring and decisions (pure, no I/O)."""

from __future__ import annotations

import unicodedata
from dataclasses import replace

from emr_identity.birth_dates import BirthDate
from emr_identity.matching import (
    LINK_THRESHOLD,
    REVIEW_THRESHOLD,
    Decision,
    MatchRecord,
    MatchScore,
    NameFrequencies,
    block_kind,
    blocking_keys,
    candidate_records,
    decide,
    identifier_conflict,
    proposable,
    rank,
    same_identity,
    score,
    shared_identifiers,
)
from emr_identity.synthetic import duplicates_of, generate
from emr_identity.vietnamese import split_name

DIEP = "Nguyễn Thị Ngọc Điệp"


def record(record_id: str = "a", name: str = DIEP, **changes: object) -> MatchRecord:
    base = MatchRecord(
        record_id=record_id,
        names=split_name(name),
        birth_date=BirthDate(1990, 3, 7),
        sex="female",
        phone="0912345678",
        province_code="79",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def frequencies(*names: str) -> NameFrequencies:
    counts = NameFrequencies()
    for name in names:
        counts.add(split_name(name))
    return counts


POPULATION = frequencies(*(["Nguyễn Văn An"] * 40 + ["Trần Thị Điệp"] * 2 + ["Lê Thị Hoa"] * 58))


def levels(a: MatchRecord, b: MatchRecord) -> dict[str, str]:
    return {c.field: c.level for c in score(a, b, POPULATION).contributions}


def test_nfc_and_nfd_input_match_exactly() -> None:
    nfd = record("b", unicodedata.normalize("NFD", DIEP))
    assert nfd.names == record().names
    assert levels(record(), nfd)["given_name"] == "exact"
    assert decide(record("c"), [("p1", nfd)], POPULATION).decision is Decision.LINK


def test_a_name_written_without_diacritics_matches_its_accented_form() -> None:
    folded = record("b", "Nguyen Thi Ngoc Diep")
    assert levels(record(), folded)["given_name"] == "folded"
    assert {c.field: c.weight for c in score(record(), folded, POPULATION).contributions}["given_name"] > 0
    assert decide(record(), [("p1", folded)], POPULATION).decision is Decision.LINK


def test_tone_difference_in_given_names_written_with_diacritics_is_its_own_level() -> None:
    assert levels(record(name="Lê Văn Tám"), record("b", "Lê Văn Tâm"))["given_name"] == "diacritic"
    # Without diacritics on one side, the tones say nothing.
    assert levels(record(name="Lê Văn Tám"), record("b", "Le Van Tam"))["given_name"] == "folded"


def test_diep_and_diep_with_another_d_are_not_linked() -> None:
    # Điệp and Diệp: both written with diacritics, the given names differ (đ against d).
    diep = record("b", "Nguyễn Thị Ngọc Diệp")
    assert levels(record(), diep)["given_name"] == "diacritic"
    assert decide(record(), [("p1", diep)], POPULATION).decision is not Decision.LINK


def test_day_month_swap_is_partial_agreement() -> None:
    swapped = record("b", birth_date=BirthDate(1990, 7, 3))
    assert levels(record(), swapped)["birth_date"] == "day_month_swap"
    assert blocking_keys(record()) & blocking_keys(swapped)


def test_given_name_typo_level() -> None:
    assert levels(record(), record("b", "Nguyễn Thị Ngọc Điêp"))["given_name"] == "diacritic"
    assert levels(record(), record("b", "Nguyễn Thị Ngọc Diepp"))["given_name"] == "typo"


def test_rare_given_name_says_more_than_common_one() -> None:
    common = score(record(name="Nguyễn Văn An"), record("b", "Nguyễn Văn An"), POPULATION)
    rare = score(record(name="Trần Thị Điệp"), record("b", "Trần Thị Điệp"), POPULATION)
    weight = {c.field: c.weight for c in common.contributions}
    rare_weight = {c.field: c.weight for c in rare.contributions}
    assert rare_weight["given_name"] > weight["given_name"]


def test_every_score_explains_itself() -> None:
    found = score(record(), record("b", cccd="079190000001"), POPULATION)
    fields = [c.field for c in found.contributions]
    assert fields == ["given_name", "middle_name", "family_name", "birth_date", "sex", "phone", "province"]
    assert abs(sum(c.weight for c in found.contributions) - found.total) < 0.01


def test_blocking_never_uses_surname_alone() -> None:
    for key in blocking_keys(record()):
        assert key.split(":", 1)[1] not in ("nguyen", "nguyễn")
        assert "|" in key or key.startswith(("ph:", "cccd:", "bhyt:", "pp:"))


def test_same_name_different_person_is_not_linked() -> None:
    other = record("b", birth_date=BirthDate(1971, 11, 20), phone="0987654321")
    # The names are rare in this index, so the pair may be worth a look, never an automatic link.
    assert decide(record(), [("p1", other)], POPULATION).decision is not Decision.LINK
    assert levels(record(), other)["birth_date"] == "disagree"


def test_names_alone_never_link() -> None:
    close = record("b", birth_date=BirthDate(1990, 3, 9), phone="")
    result = decide(record(phone=""), [("p1", close)], POPULATION)
    assert result.decision is not Decision.LINK


def test_same_cccd_with_compatible_demographics_links_deterministically() -> None:
    a = record(cccd="079190000001", phone="")
    b = record("b", "Nguyen Thi Ngoc Diep", cccd="079190000001", phone="", birth_date=BirthDate(1990, 1, 1))
    found = score(a, b, POPULATION)
    assert found.deterministic
    assert decide(a, [("p1", b)], POPULATION).decision is Decision.LINK


def test_same_cccd_with_other_demographics_is_reviewed() -> None:
    a = record(cccd="079190000001")
    b = record(
        "b", "Phạm Văn Hùng", cccd="079190000001", sex="male", birth_date=BirthDate(1960, 1, 1), phone=""
    )
    assert not score(a, b, POPULATION).deterministic
    assert decide(a, [("p1", b)], POPULATION).decision is not Decision.LINK


def test_rejected_person_is_never_proposed() -> None:
    twin = record("b")
    assert decide(record(), [("p1", twin)], POPULATION).decision is Decision.LINK
    result = decide(record(), [("p1", twin)], POPULATION, frozenset({"p1"}))
    assert result.decision is Decision.NEW
    assert result.candidates == ()


def test_two_strong_persons_go_to_review() -> None:
    result = decide(record(), [("p1", record("b")), ("p2", record("c"))], POPULATION)
    assert result.decision is Decision.REVIEW
    assert {c.person_id for c in result.candidates} == {"p1", "p2"}
    assert all(c.score.total >= LINK_THRESHOLD for c in result.candidates)


def test_synthetic_population_is_seeded_and_has_ground_truth() -> None:
    first = generate(500, 0.1, seed=7)
    assert first == generate(500, 0.1, seed=7)
    assert first != generate(500, 0.1, seed=8)
    keys = [r.person_key for r in first]
    assert 30 <= len(keys) - len(set(keys)) <= 80  # about 10% re-registrations
    assert any(unicodedata.normalize("NFC", r.full_name) != r.full_name for r in first)  # NFD present


def test_different_cccds_never_link_automatically() -> None:
    a = record(cccd="079190000001")
    b = record("b", cccd="079190000002")
    found = score(a, b, POPULATION)
    assert found.total - found.contributions[-1].weight >= LINK_THRESHOLD  # everything else agrees
    # Same phone, name and birth date with another card: worth a look, never an automatic link.
    assert decide(a, [("p1", b)], POPULATION).decision is Decision.REVIEW
    assert decide(a, [("p1", replace(b, phone=""))], POPULATION).decision is not Decision.LINK


def test_candidate_records_join_blocks_and_cap_each_at_its_newest_members() -> None:
    shared = record("r2")
    blocks = {
        "gd:lan|19900105": [record("r1"), shared],
        "ph:0912345678": [record(f"p{i}") for i in range(7)] + [shared],
    }
    found, oversized = candidate_records(blocks, limit=3)
    assert sorted(found) == ["p5", "p6", "r1", "r2"]
    assert found["r2"] is shared
    assert oversized == ["ph:0912345678"]
    found, oversized = candidate_records(blocks, limit=8)
    assert sorted(found) == sorted(["r1", "r2", *(f"p{i}" for i in range(7))])
    assert oversized == []


def test_proposable_scores_are_deterministic_or_at_the_review_threshold() -> None:
    def scored(total: float, deterministic: bool = False) -> MatchScore:
        return MatchScore(total, (), deterministic, False)

    assert proposable(scored(REVIEW_THRESHOLD))
    assert not proposable(scored(REVIEW_THRESHOLD - 0.001))
    assert proposable(scored(-5.0, deterministic=True))


def test_block_kind_is_the_key_prefix_alone() -> None:
    assert block_kind("cccd:079090001234") == "cccd"
    assert block_kind("fy:nguyen van an|1990") == "fy"


def test_duplicates_of_re_register_persons_of_the_population_reproducibly() -> None:
    population = generate(200, 0.0, 5)
    copies = duplicates_of(population, 50, 6)
    assert copies == duplicates_of(population, 50, 6)
    keys = {p.person_key for p in population}
    assert {c.person_key for c in copies} <= keys
    assert len({c.mrn for c in copies}) == 50


# --- identifiers and the identity they belong to ----------------------------------------------------


def test_same_identity_tolerates_data_entry_errors() -> None:
    registered = record(cccd="079190000001")
    tolerated = [
        record("b", "Nguyen Thi Ngoc Diep"),  # diacritics dropped
        record("b", "Nguyễn Thị Ngọc Điêp"),  # a wrong tone
        record("b", "Nguyễn Thị Ngọc Điệu"),  # a typo in the given name
        record("b", "Nguyễn Điệp"),  # the middle name left out
        record("b", birth_date=BirthDate(1990, 7, 3)),  # day and month swapped
        record("b", birth_date=BirthDate(1991, 3, 7)),  # the year one off
        record("b", sex="male", phone="", province_code="01"),  # neither sex, phone nor address count
    ]
    for other in tolerated:
        assert same_identity(registered, other), other
        assert same_identity(other, registered), other


def test_same_identity_refuses_another_name_or_birth_date() -> None:
    registered = record(cccd="079190000001")
    refused = [
        record("b", "Phạm Văn Hùng"),  # another person
        record("b", "Nguyễn Thị Ngọc Hoa"),  # another given name
        record("b", "Trần Thị Ngọc Điệp"),  # another family name
        record("b", "Nguyễn Văn Ngọc Điệp"),  # another middle name
        record("b", "Điệp"),  # a one-word name: the family and given names cannot both agree
        record("b", birth_date=BirthDate(1990, 3, 8)),  # another day
        record("b", birth_date=BirthDate(1992, 3, 7)),  # the year two off
        record("b", birth_date=BirthDate(1990, 4, 7)),  # another month
    ]
    for other in refused:
        assert not same_identity(registered, other), other


def test_a_one_word_name_is_the_same_identity_as_itself() -> None:
    assert same_identity(record(name="Điệp"), record("b", name="Diep"))


def test_shared_identifiers_names_each_card_both_records_carry() -> None:
    a = record(cccd="079190000001", bhyt_code="0123456789", passport="B1234567")
    assert shared_identifiers(a, record("b", cccd="079190000001", bhyt_code="0123456789")) == ("cccd", "bhyt")
    assert shared_identifiers(a, record("b", passport="B1234567", cccd="079190000002")) == ("passport",)
    assert shared_identifiers(record(), record("b")) == ()  # no card on either side is not a shared card


def test_identifier_conflict_when_no_holder_is_known_as_the_registration() -> None:
    registration = record("new", "Phạm Văn Hùng", cccd="079190000001")
    victim = record("r1", cccd="079190000001")
    assert identifier_conflict(registration, {"p1": [victim]})
    # A holder known (also) by the registration's name and birth date is the person meant...
    assert not identifier_conflict(registration, {"p1": [victim, record("r2", "Phạm Văn Hùng")]})
    # ...and an earlier conflicting registration holding the card does not block the real person.
    impostor = record("r3", "Phạm Văn Hùng", cccd="079190000001")
    assert not identifier_conflict(record("again", cccd="079190000001"), {"p1": [victim], "p2": [impostor]})
    # Without holders there is nothing to conflict with; a holder known by nothing is never trusted.
    assert not identifier_conflict(registration, {})
    assert identifier_conflict(registration, {"p1": []})


def test_rank_scores_each_person_by_its_best_record() -> None:
    best, worse = record("r1"), record("r2", birth_date=BirthDate(1990, 3, 9))
    ranked = rank(record("new"), [("p1", worse), ("p2", worse), ("p1", best)], POPULATION, frozenset({"p2"}))
    assert [c.person_id for c in ranked] == ["p1"]
    assert ranked[0].score == score(record("new"), best, POPULATION)


def test_a_typo_leaving_two_letters_is_tolerated_whichever_record_came_first() -> None:
    nhi, ni = record(name="Vũ Minh Nhi"), record("b", name="Vũ Minh Ni")
    assert same_identity(nhi, ni) and same_identity(ni, nhi)
    assert not same_identity(record(name="Vũ Minh Ni"), record("b", name="Vũ Minh An"))


# --- hard cases (issue: identity that holds on unseen data) ---------------------------------------


def test_twins_with_the_same_phone_and_birth_date_are_not_linked() -> None:
    first = record("r1", "Nguyễn Thị Ngọc Lan")
    twin = record("r2", "Nguyễn Thị Ngọc Hoa")
    result = decide(twin, [("p1", first)], POPULATION)
    assert result.decision is Decision.REVIEW  # a multiple birth: for a steward, never automatic
    assert result.candidates[0].score.other_given_name


def test_twins_named_one_edit_apart_are_not_a_typo_when_both_names_are_established() -> None:
    index = frequencies(*(["Lê Thị Hà"] * 30 + ["Lê Thị Hân"] * 30 + ["Trần Văn An"] * 40))
    ha, han = record("r1", "Lê Thị Hà"), record("r2", "Lê Thị Hân")
    assert {c.field: c.level for c in score(han, ha, index).contributions}["given_name"] == "disagree"
    assert decide(han, [("p1", ha)], index).decision is not Decision.LINK


def test_a_twin_is_linked_by_an_agreeing_card_and_a_duplicate_despite_its_twin() -> None:
    lan = record("r1", "Nguyễn Thị Ngọc Lan", cccd="079190000001")
    hoa = record("r2", "Nguyễn Thị Ngọc Hoa", cccd="079190000002")
    again = record("r3", "Nguyen Thi Ngoc Lan", cccd="079190000001")
    result = decide(again, [("p1", lan), ("p2", hoa)], POPULATION)
    assert result.decision is Decision.LINK
    assert result.candidates[0].person_id == "p1"
    # Without the card the twin (another given name) does not demote the duplicate either.
    result = decide(replace(again, cccd=""), [("p1", lan), ("p2", hoa)], POPULATION)
    assert (result.decision, result.candidates[0].person_id) == (Decision.LINK, "p1")


def test_a_person_with_cccd_a_is_never_linked_to_a_record_with_cccd_b() -> None:
    # The person's best-matching record carries no card; another of its records carries CCCD A.
    plain = record("r1")
    carded = record("r2", "Nguyễn Thị Ngọc Điệp", cccd="079190000001", phone="", province_code="01")
    incoming = record("new", cccd="079190000002")
    result = decide(incoming, [("p1", plain), ("p1", carded)], POPULATION)
    assert result.decision is not Decision.LINK
    assert result.candidates[0].score.identifier_conflict
    assert (
        not decide(replace(incoming, cccd=""), [("p1", plain), ("p1", carded)], POPULATION)
        .candidates[0]
        .score.identifier_conflict
    )


def test_a_deterministic_card_match_is_not_demoted_by_a_weaker_second_candidate() -> None:
    owner = record(
        "r1", "Nguyen Thi Ngoc Diep", cccd="079190000001", phone="", birth_date=BirthDate(1990, 1, 1)
    )
    lookalike = record("r2")  # scores above the link threshold on demographics alone
    result = decide(record("new", cccd="079190000001"), [("p2", lookalike), ("p1", owner)], POPULATION)
    assert (result.decision, result.candidates[0].person_id) == (Decision.LINK, "p1")


def test_a_birth_year_one_off_is_retrieved_without_the_year_and_linked() -> None:
    original = record("r1", phone="")
    wrong_year = record("r2", "Nguyen Thi Ngoc Diep", phone="", birth_date=BirthDate(1991, 3, 7))
    assert blocking_keys(original) & blocking_keys(wrong_year)
    assert levels(original, wrong_year)["birth_date"] == "year_off_one"
    assert decide(wrong_year, [("p1", original)], POPULATION).decision is not Decision.NEW
    swapped_too = replace(wrong_year, birth_date=BirthDate(1991, 7, 3))
    assert blocking_keys(original) & blocking_keys(swapped_too)
    assert levels(original, swapped_too)["birth_date"] == "year_off_one"


def test_hard_case_population_is_seeded_and_tagged() -> None:
    population = generate(3000, 0.1, 3, hard_cases=True)
    assert population == generate(3000, 0.1, 3, hard_cases=True)
    kinds = {kind for r in population for kind in r.kinds}
    assert {"multiple_birth", "partial_date", "no_diacritics"} <= kinds
    twins = [r for r in population if "multiple_birth" in r.kinds]
    assert twins and all(r.birth_date_text for r in twins)
    assert any(r.birth_date_given for r in population)


def test_a_shared_card_does_not_link_when_another_card_differs() -> None:
    a = record(cccd="079190000001", bhyt_code="7912345678")
    b = record("b", cccd="079190000001", bhyt_code="7987654321")
    found = score(a, b, POPULATION)
    assert found.identifier_conflict and not found.deterministic
    assert decide(a, [("p1", b)], POPULATION).decision is Decision.REVIEW
