"""What an insurance claim needs, through the real records service: a 4-day inpatient stay with two
cards and a transfer out, its drug, service, bed and supply lines, lab results and progress notes,
stored and read back field for field, versioned on update; bad input refused naming the field with
nothing written; national codes checked against the code lists in force on the visit's date, with a
hospital's own lists taken from a directory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from emr.records.v1 import records_pb2, records_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from emr_devstack.stack import Stack
from emr_devstack.tokens import caller_metadata

DOCTOR = caller_metadata("dr-synthetic-02", "79001", "TREATMENT")
VIETNAM = timezone(timedelta(hours=7))


def at(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.replace(microsecond=0))
    return stamp


def day(moment: datetime) -> date:
    return moment.astimezone(VIETNAM).date()


def stay_request(
    patient_id: str, facility: str, start: datetime, end: datetime
) -> records_pb2.CreateEncounterRequest:
    """A 4-day inpatient stay whose card changed on its third day, ending in a transfer."""
    return records_pb2.CreateEncounterRequest(
        request_id=str(uuid.uuid4()),
        patient_id=patient_id,
        facility_code=facility,
        encounter_class=records_pb2.ENCOUNTER_CLASS_INPATIENT,
        status=records_pb2.ENCOUNTER_STATUS_FINISHED,
        start_time=at(start),
        end_time=at(end),
        reason="Sốt cao, ho khạc đờm",
        practitioner_id="prac-synthetic-01",
        insurance_cards=[
            records_pb2.InsuranceCard(
                card_number="DN4790123456789",
                registered_facility_code="79001",
                valid_from="2024-01-01",
                valid_to=(day(start) + timedelta(days=1)).isoformat(),
            ),
            records_pb2.InsuranceCard(
                card_number="DN4790123456790",
                registered_facility_code="79001",
                valid_from=(day(start) + timedelta(days=2)).isoformat(),
            ),
        ],
        visit_type=records_pb2.VISIT_TYPE_INPATIENT,
        admission=records_pb2.EncounterAdmission(
            reason="Sốt cao 3 ngày",
            admission_diagnosis="Viêm phổi",
            inpatient_admission_time=at(start + timedelta(hours=1)),
            referred_from_facility_code="79002",
            referral_paper_number="CT-2026-0042",
            inpatient_reason="Cần điều trị kháng sinh tĩnh mạch",
            inpatient_reason_code="1",
            visit_subject_code="1.3",
        ),
        discharge=records_pb2.EncounterDischarge(
            discharge_diagnosis="Viêm phổi nặng, chuyển tuyến",
            outcome=records_pb2.TREATMENT_OUTCOME_WORSENED,
            kind=records_pb2.DISCHARGE_KIND_TRANSFERRED,
            referred_to_facility_code="01001",
            follow_up_date=(day(end) + timedelta(days=7)).isoformat(),
        ),
        departments=[
            records_pb2.EncounterDepartment(department_code="K02", start_time=at(start)),
            records_pb2.EncounterDepartment(department_code="K50", start_time=at(start + timedelta(days=1))),
        ],
        weight_kg="58.5",
        medical_record_number="HSBA-SYN-0001",
    )


def charge_lines(
    patient_id: str, facility: str, encounter_id: str, start: datetime
) -> list[records_pb2.ClinicalResource]:
    common: dict[str, Any] = {
        "patient_id": patient_id,
        "facility_code": facility,
        "encounter_id": encounter_id,
        "status": records_pb2.CHARGE_LINE_STATUS_ACTIVE,
        "scope": "1",
        "department_code": "K50",
        "ordering_practitioner_code": "BS-SYN-01",
        "insurance_payment_ratio": 100,
        "service_payment_ratio": 100,
    }
    drug = records_pb2.ChargeLine(
        **common,
        kind=records_pb2.CHARGE_LINE_KIND_DRUG,
        code="40.17",
        name="Paracetamol",
        unit="viên",
        payment_group="4",
        quantity="12",
        hospital_unit_price="1234.567",
        insurance_unit_price="1234.567",
        bid_info="G1;N4;2026;01",
        performer_code="DD-SYN-01",
        order_time=at(start + timedelta(hours=2)),
        execution_time=at(start + timedelta(hours=3)),
        drug=records_pb2.ChargeLineDrug(
            strength="500mg",
            route_code="1.01",
            dose="1 viên/lần, 3 lần/ngày",
            usage="Uống sau ăn",
            registration_number="VD-00000-00",
            dosage_form="Viên nén",
        ),
    )
    service = records_pb2.ChargeLine(
        **common,
        kind=records_pb2.CHARGE_LINE_KIND_SERVICE,
        code="18.0001.0001",
        name="Chụp X-quang ngực thẳng",
        unit="lần",
        payment_group="2",
        quantity="1",
        hospital_unit_price="65400",
        insurance_unit_price="65400",
        performer_code="BS-SYN-02",
        order_time=at(start + timedelta(hours=2)),
        execution_time=at(start + timedelta(hours=2, minutes=30)),
        result_time=at(start + timedelta(hours=3)),
        service=records_pb2.ChargeLineService(diagnosis_codes=["J18.9"]),
    )
    bed = records_pb2.ChargeLine(
        **common,
        kind=records_pb2.CHARGE_LINE_KIND_SERVICE,
        code="K50.1906",
        name="Ngày giường bệnh Nội khoa loại 1",
        unit="ngày",
        payment_group="15",
        quantity="3.5",
        hospital_unit_price="245000",
        insurance_unit_price="245000",
        order_time=at(start + timedelta(hours=1)),
        service=records_pb2.ChargeLineService(bed_code="H012", diagnosis_codes=["J18.9"]),
    )
    supply = records_pb2.ChargeLine(
        **common,
        kind=records_pb2.CHARGE_LINE_KIND_SUPPLY,
        code="N03.05.070",
        name="Bơm tiêm nhựa 5ml",
        unit="cái",
        payment_group="10",
        quantity="4",
        hospital_unit_price="1050.5",
        insurance_unit_price="1050.5",
        bid_info="G1;2026;07",
        order_time=at(start + timedelta(hours=2)),
    )
    return [records_pb2.ClinicalResource(charge_line=line) for line in (drug, service, bed, supply)]


def lab_results(
    patient_id: str, facility: str, encounter_id: str, start: datetime
) -> list[records_pb2.ClinicalResource]:
    common: dict[str, Any] = {
        "patient_id": patient_id,
        "facility_code": facility,
        "encounter_id": encounter_id,
        "status": records_pb2.OBSERVATION_STATUS_FINAL,
        "effective_time": at(start + timedelta(hours=4)),
        "service_code": "22.0120.1370",
        "reading_practitioner_code": "BS-SYN-03",
    }
    return [
        records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                **common,
                loinc_code="718-7",
                value_quantity=records_pb2.Quantity(value=13.1, unit="g/dL"),
                index_code="HGB",
                index_name="Huyết sắc tố",
                conclusion="Bình thường",
            )
        ),
        records_pb2.ClinicalResource(
            observation=records_pb2.Observation(
                **common,
                loinc_code="6690-2",
                value_quantity=records_pb2.Quantity(value=15.2, unit="10*3/uL"),
                interpretation="H",
                index_code="WBC",
                index_name="Số lượng bạch cầu",
                description="Tăng",
                conclusion="Tăng bạch cầu",
            )
        ),
    ]


def progress_note(
    patient_id: str, facility: str, encounter_id: str, start: datetime
) -> records_pb2.ClinicalResource:
    return records_pb2.ClinicalResource(
        progress_note=records_pb2.ProgressNote(
            patient_id=patient_id,
            facility_code=facility,
            encounter_id=encounter_id,
            status=records_pb2.PROGRESS_NOTE_STATUS_CURRENT,
            clinical_course="Sốt 39 độ, ran nổ đáy phổi phải",
            disease_stage="Tiến triển",
            consultation="Hội chẩn khoa: chuyển tuyến trên",
            note_time=at(start + timedelta(days=3)),
            performer_code="BS-SYN-01",
        )
    )


def without_platform_fields(resource: records_pb2.ClinicalResource) -> records_pb2.ClinicalResource:
    """The resource as a client sends it: without id, version and times the platform assigns."""
    copy = records_pb2.ClinicalResource()
    copy.CopyFrom(resource)
    inner = getattr(copy, str(copy.WhichOneof("resource")))
    for name in ("version", "create_time", "update_time"):
        inner.ClearField(name)
    inner.ClearField(inner.DESCRIPTOR.fields_by_number[1].name)
    return copy


async def test_an_inpatient_stay_with_everything_a_claim_needs_is_stored_read_back_and_versioned(
    clinical: Any, records: Any, facility_code: str
) -> None:
    patient_id = await clinical.patient(facility_code)
    end = datetime.now(UTC) - timedelta(hours=2)
    start = end - timedelta(days=4)
    request = stay_request(patient_id, facility_code, start, end)
    encounter = (await records.CreateEncounter(request, metadata=DOCTOR)).encounter
    for name in (
        "insurance_cards",
        "visit_type",
        "admission",
        "discharge",
        "departments",
        "weight_kg",
        "medical_record_number",
    ):
        assert getattr(encounter, name) == getattr(request, name), name
    read = await records.GetEncounter(records_pb2.GetEncounterRequest(encounter_id=encounter.encounter_id))
    assert read.encounter == encounter

    sent = [
        *charge_lines(patient_id, facility_code, encounter.encounter_id, start),
        *lab_results(patient_id, facility_code, encounter.encounter_id, start),
        progress_note(patient_id, facility_code, encounter.encounter_id, start),
    ]
    created = [await clinical.create(resource) for resource in sent]
    kinds = {
        "charge_line": records_pb2.RESOURCE_TYPE_CHARGE_LINE,
        "observation": records_pb2.RESOURCE_TYPE_OBSERVATION,
        "progress_note": records_pb2.RESOURCE_TYPE_PROGRESS_NOTE,
    }
    for given, stored in zip(sent, created, strict=True):
        kind = str(stored.WhichOneof("resource"))
        inner = getattr(stored, kind)
        assert inner.version == 1
        assert without_platform_fields(stored) == given  # every field as sent
        got = await records.GetResource(
            records_pb2.GetResourceRequest(
                resource_type=kinds[kind],
                resource_id=getattr(inner, inner.DESCRIPTOR.fields_by_number[1].name),
            )
        )
        assert got.resource == stored
    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=encounter.encounter_id)
    )
    assert sorted(r.SerializeToString(deterministic=True) for r in bundle.resources) == sorted(
        r.SerializeToString(deterministic=True) for r in created
    )

    # A corrected quantity is a new version; the first stays in the history.
    drug = created[0]
    corrected = records_pb2.ClinicalResource()
    corrected.CopyFrom(drug)
    corrected.charge_line.quantity = "10.5"
    updated = (
        await records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()), resource=corrected, expected_version=1
            ),
            metadata=DOCTOR,
        )
    ).resource
    assert (updated.charge_line.version, updated.charge_line.quantity) == (2, "10.5")
    history = await records.GetResourceHistory(
        records_pb2.GetResourceHistoryRequest(
            resource_type=records_pb2.RESOURCE_TYPE_CHARGE_LINE, resource_id=drug.charge_line.charge_line_id
        )
    )
    assert [v.resource for v in history.versions] == [drug, updated]

    # The visit facts are versioned the same way: the follow-up day moved.
    changed = records_pb2.ClinicalResource(encounter=encounter)
    changed.encounter.discharge.follow_up_date = (day(end) + timedelta(days=14)).isoformat()
    moved = (
        await records.UpdateResource(
            records_pb2.UpdateResourceRequest(
                request_id=str(uuid.uuid4()), resource=changed, expected_version=1
            ),
            metadata=DOCTOR,
        )
    ).resource.encounter
    assert moved.version == 2
    assert moved.discharge.follow_up_date == changed.encounter.discharge.follow_up_date
    assert moved.insurance_cards == encounter.insurance_cards

    # Charge lines and progress notes have no FHIR form yet: the export leaves them out, whole.
    export = await records.ExportPatient(
        records_pb2.ExportPatientRequest(patient_id=patient_id), metadata=DOCTOR
    )
    assert export.resource_count == 1 + 1 + 2  # the patient, the encounter, the lab results


async def encounter_bundle_ids(records: Any, encounter_id: str) -> list[bytes]:
    bundle = await records.GetEncounterBundle(
        records_pb2.GetEncounterBundleRequest(encounter_id=encounter_id)
    )
    return sorted(r.SerializeToString(deterministic=True) for r in bundle.resources)


def broken_encounters() -> list[tuple[Callable[[records_pb2.CreateEncounterRequest], None], str]]:
    def card_number(r: records_pb2.CreateEncounterRequest) -> None:
        r.insurance_cards[1].card_number = "DN47901234"

    def no_card_on_first_day(r: records_pb2.CreateEncounterRequest) -> None:
        del r.insurance_cards[0]

    def visit_type(r: records_pb2.CreateEncounterRequest) -> None:
        r.visit_type = 11  # type: ignore[assignment]

    def outcome(r: records_pb2.CreateEncounterRequest) -> None:
        r.discharge.outcome = 9  # type: ignore[assignment]

    def transfer_without_facility(r: records_pb2.CreateEncounterRequest) -> None:
        r.discharge.referred_to_facility_code = ""

    def department(r: records_pb2.CreateEncounterRequest) -> None:
        r.departments[1].department_code = "K77"

    def weight(r: records_pb2.CreateEncounterRequest) -> None:
        r.weight_kg = "58,5"

    def admitted_before_arrival(r: records_pb2.CreateEncounterRequest) -> None:
        r.admission.inpatient_admission_time.seconds = r.start_time.seconds - 60

    return [
        (card_number, "insurance_cards[1].card_number"),
        (no_card_on_first_day, "insurance_cards"),
        (visit_type, "visit_type"),
        (outcome, "discharge.outcome"),
        (transfer_without_facility, "discharge.referred_to_facility_code"),
        (department, "departments[1].department_code"),
        (weight, "weight_kg"),
        (admitted_before_arrival, "admission.inpatient_admission_time"),
    ]


async def test_each_bad_visit_fact_is_refused_naming_the_field(
    clinical: Any, records: Any, facility_code: str, bad_fields: Any
) -> None:
    patient_id = await clinical.patient(facility_code)
    end = datetime.now(UTC) - timedelta(hours=2)
    start = end - timedelta(days=4)
    for breaks, field in broken_encounters():
        request = stay_request(patient_id, facility_code, start, end)
        breaks(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await records.CreateEncounter(request, metadata=DOCTOR)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert bad_fields(caught.value) == [field]
    listed = await records.ListEncounters(records_pb2.ListEncountersRequest(patient_id=patient_id))
    assert list(listed.encounters) == []  # nothing was written


async def test_each_bad_charge_line_is_refused_naming_the_field_and_nothing_is_written(
    clinical: Any, records: Any, facility_code: str, bad_fields: Any
) -> None:
    patient_id = await clinical.patient(facility_code)
    end = datetime.now(UTC) - timedelta(hours=2)
    start = end - timedelta(days=4)
    encounter_id = (
        await records.CreateEncounter(stay_request(patient_id, facility_code, start, end), metadata=DOCTOR)
    ).encounter.encounter_id
    path = "resource.charge_line"
    cases: list[tuple[int, dict[str, Any], str]] = [
        (0, {"quantity": "0"}, "quantity"),
        (0, {"quantity": "1.5e1"}, "quantity"),
        (0, {"hospital_unit_price": "-1"}, "hospital_unit_price"),
        (0, {"hospital_unit_price": "1234.5678"}, "hospital_unit_price"),
        (0, {"payment_group": "99"}, "payment_group"),
        (0, {"scope": "9"}, "scope"),
        (0, {"department_code": "K77"}, "department_code"),
        (0, {"code": "x" * 256}, "code"),
        (0, {"bid_info": "x" * 51}, "bid_info"),
        (0, {"insurance_payment_ratio": 120}, "insurance_payment_ratio"),
        (0, {"execution_time": at(start)}, "execution_time"),
        (0, {"encounter_id": ""}, "encounter_id"),
        (1, {"result_time": at(start + timedelta(hours=2, minutes=10))}, "result_time"),
        (1, {"code": "x" * 51}, "code"),
        (3, {"bid_info": "x" * 26}, "bid_info"),
    ]
    before = await encounter_bundle_ids(records, encounter_id)
    for index, changes, field in cases:
        line = charge_lines(patient_id, facility_code, encounter_id, start)[index]
        for name, value in changes.items():
            if isinstance(value, Timestamp):
                getattr(line.charge_line, name).CopyFrom(value)
            else:
                setattr(line.charge_line, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clinical.create(line)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert bad_fields(caught.value) == [f"{path}.{field}"]
    drug = charge_lines(patient_id, facility_code, encounter_id, start)[0]
    drug.charge_line.drug.route_code = "9.99"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clinical.create(drug)
    assert bad_fields(caught.value) == [f"{path}.drug.route_code"]
    assert await encounter_bundle_ids(records, encounter_id) == before  # nothing was written


@pytest.fixture
async def records_with_hospital_lists(
    stack: Stack, service_instance: Any, tmp_path: Path
) -> AsyncIterator[records_pb2_grpc.ClinicalRecordsServiceStub]:
    """A records replica whose department list is the hospital's: K99 closed at the end of 2023."""
    lists = tmp_path / "codelists"
    lists.mkdir()
    (lists / "departments.csv").write_text(
        "# Source: a synthetic hospital list for tests\n"
        "code,name,valid_from,valid_to\n"
        "K50,Khoa Nội hô hấp,2017-09-20,\n"
        "K99,Khoa đã giải thể,2017-09-20,2023-12-31\n",
        encoding="utf-8",
    )
    replica = service_instance("records", {"RECORDS_CODE_LISTS_DIR": str(lists)})
    channel = stack.dev_channel(replica.target)
    yield records_pb2_grpc.ClinicalRecordsServiceStub(channel)
    await channel.close()


