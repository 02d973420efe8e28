"""Claim values that belong to a facility rather than to a visit: MA_TTDV, the practising-licence code
of the facility's head (or of the person authorised to sign its claims), from SYNC_FACILITY_CLAIM_CODES."""

from __future__ import annotations

import json

from emr_claims.spec import table
from emr_runtime.facility import is_facility_code

MAX_HEAD_CODE_LENGTH = table("XML1").field("MA_TTDV").max_size or 255


def facility_claim_codes(text: str) -> dict[str, str]:
    """``{"<facility>": "<MA_TTDV>"}`` of the setting (empty: none); ValueError naming the entry at
    fault, so that a bad setting stops the start instead of every claim being dead-lettered."""
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("SYNC_FACILITY_CLAIM_CODES: not JSON") from None
    if not isinstance(parsed, dict):
        raise ValueError('SYNC_FACILITY_CLAIM_CODES: a JSON object {"<facility>": "<MA_TTDV>"}')
    codes: dict[str, str] = {}
    for facility, code in parsed.items():
        if not is_facility_code(facility):
            raise ValueError(f"SYNC_FACILITY_CLAIM_CODES: {facility!r} is not a 5-character facility code")
        if not isinstance(code, str) or not code.strip() or len(code.strip()) > MAX_HEAD_CODE_LENGTH:
            raise ValueError(
                f"SYNC_FACILITY_CLAIM_CODES: the code of {facility} must be text of 1..{MAX_HEAD_CODE_LENGTH} characters"
            )
        codes[facility] = code.strip()
    return codes
