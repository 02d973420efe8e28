"""Wiring of the sync service."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from emr.sync.v1 import sync_pb2_grpc

from emr_runtime.audit import AUDIT_SERVICE, SPOOL_INDEXES, AuditRecorder
from emr_runtime.auth import AuthSettings, ServiceToken
from emr_runtime.channels import create_channel
from emr_runtime.db import Database
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import PageTokens
from emr_runtime.patients import IDENTITY_SERVICE, PatientDirectory
from emr_runtime.policy import SYNC_SERVICE
from emr_runtime.server import ServiceApp, ServiceBinding
from emr_sync.claim_signing import ClaimSigner
from emr_sync.clients import RECORDS_SERVICE, IdentityFeed, NationalClient, NationalCredentials, RecordsFeed
from emr_sync.facility_claims import facility_claim_codes
from emr_sync.repository import INDEXES, SyncRepository
from emr_sync.service import PipelineConfig, SyncService
from emr_sync.servicer import SERVICE_NAME, NationalSyncServicer
from emr_sync.settings import SyncSettings


def pipeline_config(settings: SyncSettings) -> PipelineConfig:
    return PipelineConfig(
        owner=settings.replica_id or f"{socket.gethostname()}:{os.getpid()}",
        batch_size=settings.batch_size,
        partitions=settings.partitions,
        partitions_per_round=min(settings.partitions_per_round, settings.partitions),
        lease=timedelta(seconds=settings.lease_seconds),
        concurrency=settings.concurrency,
        deliveries_per_round=settings.deliveries_per_round,
        first_retry_delay=timedelta(seconds=settings.first_retry_delay_seconds),
        max_retry_delay=timedelta(seconds=settings.max_retry_delay_seconds),
        circuit_failure_threshold=settings.circuit_failure_threshold,
        circuit_open=timedelta(seconds=settings.circuit_open_seconds),
        circuit_max_open=timedelta(seconds=settings.circuit_max_open_seconds),
        facility_claim_codes=facility_claim_codes(settings.facility_claim_codes),
    )


async def build(settings: SyncSettings, db: Database) -> ServiceApp:
    crypt = FieldCrypt.from_settings(settings)  # first: bad keys stop the start with a clear error
    # As early: a facility's missing or mismatched key, or an unusable credentials file, stops the start.
    signer = ClaimSigner.from_directory(settings.facility_signing_dir, settings.facility_signing_generate)
    credentials = NationalCredentials.from_settings(
        settings.national_credentials_file,
        settings.national_client_id,
        settings.national_client_secret,
        settings.national_shared_client_fallback,
    )
    token = ServiceToken.from_settings(AuthSettings(), "sync", role=SYNC_SERVICE)
    records_channel = create_channel(settings.records_target, RECORDS_SERVICE, token=token)
    identity_channel = create_channel(settings.identity_target, IDENTITY_SERVICE, token=token)
    # Sync's RPCs touch no patient's data; its recorder audits the calls the access policy denies.
    audit_channel = create_channel(settings.audit_target, AUDIT_SERVICE, token=token)
    recorder = AuditRecorder(audit_channel, db, source_service="sync")
    await recorder.open()
    national = NationalClient(
        settings.national_url,
        settings.http_timeout_seconds,
        credentials,
        settings.national_token_path,
        timedelta(seconds=settings.default_retry_after_seconds),
        settings.concurrency,
    )
    service = SyncService(
        SyncRepository(db, crypt),
        RecordsFeed(records_channel),
        IdentityFeed(identity_channel),
        PatientDirectory(identity_channel, "sync", "NATIONAL_REPORTING"),
        national,
        pipeline_config(settings),
        PageTokens(crypt.derived_key(page_token_purpose("sync"))),
        crypt.derived_key(REQUEST_FINGERPRINT),
        signer,
    )

    async def run_pipeline() -> None:
        await service.run(settings.poll_interval_seconds)

    async def report_backlog() -> None:
        await service.report_backlog(settings.backlog_metrics_interval_seconds)

    return ServiceApp(
        bindings=[
            ServiceBinding(
                SERVICE_NAME,
                NationalSyncServicer(service),
                sync_pb2_grpc.add_NationalSyncServiceServicer_to_server,
            )
        ],
        indexes=(*INDEXES, *SPOOL_INDEXES),
        audit_sink=recorder,
        background=[run_pipeline, report_backlog, recorder.replay_forever],
        on_stop=[records_channel.close, identity_channel.close, audit_channel.close, national.close],
    )
