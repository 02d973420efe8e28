"""Writing claim values and reading them back."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emr_claims import formats

amounts = st.decimals(min_value=0, max_value=Decimal("1e13"), allow_nan=False, allow_infinity=False)


@given(amounts, st.sampled_from([0, 2, 3]))
def test_any_decimal_is_written_plainly_and_reads_back_rounded(value: Decimal, places: int) -> None:
    written = formats.write_decimal(value, places)
    assert "e" not in written.lower()
    assert formats.read_decimal(written, places) == formats.round_places(value, places)


@given(st.decimals(min_value=0, max_value=Decimal("1e15"), places=2, allow_nan=False, allow_infinity=False))
def test_money_round_trips_exactly(value: Decimal) -> None:
    assert formats.read_decimal(formats.write_money(value), 2) == value


def test_exponent_values_are_written_in_fixed_notation() -> None:
    assert formats.write_money(Decimal("1E+6")) == "1000000"
    assert formats.write_quantity(Decimal("1.5E-2")) == "0.015"
    assert formats.write_money(Decimal("12.50")) == "12.5"


def test_money_halves_round_away_from_zero() -> None:
    assert formats.write_money(Decimal("0.005")) == "0.01"
    assert formats.write_money(Decimal("2.345")) == "2.35"


@pytest.mark.parametrize("text", ["1e3", "1E+3", "-1", "1,5", " 1", "1.", ".5", "0x10", "NaN"])
def test_reading_refuses_what_is_not_plain(text: str) -> None:
    with pytest.raises(formats.FormatError):
        formats.read_decimal(text, 3)


def test_reading_refuses_too_many_places() -> None:
    with pytest.raises(formats.FormatError, match="at most 2"):
        formats.read_decimal("1.005", 2)


def test_writing_refuses_negative_and_non_finite() -> None:
    with pytest.raises(ValueError, match="negative"):
        formats.write_money(Decimal("-1"))
    with pytest.raises(ValueError, match="finite"):
        formats.write_money(Decimal("Infinity"))


@given(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_date_times_are_vietnam_time_and_read_back_to_the_minute(moment: datetime) -> None:
    written = formats.write_date_time(moment)
    assert len(written) == 12 and written.isdigit()
    assert formats.read_date_time(written) == moment.replace(second=0, microsecond=0)


def test_date_time_is_written_in_vietnam_time() -> None:
    assert formats.write_date_time(datetime(2025, 3, 31, 17, 30, tzinfo=UTC)) == "202504010030"
    assert formats.write_date(datetime(2025, 3, 31, 17, 30, tzinfo=UTC)) == "20250401"
    with pytest.raises(ValueError, match="naive"):
        formats.write_date_time(datetime(2025, 1, 1))


@pytest.mark.parametrize("text", ["20250231", "2025013", "2025-01-01", "202501011"])
def test_bad_dates_are_refused(text: str) -> None:
    with pytest.raises(formats.FormatError):
        formats.read_date(text)


@given(st.dates(min_value=date(1900, 1, 1)), st.booleans(), st.booleans())
def test_birth_round_trips_with_unknown_parts(day: date, day_known: bool, time_known: bool) -> None:
    birth = formats.BirthMoment(
        day.year,
        day.month if day_known else None,
        day.day if day_known else None,
        13 if time_known else None,
        45 if time_known else None,
    )
    written = formats.write_birth(birth)
    assert len(written) == 12
    assert formats.read_birth(written) == birth


def test_birth_with_unknown_day_and_month_is_written_with_zeros() -> None:
    assert formats.write_birth(formats.BirthMoment(1985)) == "198500000000"
    assert formats.read_birth("198500000000") == formats.BirthMoment(1985)
    with pytest.raises(formats.FormatError):
        formats.read_birth("198513010000")
    with pytest.raises(ValueError, match="both"):
        formats.BirthMoment(1985, 7, None)


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters=";", blacklist_categories=["Cs"]), min_size=1
        ).filter(str.strip)
    )
)
def test_lists_round_trip(items: list[str]) -> None:
    assert list(formats.read_list(formats.write_list(items))) == items


def test_list_items_cannot_hold_the_separator() -> None:
    with pytest.raises(ValueError, match="separator"):
        formats.write_list(["A;B"])
    with pytest.raises(formats.FormatError):
        formats.read_list("A;;B")


def test_vietnam_time_is_utc_plus_seven() -> None:
    assert formats.VIETNAM_TIME.utcoffset(None) == timedelta(hours=7)
