"""How one claim line's amounts follow from its quantity, prices and rates (Decision 3176/QĐ-BYT):

- THANH_TIEN_BV = SO_LUONG x facility price x TYLE_TT_DV / 100 (XML2: no TYLE_TT_DV, i.e. 100);
- THANH_TIEN_BH = SO_LUONG x insured price x TYLE_TT_DV / 100 x TYLE_TT_BH / 100 (XML2: the one price);
- before other sources: T_BHTT = THANH_TIEN_BH x MUC_HUONG / 100, T_BNCCT = THANH_TIEN_BH - T_BHTT,
  T_BNTT = THANH_TIEN_BV - THANH_TIEN_BH;
- T_NGUONKHAC (the sum of its four parts) is taken off T_BNTT, then T_BNCCT, then T_BHTT;
each amount rounded to 2 places, so T_BHTT + T_BNCCT + T_BNTT + T_NGUONKHAC = THANH_TIEN_BV.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from emr_claims.formats import round_money

HUNDRED = Decimal(100)


@dataclass(frozen=True)
class LineAmounts:
    facility: Decimal  # THANH_TIEN_BV
    insured: Decimal  # THANH_TIEN_BH
    fund: Decimal  # T_BHTT
    co_payment: Decimal  # T_BNCCT
    self_pay: Decimal  # T_BNTT
    other_sources: Decimal  # T_NGUONKHAC


def line_amounts(
    quantity: Decimal,
    facility_price: Decimal,
    insured_price: Decimal,
    insured_rate: Decimal,
    benefit_level: Decimal,
    service_rate: Decimal = HUNDRED,
    other_sources: Decimal = Decimal(0),
) -> LineAmounts:
    facility = round_money(quantity * facility_price * service_rate / HUNDRED)
    insured = round_money(quantity * insured_price * service_rate / HUNDRED * insured_rate / HUNDRED)
    fund = round_money(insured * benefit_level / HUNDRED)
    co_payment = insured - fund
    self_pay = facility - insured
    if other_sources < 0 or other_sources > facility:
        raise ValueError("other sources pay between 0 and the line's facility amount")
    remaining = other_sources
    taken = min(remaining, self_pay)
    self_pay, remaining = self_pay - taken, remaining - taken
    taken = min(remaining, co_payment)
    co_payment, remaining = co_payment - taken, remaining - taken
    fund -= remaining
    return LineAmounts(facility, insured, fund, co_payment, self_pay, round_money(other_sources))
