"""Wiring of the identity service: repository, use cases, servicer, audit."""

from __future__ import annotations

from datetime import timedelta

from emr.identity.v1 import identity_pb2_grpc, privacy_pb2_grpc

from emr_identity.privacy_repository import PrivacyRepository
from emr_identity.privacy_service import PrivacyService
from emr_identity.privacy_servicer import PRIVACY_AUDIT_RULES, PRIVACY_SERVICE_NAME, PrivacyRequestServicer
from emr_identity.repository import INDEXES, PatientChangeRepository, PersonRepository
from emr_identity.service import IdentityService
from emr_identity.servicer import AUDIT_RULES, SERVICE_NAME, PatientIdentityServicer
from emr_identity.settings import IdentitySettings
from emr_identity.sharing_repository import SharingRepository
from emr_identity.sharing_service import SharingService
from emr_runtime.audit import AUDIT_SERVICE, SPOOL_INDEXES, AuditRecorder
from emr_runtime.auth import AuthSettings, ServiceToken
from emr_runtime.channels import create_channel
from emr_runtime.db import Database
from emr_runtime.fieldcrypt import FieldCrypt
from emr_runtime.keys import REQUEST_FINGERPRINT, page_token_purpose
from emr_runtime.paging import PageTokens
from emr_runtime.server import ServiceApp, ServiceBinding


async def build(settings: IdentitySettings, db: Database) -> ServiceApp:
    crypt = FieldCrypt.from_settings(settings)  # first: bad keys stop the start with a clear error
    token = ServiceToken.from_settings(AuthSettings(), "identity")
    audit_channel = create_channel(settings.audit_target, AUDIT_SERVICE, token=token)
    recorder = AuditRecorder(audit_channel, db, source_service="identity")
    await recorder.open()
    persons = PersonRepository(db, crypt)
    await persons.create_collections()
    service = IdentityService(
        persons,
        PatientChangeRepository(db),
        timedelta(seconds=settings.change_settle_seconds),
        PageTokens(crypt.derived_key(page_token_purpose("identity"))),
    )
    sharing_repository = SharingRepository(db, crypt)
    await sharing_repository.create_collections()
    sharing = SharingService(
        service, persons, sharing_repository, timedelta(hours=settings.emergency_access_hours)
    )
    servicer = PatientIdentityServicer(service, sharing, crypt.derived_key(REQUEST_FINGERPRINT))
    privacy_repository = PrivacyRepository(db, crypt)
    await privacy_repository.create_collections()
    privacy = PrivacyService(service, persons, sharing, privacy_repository)
    sharing.sharing_stopped = privacy.sharing_stopped
    return ServiceApp(
        bindings=[
            ServiceBinding(
                SERVICE_NAME, servicer, identity_pb2_grpc.add_PatientIdentityServiceServicer_to_server
            ),
            ServiceBinding(
                PRIVACY_SERVICE_NAME,
                PrivacyRequestServicer(privacy, crypt.derived_key(REQUEST_FINGERPRINT)),
                privacy_pb2_grpc.add_PrivacyRequestServiceServicer_to_server,
            ),
        ],
        indexes=(*INDEXES, *SPOOL_INDEXES),
        audit_sink=recorder,
        audit_rules={**AUDIT_RULES, **PRIVACY_AUDIT_RULES},
        background=[recorder.replay_forever, service.watch_review_queue, privacy.watch_overdue],
        on_stop=[audit_channel.close],
        visibility=sharing,
    )
