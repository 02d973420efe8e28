"""Facility codes (mã cơ sở KCB): 5 characters, digits and capital letters. Pure."""

from __future__ import annotations

import re

FACILITY_CODE = re.compile(r"[0-9A-Z]{5}")


def normalize_facility_code(raw: str) -> str:
    return raw.strip().upper()


def is_facility_code(code: str) -> bool:
    return FACILITY_CODE.fullmatch(code) is not None
