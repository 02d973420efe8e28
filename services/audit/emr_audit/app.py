"""Wiring of the audit service."""

from __future__ import annotations

from emr.audit.v1 import audit_pb2_grpc, breach_pb2_grpc

from emr_audit import converters
from emr_audit.breach_repository import COLLECTIONS as BREACH_COLLECTIONS
from emr_audit.breach_repository import BreachRepository
from emr_audit.breach_service import BreachWorkflow
from emr_audit.breach_servicer import BREACH_AUDIT_RULES, BREACH_SERVICE_NAME, BreachServicer
from emr_audit.repository import COLLECTIONS, INDEXES, AuditRepository
from emr_audit.service import AuditLog
from emr_audit.servicer import SERVICE_NAME, AuditServicer
from emr_audit.settings import AuditSettings
from emr_audit.signing import load_signer
from emr_runtime.audit import audit_event
from emr_runtime.db import Database, create_collections
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.interceptors import AuditRule, AuditSink, Call
from emr_runtime.keys import page_token_purpose
from emr_runtime.paging import PageTokens
from emr_runtime.server import ServiceApp, ServiceBinding

# The gauge of breach incidents near or past their 72-hour deadline moves by the hour: a minute is ample.
BREACH_DEADLINE_WATCH_SECONDS = 60.0


class OwnLogSink(AuditSink):
    """Audit's own denials (PERMISSION_DENIED) go straight into its own log."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def record_call(self, rule: AuditRule, call: Call, outcome: str) -> None:
        await self._log.append([converters.event_from_message(audit_event(rule, call, outcome, "audit"))])


async def build(settings: AuditSettings, db: Database) -> ServiceApp:
    crypt = FieldCrypt.from_settings(settings)  # first: bad keys stop the start with a clear error
    await create_collections(db, COLLECTIONS + BREACH_COLLECTIONS)
    log = AuditLog(AuditRepository(db), load_signer(settings.signing_key_file, settings.signing_key_generate))
    breaches = BreachWorkflow(
        BreachRepository(db, crypt), PageTokens(log.signer.derived_key(page_token_purpose("audit-breach")))
    )

    async def checkpoints() -> None:
        # Polled often enough that "every N events" is kept closely under load.
        poll = min(1.0, settings.checkpoint_interval_seconds / 2)
        await log.run_checkpoints(
            settings.checkpoint_every_events, settings.checkpoint_interval_seconds, poll
        )

    async def integrity_checks() -> None:
        await log.run_integrity_checks(settings.integrity_check_interval_seconds)

    async def breach_deadlines() -> None:
        await breaches.run_deadline_watch(BREACH_DEADLINE_WATCH_SECONDS)

    background = [checkpoints, breach_deadlines]
    if settings.integrity_check_interval_seconds:
        background.append(integrity_checks)
    return ServiceApp(
        bindings=[
            ServiceBinding(
                SERVICE_NAME, AuditServicer(log), audit_pb2_grpc.add_AuditServiceServicer_to_server
            ),
            ServiceBinding(
                BREACH_SERVICE_NAME,
                BreachServicer(breaches),
                breach_pb2_grpc.add_BreachServiceServicer_to_server,
            ),
        ],
        indexes=INDEXES,
        background=background,
        audit_sink=OwnLogSink(log),
        audit_rules=BREACH_AUDIT_RULES,
    )
