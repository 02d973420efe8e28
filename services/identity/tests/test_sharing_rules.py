"""Unit tests of sharing grants, referrals and emergency access: what may be recorded and what a
facility may then see (emr_identity.sharing; pure, no I/O), and the storage's filters."""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from emr_identity import sharing_repository
from emr_identity.sharing import (
    ConsentEvidence,
    EmergencyInput,
    EmergencyReason,
    EmergencyTerms,
    GrantInput,
    GrantKind,
    GrantTerms,
    PatientCircle,
    Purpose,
    ReferralInput,
    ReviewInput,
    ReviewOutcome,
    RevocationInput,
    new_emergency,
    new_referral,
    validate_emergency,
    validate_grant,
    validate_referral,
    validate_review,
    validate_revocation,
    visibility_of,
    years_ahead,
)
from emr_runtime.errors import InvalidArgumentError

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
HOSPITAL = "79001"
OTHER = "79002"
THIRD = "79003"
CIRCLE = PatientCircle("p-survivor", ("p-survivor", "p-merged"), frozenset({OTHER}))


def violations(call: object) -> dict[str, str]:
    assert callable(call)
    with pytest.raises(InvalidArgumentError) as raised:
        call()
    return {v.field: v.description for v in raised.value.violations}


def grant_input(**overrides: object) -> GrantInput:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "patient_id": "p-survivor",
        "facility_code": OTHER,
        "grantee_facility_code": HOSPITAL,
        "purpose": Purpose.TREATMENT,
        "evidence": ConsentEvidence.SIGNED_FORM,
        "evidence_reference": "CF-2026-0042",
        "end": NOW + timedelta(days=90),
        "fingerprint": "f",
    }
    fields.update(overrides)
    return GrantInput(**fields)  # type: ignore[arg-type]


# --- what may be recorded -------------------------------------------------------------------------


def test_an_empty_grant_request_names_every_missing_field_at_once() -> None:
    empty = GrantInput("", "", "", "", None, None, "", None, "f")
    assert set(violations(lambda: validate_grant(empty, NOW))) == {
        "request_id",
        "patient_id",
        "facility_code",
        "purpose",
        "evidence",
        "end_time",
    }


@pytest.mark.parametrize(
    ("end", "problem"),
    [
        (NOW, "must be in the future"),
        (NOW - timedelta(days=1), "must be in the future"),
        (years_ahead(NOW, 5) + timedelta(seconds=1), "at most 5 years ahead"),
    ],
)
def test_a_grant_ends_in_the_future_within_five_years(end: datetime, problem: str) -> None:
    assert violations(lambda: validate_grant(grant_input(end=end), NOW)) == {"end_time": problem}


def test_a_grant_may_last_exactly_five_years_and_its_codes_are_normalised() -> None:
    valid = validate_grant(
        grant_input(end=years_ahead(NOW, 5), grantee_facility_code=" 7900a ", evidence_reference=" CF-1 "),
        NOW,
    )
    assert (valid.grantee_facility_code, valid.evidence_reference) == ("7900A", "CF-1")


@pytest.mark.parametrize(
    ("grantee", "valid"), [("", True), (HOSPITAL, True), ("7900", False), ("790011", False), ("79-01", False)]
)
def test_the_grantee_is_every_facility_or_a_five_character_code(grantee: str, valid: bool) -> None:
    request = grant_input(grantee_facility_code=grantee)
    if valid:
        assert validate_grant(request, NOW).grantee_facility_code == grantee
    else:
        assert set(violations(lambda: validate_grant(request, NOW))) == {"grantee_facility_code"}


def test_the_evidence_reference_is_bounded_text() -> None:
    assert set(violations(lambda: validate_grant(grant_input(evidence_reference="x" * 129), NOW))) == {
        "evidence_reference"
    }
    assert set(violations(lambda: validate_grant(grant_input(evidence_reference="a\x00b"), NOW))) == {
        "evidence_reference"
    }


def test_years_ahead_keeps_the_date_and_moves_29_february() -> None:
    assert years_ahead(NOW, 5) == datetime(2031, 3, 10, 9, 0, tzinfo=UTC)
    assert years_ahead(datetime(2028, 2, 29, tzinfo=UTC), 1) == datetime(2029, 2, 28, tzinfo=UTC)


def test_a_revocation_names_the_grant_and_the_facility() -> None:
    assert set(violations(lambda: validate_revocation(RevocationInput("", " ", "x", "f")))) == {
        "request_id",
        "sharing_grant_id",
        "facility_code",
    }


def referral_input(**overrides: object) -> ReferralInput:
    fields: dict[str, object] = {
        "request_id": "req-r",
        "patient_id": "p-survivor",
        "facility_code": OTHER,
        "receiving_facility_code": HOSPITAL,
        "end": NOW + timedelta(days=30),
        "fingerprint": "f",
    }
    fields.update(overrides)
    return ReferralInput(**fields)  # type: ignore[arg-type]


