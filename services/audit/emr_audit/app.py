"""Wiring of the audit service."""

from __future__ import annotations

from emr.audit.v1 import audit_pb2_grpc

from emr_audit.repository import INDEXES, AuditRepository
from emr_audit.service import AuditLog
from emr_audit.servicer import SERVICE_NAME, AuditServicer
from emr_audit.settings import AuditSettings
from emr_runtime.db import Database
from emr_runtime.server import ServiceApp, ServiceBinding


async def build(settings: AuditSettings, db: Database) -> ServiceApp:
    servicer = AuditServicer(AuditLog(AuditRepository(db)))
    return ServiceApp(
        bindings=[ServiceBinding(SERVICE_NAME, servicer, audit_pb2_grpc.add_AuditServiceServicer_to_server)],
        indexes=INDEXES,
    )