async def test_a_code_in_force_only_before_a_date_is_accepted_for_an_old_visit_and_refused_for_a_new_one(
    clinical: Any, records_with_hospital_lists: Any, facility_code: str, bad_fields: Any
) -> None:
    records = records_with_hospital_lists
    patient_id = await clinical.patient(facility_code)

    def visit(start: datetime) -> records_pb2.CreateEncounterRequest:
        request = stay_request(patient_id, facility_code, start, start + timedelta(days=4))
        request.insurance_cards[0].valid_from = "2023-01-01"
        request.departments[1].department_code = "K99"
        del request.departments[0]  # K02 is not in the hospital's list
        return request

    # 2023-12-31 in Vietnam (16:00 UTC is 23:00 there): the department still existed.
    old = await records.CreateEncounter(visit(datetime(2023, 12, 27, 16, 0, tzinfo=UTC)), metadata=DOCTOR)
    assert [d.department_code for d in old.encounter.departments] == ["K99"]
    line = charge_lines(
        patient_id, facility_code, old.encounter.encounter_id, datetime(2023, 12, 27, tzinfo=UTC)
    )[1]
    line.charge_line.department_code = "K99"
    stored = (
        await records.CreateResource(
            records_pb2.CreateResourceRequest(request_id=str(uuid.uuid4()), resource=line), metadata=DOCTOR
        )
    ).resource
    assert stored.charge_line.department_code == "K99"

    end = datetime.now(UTC) - timedelta(hours=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await records.CreateEncounter(visit(end - timedelta(days=4)), metadata=DOCTOR)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation_descriptions(caught.value) == {
        "departments[0].department_code": f"code 'K99' of the departments list is not in force on {day(end - timedelta(days=4))}"
    }

    # The shipped list (the platform's own replica) has no K99 at all.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clinical.records.CreateEncounter(
            visit(datetime(2023, 12, 27, 16, 0, tzinfo=UTC)), metadata=DOCTOR
        )
    assert violation_descriptions(caught.value) == {
        "departments[0].department_code": "not a code of the departments list"
    }


def violation_descriptions(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.update({v.field: v.description for v in bad_request.field_violations})
    return found
