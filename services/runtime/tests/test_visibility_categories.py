"""Unit tests of special categories in the access model's answer (emr_runtime.visibility and the
CheckAccess answer as records reads it; pure, no I/O)."""

from __future__ import annotations

from emr.identity.v1 import identity_pb2
from emr.records.v1 import sensitivity_pb2

from emr_runtime.patients import visibility_of
from emr_runtime.visibility import ALL_CATEGORIES, EVERYTHING, Visibility

OWN = "79001"
OTHER = "79002"


def test_own_data_is_always_seen_and_another_facility_s_only_with_every_category_opened() -> None:
    granted = Visibility(OWN, all_facilities=True, categories=frozenset({"HIV"}))
    assert granted.sees_sensitive(OWN, frozenset(ALL_CATEGORIES))
    assert granted.sees_sensitive(OTHER, frozenset({"HIV"}))
    assert granted.sees_sensitive(OTHER, frozenset())
    assert not granted.sees_sensitive(OTHER, frozenset({"HIV", "MENTAL_HEALTH"}))
    # Categories never widen which facilities are seen.
    assert not Visibility(OWN, categories=frozenset(ALL_CATEGORIES)).sees_sensitive(OTHER, frozenset())
    assert EVERYTHING.sees_sensitive(OTHER, frozenset(ALL_CATEGORIES))


def test_the_check_access_answer_carries_its_categories_and_ignores_unknown_values() -> None:
    response = identity_pb2.CheckAccessResponse(
        exists=True,
        all_facilities=True,
        sensitive_categories=[
            sensitivity_pb2.SENSITIVITY_CATEGORY_HIV,
            sensitivity_pb2.SENSITIVITY_CATEGORY_SUBSTANCE_USE,
            sensitivity_pb2.SENSITIVITY_CATEGORY_UNSPECIFIED,
        ],
    )
    response.sensitive_categories.append(99)  # type: ignore[arg-type]
    assert visibility_of(OWN, response).categories == {"HIV", "SUBSTANCE_USE"}
    assert visibility_of(OWN, identity_pb2.CheckAccessResponse(exists=True)).categories == frozenset()
