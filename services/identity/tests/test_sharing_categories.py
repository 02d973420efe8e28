"""Unit tests of consent grants naming special categories of clinical data (emr_identity.sharing;
pure, no I/O): what may be recorded and which categories the access model then opens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from emr.identity.v1 import identity_pb2
from emr.records.v1 import sensitivity_pb2

from emr_identity import converters
from emr_identity.sharing import (
    ConsentEvidence,
    EmergencyReason,
    EmergencyTerms,
    GrantInput,
    GrantKind,
    GrantTerms,
    PatientCircle,
    Purpose,
    new_grant,
    validate_grant,
    visibility_of,
)
from emr_runtime.errors import InvalidArgumentError

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
HOSPITAL = "79001"
OTHER = "79002"
CIRCLE = PatientCircle("p-1", ("p-1",), frozenset({OTHER}))


def grant_input(categories: tuple[str | None, ...], grantee: str = HOSPITAL) -> GrantInput:
    return GrantInput(
        "req-1",
        "p-1",
        OTHER,
        grantee,
        Purpose.TREATMENT,
        ConsentEvidence.SIGNED_FORM,
        "",
        NOW + timedelta(days=30),
        "f",
        categories,
    )


def violations(raw: GrantInput) -> dict[str, str]:
    with pytest.raises(InvalidArgumentError) as raised:
        validate_grant(raw, NOW)
    return {v.field: v.description for v in raised.value.violations}


def test_a_grant_names_known_categories_for_one_named_facility() -> None:
    assert set(violations(grant_input(("HIV", None)))) == {"categories[1]"}
    assert set(violations(grant_input(("HIV",), grantee=""))) == {"grantee_facility_code"}
    request = validate_grant(grant_input(("HIV", "MENTAL_HEALTH", "HIV")), NOW)
    grant = new_grant(request, "g-1", "p-1", "registrar", NOW)
    assert grant.terms.categories == {"HIV", "MENTAL_HEALTH"}
    # A grant for every facility is still possible; it opens no special category.
    assert validate_grant(grant_input((), grantee=""), NOW).categories == ()


def consent(
    categories: frozenset[str], purpose: Purpose = Purpose.TREATMENT, grant_id: str = "g-1"
) -> GrantTerms:
    return GrantTerms(
        grant_id, "p-1", GrantKind.CONSENT, HOSPITAL, "", purpose, NOW - timedelta(days=1), NOW + timedelta(days=1), categories
    )  # fmt: skip


def categories_seen(
    grants: tuple[GrantTerms, ...],
    purpose: str = "TREATMENT",
    revoked: frozenset[str] = frozenset(),
    emergencies: tuple[EmergencyTerms, ...] = (),
) -> frozenset[str]:
    return visibility_of(HOSPITAL, purpose, False, NOW, CIRCLE, grants, revoked, emergencies).categories


def test_only_a_consent_in_force_for_the_call_s_purpose_opens_the_categories_it_names() -> None:
    hiv = consent(frozenset({"HIV"}))
    assert categories_seen((hiv,)) == {"HIV"}
    assert categories_seen((hiv, consent(frozenset({"SUBSTANCE_USE"}), grant_id="g-2"))) == {
        "HIV",
        "SUBSTANCE_USE",
    }
    assert categories_seen((consent(frozenset()),)) == frozenset()
    assert categories_seen((hiv,), purpose="PAYMENT") == frozenset()
    assert categories_seen((consent(frozenset({"HIV"}), Purpose.PAYMENT),), purpose="PAYMENT") == {"HIV"}
    assert categories_seen((hiv,), revoked=frozenset({"g-1"})) == frozenset()


def test_a_referral_or_an_emergency_access_opens_no_category() -> None:
    referral = GrantTerms(
        "r-1", "p-1", GrantKind.REFERRAL, HOSPITAL, OTHER, Purpose.TREATMENT, NOW - timedelta(days=1), NOW + timedelta(days=1), frozenset({"HIV"})
    )  # fmt: skip
    assert categories_seen((referral,)) == frozenset()
    emergency = EmergencyTerms(
        "e-1", "p-1", HOSPITAL, EmergencyReason.LIFE_THREATENING, NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    )  # fmt: skip
    found = visibility_of(HOSPITAL, "TREATMENT", False, NOW, CIRCLE, (), frozenset(), (emergency,))
    assert found.all_facilities and found.emergency_access_id == "e-1" and found.categories == frozenset()


def test_a_grant_request_s_categories_read_as_names_and_an_unknown_value_as_none() -> None:
    request = identity_pb2.RecordSharingGrantRequest(
        categories=[
            sensitivity_pb2.SENSITIVITY_CATEGORY_HIV,
            sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED,
        ]
    )
    request.categories.append(42)  # type: ignore[arg-type]
    assert converters.grant_input(request, b"key").categories == ("HIV", None, None)
    assert converters.category_values(["MENTAL_HEALTH", "HIV"]) == [
        sensitivity_pb2.SENSITIVITY_CATEGORY_HIV,
        sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH,
    ]
