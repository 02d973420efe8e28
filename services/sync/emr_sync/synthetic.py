"""A synthetic backlog of finished encounters, queued as intake would queue them, for the sync bench
and tests. No real person's data: one made-up patient per ``per_patient`` encounters."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from emr.identity.v1 import identity_pb2
from emr.records.v1 import records_pb2

from emr_fhir.resources import transaction_bundle
from emr_runtime.clock import utc_now
from emr_sync.converters import timestamp
from emr_sync.domain import Delivery, DeliveryKind, new_delivery

FACILITY_CODE = "79001"


def encounter_backlog(encounters: int, partitions: int, per_patient: int) -> list[Delivery]:
    """Pending FHIR transaction deliveries of ``encounters`` finished visits, in feed order, their
    Bundles built by intake's own function (emr_fhir.resources.transaction_bundle)."""
    now = utc_now()
    deliveries = []
    patient = identity_pb2.Patient()
    for number in range(encounters):
        if number % per_patient == 0:
            index = number // per_patient
            patient = identity_pb2.Patient(
                patient_id=str(uuid.uuid4()),
                full_name=f"Bệnh Nhân Thử {index}",
                birth_date="1985-07-20",
                sex=identity_pb2.SEX_MALE,
                registering_facility_code=FACILITY_CODE,
                identifiers=[
                    identity_pb2.Identifier(
                        system=identity_pb2.IDENTIFIER_SYSTEM_CCCD, value=f"079085{index:06d}"
                    )
                ],
                version=1,
            )
        encounter = records_pb2.Encounter(
            encounter_id=str(uuid.uuid4()),
            patient_id=patient.patient_id,
            facility_code=FACILITY_CODE,
            encounter_class=records_pb2.ENCOUNTER_CLASS_OUTPATIENT,
            status=records_pb2.ENCOUNTER_STATUS_FINISHED,
            start_time=timestamp(now - timedelta(hours=1)),
            end_time=timestamp(now - timedelta(minutes=10)),
            reason="Khám sức khỏe",
            version=1,
        )
        bundle = transaction_bundle(patient, encounter, [])
        payload = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
        deliveries.append(
            new_delivery(
                DeliveryKind.FHIR_TRANSACTION,
                "Encounter",
                encounter.encounter_id,
                1,
                patient.patient_id,
                FACILITY_CODE,
                number + 1,
                partitions,
                payload,
                now,
                now,
            )
        )
    return deliveries