def test_a_referral_goes_to_another_facility_for_at_most_a_year() -> None:
    assert violations(lambda: validate_referral(referral_input(receiving_facility_code=OTHER), NOW)) == {
        "receiving_facility_code": "must differ from the referring facility_code"
    }
    too_long = referral_input(end=years_ahead(NOW, 1) + timedelta(seconds=1))
    assert violations(lambda: validate_referral(too_long, NOW)) == {"end_time": "at most 1 year ahead"}
    assert set(violations(lambda: validate_referral(referral_input(receiving_facility_code=""), NOW))) == {
        "receiving_facility_code"
    }


def test_a_referral_opens_the_referring_facility_s_data_to_the_receiving_one_for_treatment() -> None:
    grant = new_referral(validate_referral(referral_input(), NOW), "g-r", "p-survivor", "dr-1", NOW)
    assert (grant.terms.kind, grant.terms.grantee_facility_code, grant.terms.source_facility_code) == (
        GrantKind.REFERRAL,
        HOSPITAL,
        OTHER,
    )
    assert grant.terms.purpose is Purpose.TREATMENT and grant.evidence is None


def test_an_emergency_needs_a_reason_and_a_justification_of_ten_characters() -> None:
    request = EmergencyInput("req-e", "p-survivor", HOSPITAL, None, " Fell from a roof ", "f")
    assert set(violations(lambda: validate_emergency(request))) == {"reason"}
    short = replace(request, reason=EmergencyReason.URGENT_CARE, justification="   unwell  ")
    assert set(violations(lambda: validate_emergency(short))) == {"justification"}
    valid = validate_emergency(replace(short, justification=" Unconscious, brought in by ambulance "))
    assert valid.justification == "Unconscious, brought in by ambulance"


def test_an_emergency_lasts_the_configured_time_and_carries_the_contract_s_reason_name() -> None:
    request = validate_emergency(
        EmergencyInput("req-e", "p", HOSPITAL, EmergencyReason.LIFE_THREATENING, "Cardiac arrest in ER", "f")
    )
    declared = new_emergency(request, "e-1", "p", "dr-1", NOW, timedelta(hours=4), 7)
    assert (declared.terms.start, declared.terms.end) == (NOW, NOW + timedelta(hours=4))
    assert declared.terms.reason.code == "EMERGENCY_REASON_LIFE_THREATENING"


def test_an_unjustified_verdict_needs_a_note() -> None:
    unjustified = ReviewInput("req-v", "e-1", ReviewOutcome.UNJUSTIFIED, " ", "f")
    assert set(violations(lambda: validate_review(unjustified))) == {"note"}
    assert validate_review(replace(unjustified, outcome=ReviewOutcome.JUSTIFIED)).note == ""
    assert set(violations(lambda: validate_review(ReviewInput("req-v", "e-1", None, "", "f")))) == {"outcome"}


# --- what a facility sees -------------------------------------------------------------------------


def consent(grant_id: str = "g-1", grantee: str = HOSPITAL, **overrides: object) -> GrantTerms:
    fields: dict[str, object] = {
        "grant_id": grant_id,
        "patient_id": "p-survivor",
        "kind": GrantKind.CONSENT,
        "grantee_facility_code": grantee,
        "source_facility_code": "",
        "purpose": Purpose.TREATMENT,
        "start": NOW - timedelta(days=1),
        "end": NOW + timedelta(days=1),
    }
    fields.update(overrides)
    return GrantTerms(**fields)  # type: ignore[arg-type]


def referral(grant_id: str = "r-1", grantee: str = HOSPITAL, source: str = OTHER) -> GrantTerms:
    return consent(grant_id, grantee, kind=GrantKind.REFERRAL, source_facility_code=source)


def emergency(
    emergency_id: str = "e-1", facility: str = HOSPITAL, ends_in: timedelta = timedelta(hours=3)
) -> EmergencyTerms:
    return EmergencyTerms(
        emergency_id,
        "p-survivor",
        facility,
        EmergencyReason.UNABLE_TO_CONSENT,
        NOW - timedelta(hours=1),
        NOW + ends_in,
    )


def seen(
    grants: tuple[GrantTerms, ...] = (),
    emergencies: tuple[EmergencyTerms, ...] = (),
    revoked: frozenset[str] = frozenset(),
    facility: str = HOSPITAL,
    purpose: str = "TREATMENT",
    export: bool = False,
) -> tuple[bool, bool, frozenset[str], tuple[str, ...], str]:
    found = visibility_of(facility, purpose, export, NOW, CIRCLE, grants, revoked, emergencies)
    assert found.resolved_patient_id == "p-survivor" and found.exists
    return (
        found.registered,
        found.all_facilities,
        found.facilities,
        found.sharing_grant_ids,
        found.emergency_access_id,
    )


