"""A seeded synthetic Vietnamese population with duplicate registrations and their ground truth,
for the quality and speed benches and for tests. No real person's data: names are drawn from
common-name lists, every number is random.

Duplicates carry the errors hospital data entry makes: diacritics dropped or wrong, NFD text, day and
month swapped, phone typos, identifiers left out, a moved address, a typo in the given name. With
``hard_cases`` the population also holds what the matcher was not built for: multiple births (same
family, birth date, phone and address; another given name and cards of their own), namesakes, birth
years off by one, birth dates known only to the year or month, and facilities with typing habits of
their own (no diacritics, day and month swapped). Each record is tagged with the kinds it carries.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, replace
from datetime import date, timedelta

from emr_identity.vietnamese import fold, normalize_phone

# Surname shares (per cent), after published estimates; the rest share REMAINING_SURNAMES evenly.
SURNAMES: dict[str, float] = {
    "Nguyễn": 38.4, "Trần": 12.1, "Lê": 9.5, "Phạm": 7.0, "Hoàng": 3.0, "Huỳnh": 2.1, "Phan": 4.5,
    "Vũ": 2.0, "Võ": 1.9, "Đặng": 2.1, "Bùi": 2.0, "Đỗ": 1.4, "Hồ": 1.3, "Ngô": 1.3, "Dương": 1.0,
    "Lý": 0.5,
}  # fmt: skip
REMAINING_SURNAMES = [
    "Đinh",
    "Trương",
    "Lâm",
    "Mai",
    "Tô",
    "Hà",
    "Cao",
    "Lưu",
    "Châu",
    "Tạ",
    "Quách",
    "Đoàn",
    "Vương",
    "Trịnh",
    "Thái",
    "La",
    "Lương",
    "Kiều",
    "Phùng",
    "Văn",
    "Tăng",
    "Đào",
    "Triệu",
    "Thân",
    "Lục",
    "Mạc",
    "Khúc",
    "Ông",
    "Kim",
    "Diệp",
    "Doãn",
    "Nghiêm",
    "Âu",
    "Giang",
    "Hứa",
    "Lạc",
    "Tống",
    "Hầu",
    "Chu",
]
MALE_MIDDLES = [
    "Văn",
    "Văn",
    "Văn",
    "Đức",
    "Minh",
    "Quốc",
    "Hữu",
    "Thanh",
    "Công",
    "Ngọc",
    "Xuân",
    "Hoàng",
    "Gia",
    "Tuấn",
    "Anh",
    "Thành",
    "Đình",
    "Quang",
    "Bảo",
    "Trọng",
]
FEMALE_MIDDLES = [
    "Thị",
    "Thị",
    "Thị",
    "Thị",
    "Ngọc",
    "Thu",
    "Thanh",
    "Kim",
    "Minh",
    "Phương",
    "Bảo",
    "Hồng",
    "Mỹ",
    "Thùy",
    "Diệu",
    "Hoài",
    "Khánh",
    "Lan",
]
MALE_GIVENS = [
    "Anh",
    "Bảo",
    "Bình",
    "Cường",
    "Chiến",
    "Công",
    "Dũng",
    "Duy",
    "Đạt",
    "Đức",
    "Giang",
    "Hải",
    "Hào",
    "Hiếu",
    "Hiển",
    "Hoàng",
    "Hùng",
    "Huy",
    "Hưng",
    "Khang",
    "Khánh",
    "Khoa",
    "Kiên",
    "Lâm",
    "Long",
    "Lộc",
    "Lợi",
    "Luân",
    "Mạnh",
    "Minh",
    "Nam",
    "Nghĩa",
    "Nhân",
    "Phát",
    "Phong",
    "Phúc",
    "Phước",
    "Quang",
    "Quân",
    "Quốc",
    "Sơn",
    "Tài",
    "Tâm",
    "Tấn",
    "Tân",
    "Thắng",
    "Thành",
    "Thịnh",
    "Toàn",
    "Trí",
    "Trung",
    "Trường",
    "Tú",
    "Tuấn",
    "Tùng",
    "Việt",
    "Vinh",
    "Vũ",
    "Tám",
    "Hòa",
    "Hậu",
    "Thái",
    "Thiện",
    "Thuận",
    "Tiến",
    "Tín",
    "Vĩnh",
    "Xuân",
    "Đăng",
    "Định",
    "Điền",
    "Hiệp",
    "Khải",
    "Kiệt",
    "Lực",
    "Nhật",
    "Quý",
    "Sang",
    "Sỹ",
]
FEMALE_GIVENS = [
    "Anh",
    "Châu",
    "Chi",
    "Diệp",
    "Dung",
    "Dương",
    "Duyên",
    "Giang",
    "Hà",
    "Hạnh",
    "Hằng",
    "Hiền",
    "Hoa",
    "Hồng",
    "Huệ",
    "Hương",
    "Huyền",
    "Lan",
    "Liên",
    "Linh",
    "Loan",
    "Mai",
    "My",
    "Mỹ",
    "Nga",
    "Ngân",
    "Ngọc",
    "Nguyệt",
    "Nhi",
    "Nhung",
    "Oanh",
    "Phương",
    "Quyên",
    "Quỳnh",
    "Thảo",
    "Thu",
    "Thủy",
    "Thúy",
    "Thư",
    "Trang",
    "Trâm",
    "Trinh",
    "Tuyết",
    "Uyên",
    "Vân",
    "Vi",
    "Xuân",
    "Yến",
    "Hậu",
    "Lệ",
    "Lê",
    "Diễm",
    "Ánh",
    "Bích",
    "Cúc",
    "Đào",
    "Giao",
    "Hạ",
    "Hân",
    "Kiều",
    "Lam",
    "Ly",
    "Nhàn",
    "Như",
    "Tâm",
    "Thắm",
    "Thơ",
    "Tiên",
    "Trà",
    "Tú",
    "Vy",
    "Khuê",
    "Ngà",
    "Nhạn",
    "Phượng",
    "Sen",
    "Thanh",
]
# 2-digit GSO province codes; Hồ Chí Minh City and Hà Nội weigh most, as in a city's hospitals.
PROVINCES = (
    ["79"] * 30
    + ["01"] * 8
    + [
        "74",
        "75",
        "80",
        "77",
        "72",
        "70",
        "82",
        "83",
        "86",
        "87",
        "89",
        "92",
        "48",
        "56",
        "68",
        "66",
        "38",
        "40",
        "31",
        "22",
    ]
)
MOBILE_PREFIXES = [
    "090",
    "091",
    "093",
    "094",
    "096",
    "097",
    "098",
    "086",
    "088",
    "089",
    "032",
    "033",
    "034",
    "035",
    "036",
    "037",
    "038",
    "039",
    "070",
    "076",
    "077",
    "078",
    "079",
    "081",
    "082",
    "083",
    "084",
    "085",
    "056",
    "058",
    "059",
]
BHYT_GROUPS = ["DN", "HC", "HT", "TE", "HN", "GD", "CN", "XK", "NN", "TS", "SV", "GB"]
# The benefit level each group's cards carry (emr_identity/data/bhyt_groups.csv).
BHYT_LEVELS = {
    "DN": 4,
    "HC": 4,
    "HT": 3,
    "TE": 1,
    "HN": 2,
    "GD": 4,
    "CN": 3,
    "XK": 4,
    "NN": 4,
    "TS": 2,
    "SV": 4,
    "GB": 4,
}
FIRST_BIRTH = date(1935, 1, 1)
LAST_BIRTH = date(2023, 12, 31)
# Tone marks that data entry swaps for one another (Vietnamese keyboards put them on adjacent keys).
_TONES = ["\u0300", "\u0301", "\u0303", "\u0309", "\u0323"]


@dataclass(frozen=True)
class SyntheticRecord:
    """One registration as a facility would send it, with the true person it belongs to."""

    person_key: int
    full_name: str
    birth_date: date
    sex: str  # "male" / "female"
    phone: str
    province_code: str
    cccd: str
    bhyt: str
    facility_code: str
    mrn: str
    # The birth date as the facility wrote it when it gave less than the day ("1950", "1950-07");
    # empty when it gave the full ``birth_date``.
    birth_date_given: str = ""
    # The hard cases the record carries (HARD_CASE_KINDS), for figures per kind.
    kinds: tuple[str, ...] = ()

    @property
    def birth_date_text(self) -> str:
        """The birth date as sent: partial when the facility gave it so, else the full date."""
        return self.birth_date_given or self.birth_date.isoformat()


def _zipf_choice(rng: random.Random, items: list[str]) -> str:
    # Name popularity falls off roughly as 1/rank.
    weights = [1 / (rank + 1) for rank in range(len(items))]
    return rng.choices(items, weights)[0]


def _surname(rng: random.Random) -> str:
    listed = sum(SURNAMES.values())
    if rng.random() * 100 < listed:
        return rng.choices(list(SURNAMES), list(SURNAMES.values()))[0]
    return rng.choice(REMAINING_SURNAMES)


def _cccd(rng: random.Random, born: date, sex: str, province: str) -> str:
    century_code = (born.year // 100 - 19) * 2 + (1 if sex == "female" else 0)
    return f"0{province}{century_code}{born.year % 100:02d}{rng.randrange(10**6):06d}"


def _mobile(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + f"{rng.randrange(10**7):07d}"


def _person(rng: random.Random, key: int, household: SyntheticRecord | None) -> SyntheticRecord:
    sex = rng.choice(("male", "female"))
    middles, givens = (MALE_MIDDLES, MALE_GIVENS) if sex == "male" else (FEMALE_MIDDLES, FEMALE_GIVENS)
    surname = household.full_name.split()[0] if household else _surname(rng)
    middle = rng.choice(middles)
    if rng.random() < 0.12:
        middle = f"{middle} {rng.choice(FEMALE_MIDDLES[4:] if sex == 'female' else MALE_MIDDLES[3:])}"
    given = _zipf_choice(rng, givens)
    born = FIRST_BIRTH + timedelta(days=rng.randrange((LAST_BIRTH - FIRST_BIRTH).days))
    province = household.province_code if household else rng.choice(PROVINCES)
    phone = household.phone if household else (_mobile(rng) if rng.random() < 0.8 else "")
    cccd = _cccd(rng, born, sex, province) if rng.random() < (0.8 if born.year < 2010 else 0.3) else ""
    bhyt = ""
    if rng.random() < 0.65:
        code = f"{province}{rng.randrange(10**8):08d}"
        if rng.random() < 0.5:
            bhyt = code
        else:
            group = rng.choice(BHYT_GROUPS)
            rng.randint(1, 5)  # drawn as before the level came from the group: seeds keep their population
            bhyt = f"{group}{BHYT_LEVELS[group]}{province}{code}"
    return SyntheticRecord(
        person_key=key,
        full_name=f"{surname} {middle} {given}",
        birth_date=born,
        sex=sex,
        phone=phone,
        province_code=province,
        cccd=cccd,
        bhyt=bhyt,
        facility_code="",
        mrn="",
    )


def _wrong_tone(rng: random.Random, name: str) -> str:
    words = name.split()
    index = rng.randrange(len(words))
    decomposed = unicodedata.normalize("NFD", words[index])
    marks = [c for c in decomposed if c in _TONES]
    if marks:
        decomposed = decomposed.replace(marks[0], rng.choice([t for t in _TONES if t != marks[0]]))
    else:
        vowels = [i for i, c in enumerate(decomposed) if c.lower() in "aeiouy"]
        if vowels:
            at = vowels[-1] + 1
            while at < len(decomposed) and unicodedata.combining(decomposed[at]):
                at += 1  # after the vowel's own marks (â, ơ): a tone on top of them, as typed
            decomposed = decomposed[:at] + rng.choice(_TONES) + decomposed[at:]
    words[index] = unicodedata.normalize("NFC", decomposed)
    return " ".join(words)


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 3:
        return word
    at = rng.randrange(1, len(word))
    kind = rng.randrange(3)
    if kind == 0:
        return word[:at] + rng.choice("aeinhtgocu") + word[at + 1 :]
    if kind == 1:
        return word[:at] + word[at + 1 :]
    return word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]


def _phone_typo(rng: random.Random, phone: str) -> str:
    at = rng.randrange(3, len(phone))
    return phone[:at] + str((int(phone[at]) + rng.randint(1, 9)) % 10) + phone[at + 1 :]


def _duplicate(rng: random.Random, original: SyntheticRecord) -> SyntheticRecord:
    """The same person registered elsewhere, with realistic entry errors."""
    name, born, phone = original.full_name, original.birth_date, original.phone
    province, cccd, bhyt = original.province_code, original.cccd, original.bhyt
    if rng.random() < 0.05:
        words = name.split()
        words[-1] = _typo(rng, words[-1])
        name = " ".join(words)
    if rng.random() < 0.30:
        name = " ".join(word.capitalize() for word in fold(name).split())
    elif rng.random() < 0.10:
        name = _wrong_tone(rng, name)
    if rng.random() < 0.20:
        name = unicodedata.normalize("NFD", name)
    if rng.random() < 0.10:
        name = "  " + name.upper().replace(" ", "   ")
    if born.day <= 12 and born.day != born.month and rng.random() < 0.08:
        born = date(born.year, born.day, born.month)
    if phone and rng.random() < 0.10:
        phone = _phone_typo(rng, phone)
    elif rng.random() < 0.20:
        phone = ""
    elif rng.random() < 0.05:
        phone = _mobile(rng)
    if rng.random() < 0.30:
        cccd = ""
    if rng.random() < 0.40:
        bhyt = ""
    if rng.random() < 0.10:
        province = rng.choice(PROVINCES)
    return replace(
        original, full_name=name, birth_date=born, phone=phone, province_code=province, cccd=cccd, bhyt=bhyt
    )


def _phone_written(rng: random.Random, phone: str) -> str:
    if not phone:
        return ""
    form = rng.randrange(3)
    if form == 0:
        return phone
    if form == 1:
        return "+84 " + phone[1:4] + " " + phone[4:7] + " " + phone[7:]
    return "84" + phone[1:]


# Kinds of hard case a record may carry (SyntheticRecord.kinds).
MULTIPLE_BIRTH = "multiple_birth"  # a twin or triplet of an earlier person
NAMESAKE = "namesake"  # a new person with the full name of an earlier one
WRONG_YEAR = "wrong_year"  # a duplicate whose birth year is one off
PARTIAL_DATE = "partial_date"  # birth date given to the year or month only
NO_DIACRITICS = "no_diacritics"  # written at a facility that types without diacritics
SWAPPED_DATE = "swapped_day_month"  # written at a facility that swaps day and month
MISSING_IDENTIFIERS = "missing_identifiers"  # a duplicate carrying none of the person's cards
HARD_CASE_KINDS = (
    MULTIPLE_BIRTH,
    NAMESAKE,
    WRONG_YEAR,
    PARTIAL_DATE,
    NO_DIACRITICS,
    SWAPPED_DATE,
    MISSING_IDENTIFIERS,
)
# Shares of the hard cases: multiple births among new persons (a tenth of them triplets), namesakes
# among new persons, wrong years and partial dates among duplicates, partial dates among persons
# born before 1960, and facilities that type without diacritics or swap day and month.
MULTIPLE_BIRTH_SHARE = 0.02
TRIPLET_SHARE = 0.1
NAMESAKE_SHARE = 0.01
WRONG_YEAR_SHARE = 0.05
PARTIAL_DATE_SHARE = 0.03
OLD_PERSON_PARTIAL_DATE_SHARE = 0.15
NO_DIACRITICS_FACILITY_SHARE = 0.15
SWAPPED_DATE_FACILITY_SHARE = 0.05


def _sibling(rng: random.Random, key: int, first: SyntheticRecord, taken: set[str]) -> SyntheticRecord:
    """A person born with ``first`` (twin, triplet): same family, birth date, phone and address;
    usually the same middle name; another given name; cards of their own."""
    own = _person(rng, key, first)
    middle = " ".join(first.full_name.split()[1:-1]) if rng.random() < 0.7 else own.full_name.split()[1]
    given = own.full_name.split()[-1]
    givens = MALE_GIVENS if own.sex == "male" else FEMALE_GIVENS
    while given.lower() in taken:
        given = rng.choice(givens)
    cccd = _cccd(rng, first.birth_date, own.sex, first.province_code) if first.cccd else ""
    return replace(
        own,
        full_name=f"{first.full_name.split()[0]} {middle} {given}",
        birth_date=first.birth_date,
        phone=first.phone,
        cccd=cccd if rng.random() < 0.9 else "",
        kinds=(MULTIPLE_BIRTH,),
    )


def _namesake(rng: random.Random, key: int, earlier: SyntheticRecord) -> SyntheticRecord:
    """A new person bearing the full name of an earlier one (often born the same year)."""
    own = _person(rng, key, None)
    born = own.birth_date
    if rng.random() < 0.5:
        born = date(earlier.birth_date.year, born.month, min(born.day, 28))
    cccd = _cccd(rng, born, earlier.sex, own.province_code) if own.cccd else ""
    return replace(
        own, full_name=earlier.full_name, sex=earlier.sex, birth_date=born, cccd=cccd, kinds=(NAMESAKE,)
    )


def _hard_duplicate(rng: random.Random, original: SyntheticRecord) -> SyntheticRecord:
    """A duplicate with the ordinary entry errors and, sometimes, a wrong year, a partial date or
    none of the person's cards."""
    record = _duplicate(rng, original)
    kinds = [k for k in original.kinds if k in (MULTIPLE_BIRTH, NAMESAKE)]
    if rng.random() < WRONG_YEAR_SHARE:
        born = record.birth_date
        year = born.year + rng.choice((-1, 1))
        day = 28 if (born.month, born.day) == (2, 29) else born.day  # 29 February exists in leap years only
        record = replace(record, birth_date=date(year, born.month, day), birth_date_given="")
        kinds.append(WRONG_YEAR)
    if rng.random() < PARTIAL_DATE_SHARE:
        born = record.birth_date
        given = f"{born.year:04d}" if rng.random() < 0.7 else f"{born.year:04d}-{born.month:02d}"
        record = replace(record, birth_date_given=given)
    if record.birth_date_given:
        kinds.append(PARTIAL_DATE)
    if (original.cccd or original.bhyt) and not (record.cccd or record.bhyt):
        kinds.append(MISSING_IDENTIFIERS)
    return replace(record, kinds=tuple(kinds))


