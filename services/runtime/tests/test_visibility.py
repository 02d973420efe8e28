"""The access model's per-call checks (emr_runtime.visibility), without I/O."""

from __future__ import annotations

import asyncio

import pytest

from emr_runtime.errors import PermissionDeniedError
from emr_runtime.visibility import CallAccess, Visibility, purpose_of


class Answers:
    """A visibility source answering from a table, counting the questions."""

    def __init__(self, answers: dict[str, Visibility]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, str, bool]] = []

    async def visibility(
        self, patient_id: str, facility_code: str, purpose_of_use: str, export: bool
    ) -> Visibility:
        self.asked.append((patient_id, facility_code, purpose_of_use, export))
        return self.answers.get(patient_id, Visibility(facility_code))


def test_a_facility_sees_its_own_data_and_what_referrals_and_grants_open() -> None:
    own = Visibility("79001", registered=True)
    assert own.sees("79001") and not own.sees("79002") and own.opens_anything
    referred = Visibility("79001", facilities=frozenset({"79002"}))
    assert referred.sees("79002") and not referred.sees("79003") and referred.opens_anything
    granted = Visibility("79001", all_facilities=True, sharing_grant_ids=("g",))
    assert granted.sees("79003") and granted.shares_demographics
    assert not Visibility("79001").opens_anything


def test_require_denies_strangers_and_other_facilities_data() -> None:
    source = Answers({"p": Visibility("79001", registered=True)})
    access = CallAccess("79001", "TREATMENT", source)
    assert asyncio.run(access.require("p")).registered
    assert asyncio.run(access.require("p", "79001")).registered
    with pytest.raises(PermissionDeniedError):
        asyncio.run(access.require("p", "79002"))
    with pytest.raises(PermissionDeniedError):
        asyncio.run(access.require("stranger"))
    assert [asked[0] for asked in source.asked] == ["p", "stranger"]  # asked once per patient


def test_an_emergency_access_is_noted_only_when_it_opened_other_facilities_data() -> None:
    emergency = Visibility(
        "79001", registered=True, all_facilities=True, emergency_access_id="e1", emergency_reason="LIFE"
    )
    access = CallAccess("79001", "TREATMENT", Answers({"p": emergency}))
    asyncio.run(access.require("p", "79001"))
    assert access.emergency_access_id == ""
    asyncio.run(access.require("p", "79002"))
    assert (access.emergency_access_id, access.emergency_reason) == ("e1", "LIFE")


def test_platform_callers_see_everything_without_asking() -> None:
    source = Answers({})
    access = CallAccess("", "TREATMENT", source, platform=True)
    assert asyncio.run(access.require("anyone", "79002")).all_facilities
    assert source.asked == []


def test_exports_ask_with_the_export_flag_and_purpose_defaults_to_treatment() -> None:
    source = Answers({"p": Visibility("79001", registered=True)})
    asyncio.run(CallAccess("79001", purpose_of(""), source, export=True).require("p"))
    assert source.asked == [("p", "79001", "TREATMENT", True)]
    assert purpose_of(" payment ") == "PAYMENT"
