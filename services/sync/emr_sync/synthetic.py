"""A synthetic backlog of finished, insured visits, queued as intake would queue them, for the sync
bench and tests. No real person's data: one made-up patient per ``per_patient`` encounters, each visit
with the facts a full claim needs (cards, visit type, admission and discharge, departments) and a few
charge lines whose quantities, fractional prices and ratios vary with the visit's number."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2

from emr_fhir.resources import transaction_bundle
from emr_runtime.clock import utc_now
from emr_sync.claim_xml import ClaimDetails, claim_rows
from emr_sync.converters import timestamp
from emr_sync.domain import Delivery, DeliveryKind, new_delivery

FACILITY_CODE = "79001"
DOCTOR = "000001/BYT-GPHN"
# The synthetic facility's MA_TTDV (sync reads a facility's from SYNC_FACILITY_CLAIM_CODES).
FACILITY_HEAD = "000002/BYT-GPHN"
SYNTHETIC_DETAILS = ClaimDetails(facility_head_code=FACILITY_HEAD)
# (line total name in XML1, the line field it sums)
SUMMED = (
    ("T_TONGCHI_BV", "THANH_TIEN_BV"),
    ("T_TONGCHI_BH", "THANH_TIEN_BH"),
    ("T_BNTT", "T_BNTT"),
    ("T_BNCCT", "T_BNCCT"),
    ("T_BHTT", "T_BHTT"),
    ("T_NGUONKHAC", "T_NGUONKHAC"),
)


@dataclass(frozen=True)
class SyntheticVisit:
    patient: identity_pb2.Patient
    encounter: records_pb2.Encounter
    resources: list[records_pb2.ClinicalResource]


def _patient(index: int) -> identity_pb2.Patient:
    return identity_pb2.Patient(
        patient_id=str(uuid.uuid4()),
        full_name=f"Bệnh Nhân Thử {index}",
        birth_date="1985-07-20",
        sex=identity_pb2.SEX_MALE,
        registering_facility_code=FACILITY_CODE,
        province_code="79",
        current_province_code="79",
        # A current (post-2025) address: a ward of the province, no district.
        nationality_code="000",
        ethnicity_code="01",
        occupation_code="00",
        address=f"{index} Đường Thử, Phường Thử, TP Thử",
        commune_code="26734",
        identifiers=[
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079085{index:06d}"),
            identity_pb2.Identifier(system=identity_pb2.IDENTIFIER_SYSTEM_BHYT, value=f"DN4{index:012d}"),
        ],
        version=1,
    )


def _line(
    encounter: records_pb2.Encounter, kind: int, code: str, name: str, ordered: datetime, **fields: object
) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        charge_line=records_pb2.ChargeLine(
            charge_line_id=str(uuid.uuid4()),
            patient_id=encounter.patient_id,
            facility_code=FACILITY_CODE,
            encounter_id=encounter.encounter_id,
            kind=kind,  # type: ignore[arg-type]
            status=records_pb2.CHARGE_LINE_STATUS_ACTIVE,
            code=code,
            name=name,
            scope="1",
            department_code="K01",
            ordering_practitioner_code=DOCTOR,
            order_time=timestamp(ordered),
            execution_time=timestamp(ordered),
            **fields,  # type: ignore[arg-type]
        )
    )


def synthetic_visit(number: int, patient: identity_pb2.Patient, now: datetime) -> SyntheticVisit:
    """An insured examination with a drug, an examination and a supply line, amounts varying with
    ``number`` (fractional drug prices, partial insured ratios)."""
    started, ended = now - timedelta(hours=1), now - timedelta(minutes=10)
    card = patient.identifiers[1].value
    encounter = records_pb2.Encounter(
        encounter_id=str(uuid.uuid4()),
        patient_id=patient.patient_id,
        facility_code=FACILITY_CODE,
        encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
        visit_type=records_pb2.VISIT_TYPE_EXAMINATION,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=timestamp(started),
        end_time=timestamp(ended),
        reason="Khám sức khỏe",
        insurance=records_pb2.EncounterInsurance(bhyt_number=card, benefit_level=4),
        insurance_cards=[
            records_pb2.InsuranceCard(
                card_number=card,
                registered_facility_code=FACILITY_CODE,
                valid_from="2024-01-01",
                valid_to="2030-12-31",
            )
        ],
        admission=records_pb2.EncounterAdmission(
            reason="Khám sức khỏe", admission_diagnosis="Viêm họng", visit_subject_code="1.1"
        ),
        discharge=records_pb2.EncounterDischarge(
            discharge_diagnosis="Viêm họng cấp",
            outcome=records_pb2.TREATMENT_OUTCOME_CURED,
            kind=records_pb2.DISCHARGE_KIND_DISCHARGED,
        ),
        departments=[records_pb2.EncounterDepartment(department_code="K01")],
        weight_kg=f"{50 + number % 30}.5",
        medical_record_number=f"PK-{number:08d}",
        treatment_method="Nội khoa",
        version=1,
    )
    resources = [
        records_pb2.ClinicalResource(
            condition=records_pb2.Condition(
                condition_id=str(uuid.uuid4()),
                patient_id=patient.patient_id,
                facility_code=FACILITY_CODE,
                encounter_id=encounter.encounter_id,
                icd10_code="J02.9",
                role=records_pb2.DIAGNOSIS_ROLE_PRIMARY,
                clinical_status=records_pb2.CONDITION_CLINICAL_STATUS_ACTIVE,
            )
        ),
        _line(
            encounter,
            records_pb2.CHARGE_LINE_KIND_SERVICE,
            "02.1896",
            "Khám Tai Mũi Họng",
            started + timedelta(minutes=5),
            unit="lần",
            payment_group="13",
            quantity="1",
            hospital_unit_price="39000",
            insurance_unit_price="39000",
            service_payment_ratio=100,
            insurance_payment_ratio=100,
            performer_code=DOCTOR,
        ),
        _line(
            encounter,
            records_pb2.CHARGE_LINE_KIND_DRUG,
            "40.17",
            "Paracetamol 500mg",
            started + timedelta(minutes=30),
            unit="viên",
            payment_group="4",
            quantity=str(1 + number % 20),
            hospital_unit_price=f"{1000 + number % 997}.{number % 1000:03d}",
            bid_info="100/QĐ-SYT;G1;N1;2024",
            insurance_payment_ratio=(100, 50, 30)[number % 3],
            drug=records_pb2.ChargeLineDrug(
                strength="500mg",
                route_code="1.01",
                dose="1 viên/lần x 3 lần/ngày",
                usage="Uống sau ăn",
                registration_number="VD-12345-10",
                dosage_form="Viên nén",
            ),
        ),
        _line(
            encounter,
            records_pb2.CHARGE_LINE_KIND_SUPPLY,
            "N03.01.010",
            "Bơm tiêm dùng một lần",
            started + timedelta(minutes=20),
            unit="cái",
            payment_group="10",
            quantity=f"{1 + number % 3}.5",
            hospital_unit_price="12000",
            insurance_unit_price=f"{9000 + number % 1000}.333",
            bid_info="101/QĐ-SYT;G2;N1;2024",
            service_payment_ratio=(100, 80)[number % 2],
            insurance_payment_ratio=100,
        ),
    ]
    return SyntheticVisit(patient, encounter, resources)


def synthetic_visits(
    encounters: int, per_patient: int, now: datetime | None = None
) -> Iterator[SyntheticVisit]:
    moment = now or utc_now()
    patient = identity_pb2.Patient()
    for number in range(encounters):
        if number % per_patient == 0:
            patient = _patient(number // per_patient)
        yield synthetic_visit(number, patient, moment)


def check_claim_totals(visit: SyntheticVisit) -> None:
    """Raise AssertionError unless each XML1 total of the visit's claim is the sum of its lines."""
    rows = claim_rows(visit.patient, visit.encounter, visit.resources, SYNTHETIC_DETAILS)
    summary = rows["XML1"][0]
    drugs, services = rows.get("XML2", []), rows.get("XML3", [])

    def total(line_rows: list[dict[str, str]], name: str) -> Decimal:
        return sum((Decimal(row[name]) for row in line_rows), Decimal(0))

    expected = {name: total([*drugs, *services], line) for name, line in SUMMED}
    expected["T_THUOC"] = total(drugs, "THANH_TIEN_BV")
    expected["T_VTYT"] = total([row for row in services if row["MA_VAT_TU"]], "THANH_TIEN_BV")
    for name, value in expected.items():
        if Decimal(summary[name]) != value:
            raise AssertionError(f"{name} of a synthetic claim is not the sum of its lines")


def encounter_backlog(
    encounters: int,
    partitions: int,
    per_patient: int,
    each_visit: Callable[[SyntheticVisit], None] | None = None,
) -> list[Delivery]:
    """Pending FHIR transaction deliveries of ``encounters`` finished visits, in feed order, their
    Bundles built by intake's own function (emr_fhir.resources.transaction_bundle) from the encounter
    alone (the bench measures the same payload size whatever the lines); ``each_visit`` sees every
    visit, e.g. to check its claim."""
    now = utc_now()
    deliveries = []
    for number, visit in enumerate(synthetic_visits(encounters, per_patient, now)):
        if each_visit is not None:
            each_visit(visit)
        bundle = transaction_bundle(visit.patient, visit.encounter, [])
        payload = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        deliveries.append(
            new_delivery(
                DeliveryKind.FHIR_TRANSACTION,
                "Encounter",
                visit.encounter.encounter_id,
                1,
                visit.patient.patient_id,
                FACILITY_CODE,
                number + 1,
                partitions,
                payload,
                now,
                now,
            )
        )
    return deliveries
