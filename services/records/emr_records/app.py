"""Wiring of the records service."""

from __future__ import annotations

from datetime import timedelta

from emr.records.v1 import records_pb2_grpc, retention_pb2_grpc

from emr_claims.codelists import load_code_lists
from emr_records.repository import COLLECTIONS, INDEXES, ChangeFeedRepository, ResourceRepository
from emr_records.retention_repository import RETENTION_COLLECTIONS, RetentionRepository
from emr_records.retention_service import RetentionService
from emr_records.retention_servicer import (
    RETENTION_AUDIT_RULES,
    RETENTION_SERVICE_NAME,
    RecordRetentionServicer,
)
from emr_records.service import RecordsService
from emr_records.servicer import AUDIT_RULES, SERVICE_NAME, ClinicalRecordsServicer
from emr_records.settings import RecordsSettings
from emr_runtime.audit import AUDIT_SERVICE, SPOOL_INDEXES, AuditRecorder
from emr_runtime.auth import AuthSettings, ServiceToken
from emr_runtime.channels import create_channel
from emr_runtime.db import Database, create_collections
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import PageTokens
from emr_runtime.patients import IDENTITY_SERVICE, PatientDirectory
from emr_runtime.server import ServiceApp, ServiceBinding


async def build(settings: RecordsSettings, db: Database) -> ServiceApp:
    crypt = FieldCrypt.from_settings(settings)  # first: bad keys stop the start with a clear error
    code_lists = load_code_lists(settings.code_lists_dir)  # a bad list stops the start too
    token = ServiceToken.from_settings(AuthSettings(), "records")
    identity_channel = create_channel(settings.identity_target, IDENTITY_SERVICE, token=token)
    audit_channel = create_channel(settings.audit_target, AUDIT_SERVICE, token=token)
    recorder = AuditRecorder(audit_channel, db, source_service="records")
    await recorder.open()
    await create_collections(db, (*COLLECTIONS, *RETENTION_COLLECTIONS))
    resources = ResourceRepository(db, crypt)
    patients = PatientDirectory(
        identity_channel,
        "records",
        "PATIENT_REFERENCE_CHECK",
        deadline_seconds=3.0,
        access_cache_seconds=settings.access_cache_seconds,
    )
    retention = RetentionService(
        resources,
        RetentionRepository(db),
        patients,
        verify_patients=settings.verify_patients,
        audit=recorder if settings.audit_enabled else None,
    )
    service = RecordsService(
        resources,
        ChangeFeedRepository(db),
        patients,
        timedelta(seconds=settings.change_settle_seconds),
        PageTokens(crypt.derived_key(page_token_purpose("records"))),
        code_lists,
        verify_patients=settings.verify_patients,
        retention=retention,
    )
    return ServiceApp(
        bindings=[
            ServiceBinding(
                SERVICE_NAME,
                ClinicalRecordsServicer(service, crypt.derived_key(REQUEST_FINGERPRINT)),
                records_pb2_grpc.add_ClinicalRecordsServiceServicer_to_server,
            ),
            ServiceBinding(
                RETENTION_SERVICE_NAME,
                RecordRetentionServicer(retention),
                retention_pb2_grpc.add_RecordRetentionServiceServicer_to_server,
            ),
        ],
        indexes=(*INDEXES, *SPOOL_INDEXES),
        audit_sink=recorder if settings.audit_enabled else None,
        audit_rules={**AUDIT_RULES, **RETENTION_AUDIT_RULES},
        background=[recorder.replay_forever, service.sweep_outbox],
        on_stop=[identity_channel.close, audit_channel.close],
        visibility=service,
    )
