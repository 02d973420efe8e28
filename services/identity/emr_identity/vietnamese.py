"""Vietnamese identity data: CCCD, BHYT, names and phones. Validation and normalisation; pure, no I/O."""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import Enum
from importlib import resources

# Province codes of the CCCD (first three digits), Circular 07/2016/TT-BCA: the 63 provinces and
# centrally governed cities.
CCCD_PROVINCES: dict[str, str] = {
    "001": "Hà Nội", "002": "Hà Giang", "004": "Cao Bằng", "006": "Bắc Kạn", "008": "Tuyên Quang",
    "010": "Lào Cai", "011": "Điện Biên", "012": "Lai Châu", "014": "Sơn La", "015": "Yên Bái",
    "017": "Hòa Bình", "019": "Thái Nguyên", "020": "Lạng Sơn", "022": "Quảng Ninh", "024": "Bắc Giang",
    "025": "Phú Thọ", "026": "Vĩnh Phúc", "027": "Bắc Ninh", "030": "Hải Dương", "031": "Hải Phòng",
    "033": "Hưng Yên", "034": "Thái Bình", "035": "Hà Nam", "036": "Nam Định", "037": "Ninh Bình",
    "038": "Thanh Hóa", "040": "Nghệ An", "042": "Hà Tĩnh", "044": "Quảng Bình", "045": "Quảng Trị",
    "046": "Thừa Thiên Huế", "048": "Đà Nẵng", "049": "Quảng Nam", "051": "Quảng Ngãi", "052": "Bình Định",
    "054": "Phú Yên", "056": "Khánh Hòa", "058": "Ninh Thuận", "060": "Bình Thuận", "062": "Kon Tum",
    "064": "Gia Lai", "066": "Đắk Lắk", "067": "Đắk Nông", "068": "Lâm Đồng", "070": "Bình Phước",
    "072": "Tây Ninh", "074": "Bình Dương", "075": "Đồng Nai", "077": "Bà Rịa - Vũng Tàu",
    "079": "Hồ Chí Minh", "080": "Long An", "082": "Tiền Giang", "083": "Bến Tre", "084": "Trà Vinh",
    "086": "Vĩnh Long", "087": "Đồng Tháp", "089": "An Giang", "091": "Kiên Giang", "092": "Cần Thơ",
    "093": "Hậu Giang", "094": "Sóc Trăng", "095": "Bạc Liêu", "096": "Cà Mau",
}  # fmt: skip

CCCD_PATTERN = re.compile(r"[0-9]{12}")
# Old cards: 2 letters beneficiary group, benefit level 1-5, 2-digit province, 10-digit social insurance code.
BHYT_OLD = re.compile(r"([A-Z]{2})([1-5])([0-9]{2})([0-9]{10})")
BHYT_NEW = re.compile(r"[0-9]{10}")


class CardSex(Enum):
    """Sex as the CCCD encodes it (only male and female exist on the card)."""

    MALE = "male"
    FEMALE = "female"