def _facility_habits(rng: random.Random, count: int = 1000) -> dict[str, str]:
    """The typing habit of each facility code suffix: "" none, or NO_DIACRITICS / SWAPPED_DATE."""
    habits = {}
    for suffix in range(count):
        draw = rng.random()
        habit = ""
        if draw < NO_DIACRITICS_FACILITY_SHARE:
            habit = NO_DIACRITICS
        elif draw < NO_DIACRITICS_FACILITY_SHARE + SWAPPED_DATE_FACILITY_SHARE:
            habit = SWAPPED_DATE
        habits[f"{suffix:03d}"] = habit
    return habits


def _typed_by(record: SyntheticRecord, habit: str) -> SyntheticRecord:
    """The record as a facility with ``habit`` types it."""
    if habit == NO_DIACRITICS and fold(record.full_name) != record.full_name.lower():
        name = " ".join(word.capitalize() for word in fold(record.full_name).split())
        return replace(record, full_name=name, kinds=(*record.kinds, NO_DIACRITICS))
    born = record.birth_date
    if habit == SWAPPED_DATE and not record.birth_date_given and born.day <= 12 and born.day != born.month:
        return replace(
            record, birth_date=date(born.year, born.day, born.month), kinds=(*record.kinds, SWAPPED_DATE)
        )
    return record


