"""Birth dates known to the year, the month or the day. Pure; no I/O.

Older patients, and people whose papers were lost, often know only their birth year (or year and
month); the national insurance claim accepts such dates with the unknown parts written as 00."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date

_FORMS = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")


class DatePrecision(enum.Enum):
    """How much of a birth date is known."""

    YEAR = "year"
    MONTH = "month"
    DAY = "day"


@dataclass(frozen=True)
class BirthDate:
    """A birth date of the year, year and month, or full date; ``month`` and ``day`` are 0 when
    unknown (a day is never known without its month)."""

    year: int
    month: int = 0
    day: int = 0

    def __post_init__(self) -> None:
        if self.day and not self.month:
            raise ValueError("a day without a month")
        if self.month and not 1 <= self.month <= 12:
            raise ValueError("month out of range")
        if self.day:
            date(self.year, self.month, self.day)  # raises for a day the month does not have
        elif not 1 <= self.year <= 9999:
            raise ValueError("year out of range")

    @property
    def precision(self) -> DatePrecision:
        if self.day:
            return DatePrecision.DAY
        return DatePrecision.MONTH if self.month else DatePrecision.YEAR

    @classmethod
    def parse(cls, text: str) -> BirthDate:
        """``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``; ValueError for anything else."""
        found = _FORMS.fullmatch(text)
        if not found:
            raise ValueError(text)
        year, month, day = found.groups()
        if month == "00" or day == "00":
            raise ValueError(text)  # 0 stands for unknown here; written out, it is no month or day
        return cls(int(year), int(month or 0), int(day or 0))

    @classmethod
    def from_date(cls, value: date) -> BirthDate:
        return cls(value.year, value.month, value.day)

    def isoformat(self) -> str:
        """The form it was given in: ``1985``, ``1985-07`` or ``1985-07-15``."""
        if self.day:
            return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
        if self.month:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}"

    def earliest(self) -> date:
        """The first day the date may be."""
        return date(self.year, self.month or 1, self.day or 1)
