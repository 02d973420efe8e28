"""Wiring of the sync service."""

from __future__ import annotations

from datetime import timedelta

from emr.sync.v1 import sync_pb2_grpc

from emr_runtime.channels import create_channel
from emr_runtime.db import Database
from emr_runtime.server import ServiceApp, ServiceBinding
from emr_sync.clients import RECORDS_SERVICE, NationalClient, RecordsFeed
from emr_sync.repository import INDEXES, SyncRepository
from emr_sync.service import SyncService
from emr_sync.servicer import SERVICE_NAME, NationalSyncServicer
from emr_sync.settings import SyncSettings


async def build(settings: SyncSettings, db: Database) -> ServiceApp:
    records_channel = create_channel(settings.records_target, RECORDS_SERVICE)
    national = NationalClient(settings.national_url, settings.http_timeout_seconds)
    service = SyncService(
        SyncRepository(db),
        RecordsFeed(records_channel),
        national,
        settings.batch_size,
        timedelta(seconds=settings.max_retry_delay_seconds),
    )

    async def run_pipeline() -> None:
        await service.run(settings.poll_interval_seconds)

    return ServiceApp(
        bindings=[
            ServiceBinding(
                SERVICE_NAME,
                NationalSyncServicer(service),
                sync_pb2_grpc.add_NationalSyncServiceServicer_to_server,
            )
        ],
        indexes=INDEXES,
        background=[run_pipeline],
        on_stop=[records_channel.close, national.close],
    )