NOTHING = (False, False, frozenset[str](), (), "")


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        ("no relationship", NOTHING),
        ("registered there", (True, False, frozenset(), (), "")),
        ("consent for the facility", (False, True, frozenset(), ("g-1",), "")),
        ("consent for every facility", (False, True, frozenset(), ("g-1",), "")),
        ("consent for another facility", NOTHING),
        ("consent for another purpose", NOTHING),
        ("consent for payment, asked for payment", (False, True, frozenset(), ("g-1",), "")),
        ("consent ended", NOTHING),
        ("consent not started", NOTHING),
        ("consent revoked", NOTHING),
        ("referral to the facility", (False, False, frozenset({OTHER}), ("r-1",), "")),
        ("referral to another facility", NOTHING),
        ("referral revoked", NOTHING),
        ("emergency of the facility", (False, True, frozenset(), (), "e-1")),
        ("emergency of another facility", NOTHING),
        ("emergency over", NOTHING),
        ("emergency for an export", NOTHING),
        ("emergency where a consent applies", (False, True, frozenset(), ("g-1",), "")),
        ("two emergencies", (False, True, frozenset(), (), "e-long")),
        ("consent and referral", (False, True, frozenset({OTHER}), ("g-1", "r-1"), "")),
        ("consent for an export", (False, True, frozenset(), ("g-1",), "")),
    ],
)
def test_what_a_facility_sees(case: str, answer: tuple[object, ...]) -> None:
    payment = consent(purpose=Purpose.PAYMENT)
    cases: dict[str, dict[str, object]] = {
        "no relationship": {},
        "registered there": {"facility": OTHER, "grants": (consent(grantee=THIRD),)},
        "consent for the facility": {"grants": (consent(),)},
        "consent for every facility": {"grants": (consent(grantee=""),)},
        "consent for another facility": {"grants": (consent(grantee=THIRD),)},
        "consent for another purpose": {"grants": (payment,)},
        "consent for payment, asked for payment": {"grants": (payment,), "purpose": "PAYMENT"},
        "consent ended": {"grants": (consent(end=NOW),)},
        "consent not started": {"grants": (consent(start=NOW + timedelta(seconds=1)),)},
        "consent revoked": {"grants": (consent(),), "revoked": frozenset({"g-1"})},
        "referral to the facility": {"grants": (referral(),)},
        "referral to another facility": {"grants": (referral(grantee=THIRD),)},
        "referral revoked": {"grants": (referral(),), "revoked": frozenset({"r-1"})},
        "emergency of the facility": {"emergencies": (emergency(),)},
        "emergency of another facility": {"emergencies": (emergency(facility=OTHER),)},
        "emergency over": {"emergencies": (emergency(ends_in=timedelta(0)),)},
        "emergency for an export": {"emergencies": (emergency(),), "export": True},
        "emergency where a consent applies": {"grants": (consent(),), "emergencies": (emergency(),)},
        "two emergencies": {
            "emergencies": (emergency("e-short"), emergency("e-long", ends_in=timedelta(hours=4)))
        },
        "consent and referral": {"grants": (referral(), consent())},
        "consent for an export": {"grants": (consent(),), "export": True},
    }
    assert seen(**cases[case]) == answer  # type: ignore[arg-type]


def test_an_emergency_answer_carries_the_reason_code_for_the_audit_event() -> None:
    found = visibility_of(HOSPITAL, "EMERGENCY", False, NOW, CIRCLE, (), (), (emergency(),))
    assert (found.emergency_access_id, found.emergency_reason) == (
        "e-1",
        "EMERGENCY_REASON_UNABLE_TO_CONSENT",
    )
    assert found.sees(THIRD)


def test_an_unknown_patient_opens_nothing() -> None:
    found = visibility_of(HOSPITAL, "TREATMENT", False, NOW, None, (consent(),), (), (emergency(),))
    assert not found.exists and not found.opens_anything


def test_a_referral_from_the_facility_itself_adds_no_other_facility() -> None:
    assert seen(grants=(referral(source=HOSPITAL),))[2] == frozenset()


# --- storage ------------------------------------------------------------------------------------

READS = {"find", "find_one", "count_documents", "aggregate", "distinct", "find_one_and_update"}
KEYED_WRITES = {"update_one", "update_many", "delete_one", "delete_many", "replace_one"}


def test_every_read_of_the_sharing_storage_is_by_id_and_nothing_is_updated_in_place() -> None:
    tree = ast.parse(inspect.getsource(sharing_repository))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    reads = [c for c in calls if c.func.attr in READS]  # type: ignore[attr-defined]
    assert reads, "the repository reads something"
    for call in reads:
        assert isinstance(call.args[0], ast.Dict), ast.unparse(call)
        keys = [k.value for k in call.args[0].keys if isinstance(k, ast.Constant)]
        assert keys == ["_id"] and len(call.args[0].keys) == 1, ast.unparse(call)
    # Compare-and-set by insert with a unique _id only (FerretDB 1.x updates are not atomic).
    assert not [ast.unparse(c) for c in calls if c.func.attr in KEYED_WRITES]  # type: ignore[attr-defined]
