"""The claim tables as loaded from the package's data files."""

import re

import pytest

from emr_claims.spec import ELEMENTS, TABLE_KINDS, table

OFFICIAL_FIELD_COUNTS = {"XML0": 26, "XML1": 66, "XML2": 39, "XML3": 47, "XML4": 12, "XML5": 9}
FORMAT = re.compile(
    r"|integer|decimal\(\d\)|yyyymmddHHMM|yyyymmdd|yyyymmdd\|yyyymmddHHMM|birth-yyyymmddHHMM"
    r"|list|list\(\d+\)|list:yyyymmdd|codes:[A-Z0-9]+(\|[A-Z0-9]+)*|range:\d+\.\.\d+"
)


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_every_official_field_is_listed_in_order(kind: str) -> None:
    spec = table(kind)
    assert len(spec.fields) == OFFICIAL_FIELD_COUNTS[kind]
    assert [f.order for f in spec.fields] == list(range(1, len(spec.fields) + 1))
    assert len(set(spec.names)) == len(spec.names)
    assert spec.names[:2] == ("MA_LK", "STT")


@pytest.mark.parametrize("kind", TABLE_KINDS)
def test_every_field_has_a_known_type_format_requirement_and_meaning(kind: str) -> None:
    for field in table(kind).fields:
        assert field.type in {"string", "integer", "decimal", "date", "datetime"}, field
        assert FORMAT.fullmatch(field.format), field
        assert field.required in {"yes", "no", "conditional"}
        assert bool(field.condition) == (field.required == "conditional"), field
        assert field.meaning and field.meaning.replace("QĐ", "").isascii(), field  # own English words
        assert field.max_size is None or field.max_size > 0


def test_element_names_of_the_130_layout() -> None:
    assert table("XML1").root == "TONG_HOP" and table("XML1").rows_element == ""
    assert ELEMENTS["XML2"] == ("CHITIEU_CHITIET_THUOC", "DSACH_CHI_TIET_THUOC", "CHI_TIET_THUOC")
    assert ELEMENTS["XML3"] == ("CHITIEU_CHITIET_DVKT_VTYT", "DSACH_CHI_TIET_DVKT", "CHI_TIET_DVKT")
    assert table("XML0").row_element == "TRANG_THAI_KCB"


def test_amendments_are_applied() -> None:
    xml1 = table("XML1")
    assert xml1.field("MA_LOAI_KCB").type == "string"  # 4750: number became string
    assert xml1.field("MA_DOITUONG_KCB").max_size == 4  # 4750: 4 characters
    assert xml1.field("SO_CCCD").max_size is None  # 3176: unlimited
    assert xml1.field("MA_TTDV").max_size == 255  # 3176
    assert xml1.field("KET_QUA_DTRI").codes == frozenset("12345678")  # 4750 added 8
    assert table("XML2").field("MA_KHOA").max_size == 50  # 4750


def test_money_and_quantity_places() -> None:
    xml2, xml3 = table("XML2"), table("XML3")
    assert xml2.field("THANH_TIEN_BV").decimal_places == 2
    assert xml2.field("SO_LUONG").decimal_places == 3
    assert xml3.field("DON_GIA_BH").decimal_places == 3
    assert table("XML1").field("STT").decimal_places == 0
    assert table("XML1").field("MA_BENH_KT").max_items == 12


def test_unknown_table_is_refused() -> None:
    with pytest.raises(KeyError):
        table("XML9")
