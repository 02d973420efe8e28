"""A line's amounts derived by emr_claims.money always satisfy the validator, and the shares add up."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emr_claims import formats, sample
from emr_claims.money import line_amounts
from emr_claims.validate import validate_submission

quantities = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(1000), places=3)
prices = st.decimals(min_value=0, max_value=Decimal(10_000_000), places=3)
rates = st.integers(min_value=0, max_value=100).map(Decimal)


@given(quantities, prices, prices, rates, rates, rates, st.floats(min_value=0, max_value=1))
def test_shares_add_up_to_the_facility_amount(
    quantity: Decimal,
    price: Decimal,
    insured_price: Decimal,
    insured: Decimal,
    level: Decimal,
    service: Decimal,
    other: float,
) -> None:
    facility = formats.round_money(quantity * price * service / 100)
    other_sources = formats.round_money(facility * Decimal(other))
    amounts = line_amounts(quantity, price, insured_price, insured, level, service, other_sources)
    assert amounts.fund + amounts.co_payment + amounts.self_pay + amounts.other_sources == amounts.facility
    if insured_price <= price:
        assert min(amounts.fund, amounts.co_payment, amounts.self_pay) >= 0


def test_other_sources_are_taken_off_self_pay_then_co_payment_then_the_fund() -> None:
    amounts = line_amounts(
        Decimal(1), Decimal(100), Decimal(80), Decimal(100), Decimal(80), other_sources=Decimal(30)
    )
    # Before: facility 100, insured 80, fund 64, co-payment 16, self-pay 20.
    assert (amounts.self_pay, amounts.co_payment, amounts.fund) == (Decimal(0), Decimal(6), Decimal(64))
    amounts = line_amounts(
        Decimal(1), Decimal(100), Decimal(80), Decimal(100), Decimal(80), other_sources=Decimal(90)
    )
    assert (amounts.self_pay, amounts.co_payment, amounts.fund) == (Decimal(0), Decimal(0), Decimal(10))
    with pytest.raises(ValueError, match="between 0"):
        line_amounts(
            Decimal(1), Decimal(100), Decimal(80), Decimal(100), Decimal(80), other_sources=Decimal(101)
        )


@settings(max_examples=40, deadline=None)
@given(quantities, prices, rates, rates, rates)
def test_a_service_line_priced_by_money_is_valid(
    quantity: Decimal, price: Decimal, insured: Decimal, level: Decimal, service: Decimal
) -> None:
    rows = sample.claim_rows()
    line = rows["XML3"][0]
    amounts = line_amounts(quantity, price, price, insured, level, service)
    line.update(
        SO_LUONG=formats.write_quantity(quantity),
        DON_GIA_BV=formats.write_price(price),
        DON_GIA_BH=formats.write_price(price),
        TYLE_TT_BH=str(insured),
        TYLE_TT_DV=str(service),
        MUC_HUONG=str(level),
        THANH_TIEN_BV=formats.write_money(amounts.facility),
        THANH_TIEN_BH=formats.write_money(amounts.insured),
        T_BHTT=formats.write_money(amounts.fund),
        T_BNCCT=formats.write_money(amounts.co_payment),
        T_BNTT=formats.write_money(amounts.self_pay),
    )
    lines = [*rows["XML2"], *rows["XML3"]]
    summary = rows["XML1"][0]
    for total, field in (
        ("T_TONGCHI_BV", "THANH_TIEN_BV"),
        ("T_TONGCHI_BH", "THANH_TIEN_BH"),
        ("T_BHTT", "T_BHTT"),
        ("T_BNCCT", "T_BNCCT"),
        ("T_BNTT", "T_BNTT"),
        ("T_BHTT_GDV", "T_BHTT"),
    ):
        summary[total] = formats.write_money(sum((Decimal(row[field]) for row in lines), Decimal(0)))
    assert validate_submission(sample.claim(rows)) == []