def _hard_generate(records: int, duplicate_rate: float, seed: int) -> list[SyntheticRecord]:
    rng = random.Random(seed)  # noqa: S311 -- reproducible synthetic data, not secrets
    habits = _facility_habits(rng)
    people: list[SyntheticRecord] = []
    pending: list[SyntheticRecord] = []  # siblings of a multiple birth, registered soon after
    out: list[SyntheticRecord] = []
    for serial in range(records):
        if pending and rng.random() < 0.5:
            record = pending.pop()
        elif people and rng.random() < duplicate_rate:
            record = _hard_duplicate(rng, rng.choice(people))
        else:
            draw = rng.random()
            if people and draw < NAMESAKE_SHARE:
                record = _namesake(rng, len(people), rng.choice(people))
            else:
                household = rng.choice(people) if people and rng.random() < 0.08 else None
                record = _person(rng, len(people), household)
            if record.birth_date.year < 1960 and rng.random() < OLD_PERSON_PARTIAL_DATE_SHARE:
                record = replace(
                    record, birth_date_given=f"{record.birth_date.year:04d}", kinds=(PARTIAL_DATE,)
                )
            people.append(record)
            if draw > 1 - MULTIPLE_BIRTH_SHARE:
                # Siblings' names differ, if only in diacritics (Thủy, Thúy).
                taken = {record.full_name.split()[-1].lower()}
                for _ in range(2 if rng.random() < TRIPLET_SHARE else 1):
                    sibling = _sibling(rng, len(people), record, taken)
                    taken.add(sibling.full_name.split()[-1].lower())
                    people.append(sibling)
                    pending.append(sibling)
        suffix = f"{rng.randrange(1000):03d}"
        facility = f"{rng.choice(PROVINCES)}{suffix}"
        record = _typed_by(record, habits[suffix])
        out.append(
            replace(
                record, facility_code=facility, mrn=f"HS{serial:08d}", phone=_phone_written(rng, record.phone)
            )
        )
    return out


