"""SYNC_FACILITY_CLAIM_CODES: each facility's MA_TTDV, and a bad setting stopping the start."""

from __future__ import annotations

import pytest

from emr_sync.facility_claims import facility_claim_codes


def test_codes_are_read_per_facility_and_an_empty_setting_has_none() -> None:
    assert facility_claim_codes('{"79001": " 000002/BYT-GPHN ", "01A02": "x"}') == {
        "79001": "000002/BYT-GPHN",
        "01A02": "x",
    }
    assert facility_claim_codes("  ") == {}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{", "not JSON"),
        ('["79001"]', "a JSON object"),
        ('{"7900": "x"}', "not a 5-character facility code"),
        ('{"79001": ""}', "the code of 79001"),
        ('{"79001": 7}', "the code of 79001"),
        ('{"79001": "' + "x" * 256 + '"}', "the code of 79001"),
    ],
)
def test_a_bad_setting_is_refused_naming_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="SYNC_FACILITY_CLAIM_CODES") as caught:
        facility_claim_codes(text)
    assert complaint in str(caught.value)
