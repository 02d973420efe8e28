"""A synthetic, valid, full claim (all of XML1..XML5, totals that add up), its XML0 check-in and its
withdrawal, for tests and demos. Every name and number in it is invented."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from emr_claims import build, formats
from emr_claims.money import LineAmounts, line_amounts

Rows = dict[str, list[dict[str, str]]]
FACILITY = "79001"
LINK_KEY = "SYN-2025-000123"
PREPARED_ON = date(2025, 3, 15)


def _money_fields(amounts: LineAmounts, other_sources: dict[str, Decimal]) -> dict[str, str]:
    return {
        "THANH_TIEN_BV": formats.write_money(amounts.facility),
        "THANH_TIEN_BH": formats.write_money(amounts.insured),
        "T_NGUONKHAC_NSNN": formats.write_money(other_sources.get("NSNN", Decimal(0))),
        "T_NGUONKHAC_VTNN": formats.write_money(other_sources.get("VTNN", Decimal(0))),
        "T_NGUONKHAC_VTTN": formats.write_money(other_sources.get("VTTN", Decimal(0))),
        "T_NGUONKHAC_CL": formats.write_money(other_sources.get("CL", Decimal(0))),
        "T_NGUONKHAC": formats.write_money(amounts.other_sources),
        "T_BNTT": formats.write_money(amounts.self_pay),
        "T_BNCCT": formats.write_money(amounts.co_payment),
        "T_BHTT": formats.write_money(amounts.fund),
    }


def _drug(stt: int, quantity: str, price: str, rate: str, name: str, code: str) -> dict[str, str]:
    amounts = line_amounts(Decimal(quantity), Decimal(price), Decimal(price), Decimal(rate), Decimal(80))
    return {
        "MA_LK": LINK_KEY,
        "STT": str(stt),
        "MA_THUOC": code,
        "MA_NHOM": "4",
        "TEN_THUOC": name,
        "DON_VI_TINH": "Viên",
        "HAM_LUONG": "500mg",
        "DUONG_DUNG": "1.01",
        "DANG_BAO_CHE": "Viên nén",
        "LIEU_DUNG": "1 viên/lần * 2 lần/ngày * 1 ngày [2 viên/ngày]",
        "CACH_DUNG": "Uống sau ăn",
        "SO_DANG_KY": "VD-00000-25",
        "TT_THAU": "100/QĐ-SYT;G1;N1;2024",
        "PHAM_VI": "1",
        "TYLE_TT_BH": rate,
        "SO_LUONG": formats.write_quantity(Decimal(quantity)),
        "DON_GIA": formats.write_price(Decimal(price)),
        **_money_fields(amounts, {}),
        "MUC_HUONG": "80",
        "MA_KHOA": "K01",
        "MA_BAC_SI": "000001/BYT-GPHN",
        "NGAY_YL": "202503100930",
        "NGAY_TH_YL": "202503101000",
        "MA_PTTT": "1",
        "NGUON_CTRA": "1",
    }


def claim_rows() -> Rows:
    """The rows of each table of the sample visit: a five-day inpatient stay (MA_LOAI_KCB 03)."""
    drugs = [
        _drug(1, "10", "1500.5", "100", "Paracetamol 500mg", "40.1"),
        _drug(2, "2.5", "333.333", "50", "Amoxicillin 500mg", "40.2"),
    ]
    examination = line_amounts(Decimal(1), Decimal(50000), Decimal(50000), Decimal(100), Decimal(80))
    supply = line_amounts(
        Decimal(2), Decimal(12000), Decimal(10000), Decimal(100), Decimal(80), other_sources=Decimal(1000)
    )
    common = {"MA_LK": LINK_KEY, "PHAM_VI": "1", "MUC_HUONG": "80", "MA_KHOA": "K01", "MA_PTTT": "1"}
    services = [
        {
            **common,
            "STT": "1",
            "MA_DICH_VU": "01.0001.0001",
            "MA_NHOM": "13",
            "TEN_DICH_VU": "Khám nội",
            "DON_VI_TINH": "Lần",
            "SO_LUONG": "1",
            "DON_GIA_BV": "50000",
            "DON_GIA_BH": "50000",
            "TYLE_TT_DV": "100",
            "TYLE_TT_BH": "100",
            **_money_fields(examination, {}),
            "MA_BAC_SI": "000001/BYT-GPHN",
            "NGUOI_THUC_HIEN": "000001/BYT-GPHN",
            "NGAY_YL": "202503100840",
            "NGAY_TH_YL": "202503100845",
            "NGAY_KQ": "202503100900",
        },
        {
            **common,
            "STT": "2",
            "MA_VAT_TU": "N03.01.010",
            "MA_NHOM": "10",
            "TEN_VAT_TU": "Bơm tiêm dùng một lần",
            "DON_VI_TINH": "Cái",
            "SO_LUONG": "2",
            "DON_GIA_BV": "12000",
            "DON_GIA_BH": "10000",
            "TT_THAU": "101/QĐ-SYT;G2;N1;2024",
            "TYLE_TT_DV": "100",
            "TYLE_TT_BH": "100",
            **_money_fields(supply, {"NSNN": Decimal(1000)}),
            "MA_BAC_SI": "000001/BYT-GPHN",
            "NGAY_YL": "202503100930",
            "NGAY_TH_YL": "202503101000",
        },
    ]
    lines = [*drugs, *services]

    def total(name: str, rows: list[dict[str, str]] = lines) -> str:
        return formats.write_money(sum((Decimal(row[name]) for row in rows), Decimal(0)))

    summary = {
        "MA_LK": LINK_KEY,
        "STT": "1",
        "MA_BN": "BN000123",
        "HO_TEN": "Nguyễn Văn Thử",
        "SO_CCCD": "079000000001",
        "NGAY_SINH": "198507150000",
        "GIOI_TINH": "1",
        "MA_QUOCTICH": "000",
        "MA_DANTOC": "01",
        "MA_NGHE_NGHIEP": "00",
        "DIA_CHI": "1 Đường Thử, Phường Thử, Quận Thử, TP Thử",
        "MATINH_CU_TRU": "79",
        "MAHUYEN_CU_TRU": "760",
        "MAXA_CU_TRU": "26734",
        "MA_THE_BHYT": "GD4797900000001",
        "MA_DKBD": "79001",
        "GT_THE_TU": "20250101",
        "GT_THE_DEN": "20251231",
        "LY_DO_VV": "Sốt cao",
        "LY_DO_VNT": "Sốt cao kéo dài",
        "CHAN_DOAN_VAO": "Sốt chưa rõ nguyên nhân",
        "CHAN_DOAN_RV": "Viêm phổi",
        "MA_BENH_CHINH": "J18.9",
        "MA_BENH_KT": "R50.9;E86",
        "MA_DOITUONG_KCB": "1.1",
        "NGAY_VAO": "202503100830",
        "NGAY_VAO_NOI_TRU": "202503100900",
        "NGAY_RA": "202503141000",
        "SO_NGAY_DTRI": "5",
        "PP_DIEU_TRI": "Nội khoa",
        "KET_QUA_DTRI": "1",
        "MA_LOAI_RV": "1",
        "NGAY_TTOAN": "202503141030",
        "T_THUOC": total("THANH_TIEN_BV", drugs),
        "T_VTYT": total("THANH_TIEN_BV", services[1:]),
        "T_TONGCHI_BV": total("THANH_TIEN_BV"),
        "T_TONGCHI_BH": total("THANH_TIEN_BH"),
        "T_BNTT": total("T_BNTT"),
        "T_BNCCT": total("T_BNCCT"),
        "T_BHTT": total("T_BHTT"),
        "T_NGUONKHAC": total("T_NGUONKHAC"),
        "T_BHTT_GDV": total("T_BHTT"),
        "NAM_QT": "2025",
        "THANG_QT": "3",
        "MA_LOAI_KCB": "03",
        "MA_KHOA": "K01",
        "MA_CSKCB": FACILITY,
        "MA_KHUVUC": "",
        "CAN_NANG": "62.5",
        "MA_HSBA": "HSBA-000123",
        "MA_TTDV": "000002/BYT-GPHN",
    }
    results = [
        {
            "MA_LK": LINK_KEY,
            "STT": "1",
            "MA_DICH_VU": "22.0001.1234",
            "MA_CHI_SO": "WBC",
            "TEN_CHI_SO": "Bạch cầu",
            "GIA_TRI": "12.5",
            "DON_VI_DO": "G/L",
            "NGAY_KQ": "202503101100",
            "MA_BS_DOC_KQ": "000003/BYT-GPHN",
        }
    ]
    progress = [
        {
            "MA_LK": LINK_KEY,
            "STT": "1",
            "DIEN_BIEN_LS": "Sốt 39 độ CSST<M90_T39_HA120/70_NT20>",
            "THOI_DIEM_DBLS": "202503101200",
            "NGUOI_THUC_HIEN": "000001/BYT-GPHN",
        }
    ]
    return {"XML1": [summary], "XML2": drugs, "XML3": services, "XML4": results, "XML5": progress}


def claim_documents(rows: Rows | None = None) -> dict[str, bytes]:
    return {
        kind: build.table_document(kind, table_rows) for kind, table_rows in (rows or claim_rows()).items()
    }


def claim(rows: Rows | None = None) -> bytes:
    """The sample visit as a GIAMDINHHS submission."""
    return build.submission(FACILITY, [claim_documents(rows)], PREPARED_ON)


def checkin_row() -> dict[str, str]:
    """The sample visit's XML0 row: an examination, its first order a service."""
    return {
        "MA_LK": LINK_KEY,
        "STT": "1",
        "MA_BN": "BN000123",
        "HO_TEN": "Nguyễn Văn Thử",
        "NGAY_SINH": "198507150000",
        "GIOI_TINH": "1",
        "MA_DOITUONG_KCB": "1.1",
        "NGAY_VAO": "202503100830",
        "MA_LOAI_KCB": "01",
        "MA_CSKCB": FACILITY,
        "MA_DICH_VU": "01.0001.0001",
        "TEN_DICH_VU": "Khám nội",
        "NGAY_YL": "202503100840",
    }


def checkin(row: dict[str, str] | None = None) -> bytes:
    """The sample visit's check-in, sent alone, CHUKYDONVI empty."""
    return build.checkin_document([row or checkin_row()])


def withdrawal(link_key: str = LINK_KEY) -> bytes:
    """The withdrawal of the sample visit's claim, CHUKYDONVI empty."""
    return build.withdrawal_document(FACILITY, link_key, datetime(2025, 3, 16, 2, 0, tzinfo=UTC))