def generate(
    records: int, duplicate_rate: float, seed: int, *, hard_cases: bool = False
) -> list[SyntheticRecord]:
    """``records`` registrations in arrival order; about ``duplicate_rate`` of them re-register a
    person seen before (at another facility), the rest are new persons. 8% of new persons share a
    household (surname, province, phone) with an earlier person. ``hard_cases`` adds multiple
    births, namesakes, wrong years, partial dates and facility typing habits (module docstring);
    without it a seed gives the population it always gave."""
    if hard_cases:
        return _hard_generate(records, duplicate_rate, seed)
    rng = random.Random(seed)  # noqa: S311 -- reproducible synthetic data, not secrets
    people: list[SyntheticRecord] = []
    out: list[SyntheticRecord] = []
    for serial in range(records):
        if people and rng.random() < duplicate_rate:
            record = _duplicate(rng, rng.choice(people))
        else:
            household = rng.choice(people) if people and rng.random() < 0.08 else None
            record = _person(rng, len(people), household)
            people.append(record)
        facility = f"{rng.choice(PROVINCES)}{rng.randrange(1000):03d}"
        out.append(
            replace(
                record, facility_code=facility, mrn=f"HS{serial:08d}", phone=_phone_written(rng, record.phone)
            )
        )
    return out


def duplicates_of(population: list[SyntheticRecord], count: int, seed: int) -> list[SyntheticRecord]:
    """``count`` re-registrations, at other facilities and with realistic entry errors, of persons
    drawn from ``population`` (e.g. an index loaded from ``generate(n, 0.0, seed)``)."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible synthetic data, not secrets
    out = []
    for serial in range(count):
        original = rng.choice(population)
        # A generated record carries its phone as written at the desk; errors start from the number.
        record = _duplicate(rng, replace(original, phone=normalize_phone(original.phone) or ""))
        facility = f"{rng.choice(PROVINCES)}{rng.randrange(1000):03d}"
        out.append(
            replace(
                record,
                facility_code=facility,
                mrn=f"DUP{serial:08d}",
                phone=_phone_written(rng, record.phone),
            )
        )
    return out