def cccd_problem(
    value: str, birth_year: int | None, sex: CardSex | None, registered_abroad: bool = False
) -> str | None:
    """Why a 12-digit CCCD cannot belong to a person born in ``birth_year`` with this sex; None if
    it can.

    Digits 1-3 are the province where the birth was registered (the codes of the 63 provinces
    before the 2025 merger: cards issued under them stay valid); ``registered_abroad`` accepts other
    codes there, for citizens whose birth was registered abroad. Digit 4 encodes century and sex
    (0/1: 1900s male/female, 2/3: 2000s, 4/5: 2100s, ...), digits 5-6 the last two digits of the
    birth year: only the year is compared, so a birth date known to the year is enough. ``sex``
    None (other/unknown) checks century only."""
    if not CCCD_PATTERN.fullmatch(value):
        return "a CCCD has exactly 12 digits"
    if value[:3] not in CCCD_PROVINCES and not registered_abroad:
        return (
            f"province code {value[:3]} is not on the official list "
            "(set cccd_registered_abroad for a birth registered abroad)"
        )
    if birth_year is None:
        return None
    code = int(value[3])
    century = 1900 + 100 * (code // 2)
    if century != birth_year // 100 * 100 or int(value[4:6]) != birth_year % 100:
        return "century digit and birth-year digits disagree with birth_date"
    if sex is not None and (code % 2 == 1) != (sex is CardSex.FEMALE):
        return "century/sex digit disagrees with sex"
    return None


def bhyt_social_insurance_code(value: str) -> str | None:
    """The 10-digit social insurance code of an old (15-character) or new (10-digit) BHYT number."""
    old = BHYT_OLD.fullmatch(value)
    if old:
        return old.group(4)
    return value if BHYT_NEW.fullmatch(value) else None


# --- reference data shipped with the service (emr_identity/data) ----------------------------------


def _data_rows(name: str) -> list[dict[str, str]]:
    """The rows of a data file: a ``#`` line saying what it is and its legal source, then CSV."""
    text = resources.files("emr_identity").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@dataclass(frozen=True)
class ProvinceUnit:
    """A former province (2-digit code) and the provincial unit it belongs to since ``valid_from``."""

    old_code: str
    old_name: str
    new_code: str
    new_name: str
    valid_from: date


# The 63 former provinces and their units since 1 July 2025 (Resolution 202/2025/QH15). Every new
# code is also the code of one of the provinces merged into it, mapped to itself, so a code given in
# either list maps to its current unit.
PROVINCE_UNITS: dict[str, ProvinceUnit] = {
    row["old_code"]: ProvinceUnit(
        row["old_code"],
        row["old_name"],
        row["new_code"],
        row["new_name"],
        date.fromisoformat(row["valid_from"]),
    )
    for row in _data_rows("provinces.csv")
}


def is_province_code(code: str) -> bool:
    """A 2-digit province code, former (before 1 July 2025) or current."""
    return code in PROVINCE_UNITS


def current_province_code(code: str) -> str:
    """The code of the provincial unit a province code belongs to today (``93`` Hậu Giang → ``92``
    Cần Thơ); an unknown or empty code unchanged."""
    unit = PROVINCE_UNITS.get(code)
    return unit.new_code if unit else code


@dataclass(frozen=True)
class BhytGroup:
    """A beneficiary group code of the 15-character BHYT card and the benefit level it carries."""

    code: str
    benefit_level: int
    group: str
    valid_from: date
    valid_to: date | None


BHYT_GROUPS: tuple[BhytGroup, ...] = tuple(
    BhytGroup(
        row["code"],
        int(row["benefit_level"]),
        row["group"],
        date.fromisoformat(row["valid_from"]),
        date.fromisoformat(row["valid_to"]) if row["valid_to"] else None,
    )
    for row in _data_rows("bhyt_groups.csv")
)


def bhyt_group(code: str, on: date) -> BhytGroup | None:
    """The group ``code`` names on day ``on``; None if no such group is in force then."""
    for group in BHYT_GROUPS:
        if group.code == code and group.valid_from <= on and (group.valid_to is None or on <= group.valid_to):
            return group
    return None


def bhyt_card_code_problem(value: str, on: date) -> str | None:
    """Why a 15-character BHYT card code is not valid on day ``on`` (beneficiary group off the list
    or not in force, benefit level other than the group's); None if it is. 10-digit codes carry
    neither and pass."""
    old = BHYT_OLD.fullmatch(value)
    if not old:
        return None
    group = bhyt_group(old.group(1), on)
    if group is None:
        return f"beneficiary group {old.group(1)} is not on the official list in force"
    if int(old.group(2)) != group.benefit_level:
        return f"benefit level of group {group.code} is {group.benefit_level}"
    return None


# Share of covered costs the fund pays per benefit level digit (Law on Health Insurance, Article 22,
# as amended by Law 46/2014/QH13; the level digits as Decision 1351/QD-BHXH assigns them):
# 1 and 2: 100% (2 within the ceiling for high-technology services), 3: 95%, 4: 80%, 5: 100%
# (including costs outside the scope of the benefit package).
_COVERAGE_SHARES = {
    1: Decimal("1.00"),
    2: Decimal("1.00"),
    3: Decimal("0.95"),
    4: Decimal("0.80"),
    5: Decimal("1.00"),
}


def coverage_share(benefit_level: int) -> Decimal:
    """The share of covered costs the insurance pays for a card of this benefit level (1-5)."""
    if benefit_level not in _COVERAGE_SHARES:
        raise ValueError(f"benefit level {benefit_level} is not 1-5")
    return _COVERAGE_SHARES[benefit_level]


def bhyt_benefit_level(value: str) -> int | None:
    """The benefit level digit of a 15-character BHYT card code; None for a 10-digit code."""
    old = BHYT_OLD.fullmatch(value)
    return int(old.group(2)) if old else None


# --- names ----------------------------------------------------------------------------------------


def fold(text: str) -> str:
    """Lower case without diacritics, đ→d: the form data entry without a Vietnamese keyboard gives."""
    decomposed = unicodedata.normalize("NFD", text.lower().replace("đ", "d").replace("Đ", "d"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class NameParts:
    """A Vietnamese name in its parts, tone-preserving (NFC, lower case) and folded."""

    family: str
    middle: str
    given: str

    @property
    def full(self) -> str:
        return " ".join(part for part in (self.family, self.middle, self.given) if part)

    @property
    def folded_family(self) -> str:
        return fold(self.family)

    @property
    def folded_middle(self) -> str:
        return fold(self.middle)

    @property
    def folded_given(self) -> str:
        return fold(self.given)

    @property
    def folded_full(self) -> str:
        return fold(self.full)


def normalize_name(raw: str) -> str:
    """NFC (input may arrive as NFD) with runs of whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", raw).split())


def split_name(full_name: str, family: str = "", middle: str = "", given: str = "") -> NameParts:
    """Family / middle / given: the parts given explicitly win; the rest come from the full name
    written in Vietnamese order (first word family, last word given, the words between middle)."""
    words = normalize_name(full_name).lower().split()
    derived_family = words[0] if words else ""
    derived_given = words[-1] if len(words) > 1 else ""
    derived_middle = " ".join(words[1:-1])
    return NameParts(
        family=normalize_name(family).lower() or derived_family,
        middle=normalize_name(middle).lower() or derived_middle,
        given=normalize_name(given).lower() or derived_given,
    )


# --- phones ---------------------------------------------------------------------------------------

# After the leading 0: mobiles are 9 digits starting 3, 5, 7, 8 or 9; landlines are 10 digits
# starting 2 (area code 2xx + 7- or 8-digit subscriber number).
_MOBILE = re.compile(r"[35789][0-9]{8}")
_LANDLINE = re.compile(r"2[0-9]{9}")


def normalize_phone(raw: str) -> str | None:
    """The national form (0 + subscriber digits) of a Vietnamese mobile or landline number written
    with +84, 84 or 0 and any spaces, dots, dashes or brackets; None if it is not one."""
    digits = re.sub(r"[\s.\-()]", "", raw)
    if digits.startswith("+84"):
        rest = digits[3:]
    elif digits.startswith("0084"):
        rest = digits[4:]
    elif digits.startswith("84") and len(digits) in (11, 12):
        rest = digits[2:]
    elif digits.startswith("0"):
        rest = digits[1:]
    else:
        return None
    rest = rest.removeprefix("0")  # "+84 0912..." is a common mix of both forms
    if _MOBILE.fullmatch(rest) or _LANDLINE.fullmatch(rest):
        return "0" + rest
    return None
