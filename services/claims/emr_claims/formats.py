"""Writing claim values and reading them back. Errors never quote the value (it may be patient data).

- Numbers are plain decimals with a dot, never an exponent: money rounded to 2 places, quantities and
  unit prices to 3 (the decisions' wording), halves rounded away from zero. Written without trailing
  zeros (``15000``, ``12.5``); a reader accepts up to the allowed places.
- Times are yyyymmddHHMM and dates yyyymmdd, in Vietnam time (UTC+7, no daylight saving).
- A birth moment (NGAY_SINH) writes 0000 for an unknown day and month, and 0000 for an unknown time.
- Lists are ``;``-separated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")
MONEY_PLACES = 2
QUANTITY_PLACES = 3
PRICE_PLACES = 3
LIST_SEPARATOR = ";"
_DATE_TIME = re.compile(r"\d{12}")
_DATE = re.compile(r"\d{8}")
_PLAIN_DECIMAL = re.compile(r"(\d+)(?:\.(\d+))?")


class FormatError(ValueError):
    """A value that is not written the way the claim format demands."""


def round_places(value: Decimal, places: int) -> Decimal:
    """``value`` rounded to ``places`` decimals, halves away from zero (0.005 -> 0.01)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def round_money(value: Decimal) -> Decimal:
    return round_places(value, MONEY_PLACES)


def write_decimal(value: Decimal | int, places: int) -> str:
    """A non-negative number rounded to ``places`` decimals, in fixed notation without trailing zeros."""
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("not a finite number")
    rounded = round_places(number, places)
    if rounded < 0:
        raise ValueError("claim amounts and quantities are never negative")
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def write_money(value: Decimal | int) -> str:
    return write_decimal(value, MONEY_PLACES)


def write_quantity(value: Decimal | int) -> str:
    return write_decimal(value, QUANTITY_PLACES)


def write_price(value: Decimal | int) -> str:
    return write_decimal(value, PRICE_PLACES)


def write_integer(value: int) -> str:
    if value < 0:
        raise ValueError("claim integers are never negative")
    return str(value)


def read_decimal(text: str, places: int) -> Decimal:
    """The number written in ``text``: digits, optionally a dot and at most ``places`` decimals."""
    match = _PLAIN_DECIMAL.fullmatch(text)
    if match is None:
        if "e" in text.lower():
            raise FormatError("exponent notation; write plain digits")
        raise FormatError("not a plain non-negative number with a dot as decimal separator")
    fraction = match.group(2) or ""
    if len(fraction) > places:
        raise FormatError(f"{len(fraction)} decimal places; at most {places} allowed")
    try:
        return Decimal(text)
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only valid decimals
        raise FormatError("not a number") from error


def read_integer(text: str) -> int:
    return int(read_decimal(text, 0))


def write_date_time(moment: datetime) -> str:
    """yyyymmddHHMM of an aware moment, in Vietnam time."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no defined Vietnam time; pass an aware one")
    return moment.astimezone(VIETNAM_TIME).strftime("%Y%m%d%H%M")


def read_date_time(text: str) -> datetime:
    """The Vietnam-time moment of a yyyymmddHHMM value."""
    if _DATE_TIME.fullmatch(text) is None:
        raise FormatError("not yyyymmddHHMM (12 digits)")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=VIETNAM_TIME)
    except ValueError as error:
        raise FormatError("not a real date and time") from error


def write_date(day: date) -> str:
    return day.strftime("%Y%m%d") if not isinstance(day, datetime) else write_date_time(day)[:8]


def read_date(text: str) -> date:
    if _DATE.fullmatch(text) is None:
        raise FormatError("not yyyymmdd (8 digits)")
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError as error:
        raise FormatError("not a real date") from error


@dataclass(frozen=True)
class BirthMoment:
    """NGAY_SINH: the year always; month and day together, or neither; hour and minute, or neither."""

    year: int
    month: int | None = None
    day: int | None = None
    hour: int | None = None
    minute: int | None = None

    def __post_init__(self) -> None:
        if (self.month is None) != (self.day is None):
            raise ValueError("give both the month and the day of birth, or neither")
        if (self.hour is None) != (self.minute is None):
            raise ValueError("give both the hour and the minute of birth, or neither")
        if not 1 <= self.year <= 9999:
            raise ValueError("year of birth out of range")
        if self.month is not None and self.day is not None:
            date(self.year, self.month, self.day)
        if (
            self.hour is not None
            and self.minute is not None
            and not (0 <= self.hour < 24 and 0 <= self.minute < 60)
        ):
            raise ValueError("time of birth out of range")


def write_birth(birth: BirthMoment) -> str:
    day_part = "0000" if birth.month is None else f"{birth.month:02d}{birth.day:02d}"
    time_part = "0000" if birth.hour is None else f"{birth.hour:02d}{birth.minute:02d}"
    return f"{birth.year:04d}{day_part}{time_part}"


def read_birth(text: str) -> BirthMoment:
    """A written NGAY_SINH; time 0000 reads as unknown (the format cannot tell it from midnight)."""
    if _DATE_TIME.fullmatch(text) is None:
        raise FormatError("not yyyymmddHHMM (12 digits)")
    year, month, day, hour, minute = (int(text[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12)))
    known_day = (month, day) != (0, 0)
    known_time = (hour, minute) != (0, 0)
    try:
        return BirthMoment(
            year,
            month if known_day else None,
            day if known_day else None,
            hour if known_time else None,
            minute if known_time else None,
        )
    except ValueError as error:
        raise FormatError(f"not a valid birth date: {error}") from error


def write_list(items: Iterable[str]) -> str:
    values = list(items)
    for value in values:
        if not value or LIST_SEPARATOR in value:
            raise ValueError("a list item is empty or holds the separator")
    return LIST_SEPARATOR.join(values)


def read_list(text: str) -> Sequence[str]:
    """The items of a ``;``-separated value; an empty value is an empty list."""
    if not text:
        return ()
    items = text.split(LIST_SEPARATOR)
    if any(not item.strip() for item in items):
        raise FormatError("a list item is empty")
    return tuple(items)
