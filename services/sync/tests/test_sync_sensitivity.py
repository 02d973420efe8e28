"""Unit tests of what of a special category goes to the national FHIR submission (emr_sync.sensitivity;
pure, no I/O)."""

from __future__ import annotations

from emr.records.v1 import records_pb2, sensitivity_pb2

from emr_sync.sensitivity import submitted, withheld

HIV = sensitivity_pb2.SENSITIVITY_CATEGORY_HIV


def test_hiv_is_withheld_and_other_categories_are_submitted_labelled() -> None:
    assert withheld([HIV]) and withheld([sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH, HIV])
    for other in (
        sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH,
        sensitivity_pb2.SENSITIVITY_CATEGORY_REPRODUCTIVE_HEALTH,
        sensitivity_pb2.SENSITIVITY_CATEGORY_SUBSTANCE_USE,
    ):
        assert not withheld([other])
    assert not withheld([])


def test_an_hiv_resource_never_leaves_with_a_visit() -> None:
    ordinary = records_pb2.ClinicalResource(observation=records_pb2.Observation(observation_id="o-1"))
    mental = records_pb2.ClinicalResource(
        condition=records_pb2.Condition(condition_id="c-1"),
        sensitivity=[sensitivity_pb2.SENSITIVITY_CATEGORY_MENTAL_HEALTH],
    )
    hiv = records_pb2.ClinicalResource(condition=records_pb2.Condition(condition_id="c-2"), sensitivity=[HIV])
    assert submitted([ordinary, hiv, mental]) == [ordinary, mental]
