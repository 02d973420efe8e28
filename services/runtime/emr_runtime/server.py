"""Server bootstrap shared by every gRPC service: a service's ``__main__`` calls ``run``.

It wires the interceptors, standard health (grpc.health.v1), reflection (API port only), the
MongoDB client and indexes, /metrics, tracing and JSON logs; on SIGTERM or SIGINT health turns
NOT_SERVING, in-flight calls get ``shutdown_grace_seconds`` to finish, background tasks stop, and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from emr_runtime.access import AccessInterceptor
from emr_runtime.auth import AuthSettings, TokenVerifier
from emr_runtime.authn import AuthenticationInterceptor
from emr_runtime.db import Database, IndexSpec, create_mongo_client, ensure_indexes
from emr_runtime.guard import GuardInterceptor, PeerRateLimitInterceptor, RateLimitInterceptor
from emr_runtime.interceptors import (
    AuditInterceptor,
    AuditRule,
    AuditSink,
    ErrorInterceptor,
    MetricsInterceptor,
    TracingInterceptor,
)
from emr_runtime.logs import configure_logging
from emr_runtime.metrics import start_metrics_server
from emr_runtime.settings import ServiceSettings
from emr_runtime.telemetry import configure_tracing
from emr_runtime.tls import TlsSettings
from emr_runtime.visibility import VisibilitySource

log = logging.getLogger("emr.server")


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to serve: its full name, servicer, and generated ``add_*_to_server``."""

    full_name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


@dataclass
class ServiceApp:
    """What a service contributes to the shared server."""

    bindings: Sequence[ServiceBinding]
    indexes: Sequence[IndexSpec] = ()
    audit_sink: AuditSink | None = None
    audit_rules: Mapping[str, AuditRule] = field(default_factory=dict)
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    on_stop: Sequence[Callable[[], Awaitable[None]]] = ()
    # Answers the access model's question: what a facility may see of a patient (identity, records).
    visibility: VisibilitySource | None = None


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
BuildApp = Callable[[SettingsT, Database], Awaitable[ServiceApp]]


def build_server(
    app: ServiceApp, settings: ServiceSettings, verifier: TokenVerifier | None = None
) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    """Metrics port 0 leaves out the server metrics interceptor: nothing reads them; ``verifier=None``
    (AUTH_ENABLED=false) leaves out authentication and the access policy; a rate of 0 leaves out
    that rate limit."""
    # Outermost first. Strangers are refused before anything costly: the per-peer rate limit and
    # authentication sit outside the guard, the audit interceptor and everything that reads data.
    interceptors: list[grpc.aio.ServerInterceptor] = [TracingInterceptor()]
    if settings.metrics_port != 0:
        interceptors.append(MetricsInterceptor())
    interceptors.append(ErrorInterceptor())
    if settings.peer_rate_limit_per_second > 0:
        interceptors.append(
            PeerRateLimitInterceptor(settings.peer_rate_limit_per_second, settings.peer_rate_limit_burst)
        )
    if verifier is not None:
        interceptors.append(AuthenticationInterceptor(verifier))
    interceptors.append(
        GuardInterceptor(settings.default_deadline_seconds, settings.stream_default_deadline_seconds)
    )
    if app.audit_sink is not None:
        interceptors.append(AuditInterceptor(app.audit_sink, app.audit_rules))
    if verifier is not None:
        # Inside audit: denials of audited methods are recorded there, with the verified caller.
        interceptors.append(AccessInterceptor(app.audit_rules, app.audit_sink, app.visibility))
    if settings.rate_limit_per_second > 0:
        # Innermost: the bucket is the verified client application's.
        interceptors.append(RateLimitInterceptor(settings.rate_limit_per_second, settings.rate_limit_burst))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ],
    )
    for binding in app.bindings:
        binding.add_to_server(binding.servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*(b.full_name for b in app.bindings), health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server, health_servicer


def _plaintext_health_server(
    health_servicer: health_aio.HealthServicer, settings: ServiceSettings
) -> grpc.aio.Server | None:
    """grpc.health.v1 alone on ``health_port`` without TLS: the kubelet's gRPC probe cannot present
    a client certificate. It answers what the main port's health answers, and nothing else: no API
    and no reflection (reflection is on the API port only, behind mutual TLS), so an unauthenticated
    port tells a stranger nothing about the services."""
    if settings.health_port == 0:
        return None
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4096)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"{settings.listen_host}:{settings.health_port}")
    return server


async def serve(service: str, settings: SettingsT, build: BuildApp[SettingsT]) -> None:
    tracer_provider = configure_tracing(service)
    mongo = create_mongo_client(settings.mongodb_uri, f"emr-{service}")
    db = mongo[settings.mongodb_database]
    app = await build(settings, db)
    await ensure_indexes(db, app.indexes)

    auth = AuthSettings()
    if not auth.enabled:
        log.warning("authentication is off (AUTH_ENABLED=false): every call is allowed")
    elif auth.dev_keys:
        log.warning("AUTH_DEV_KEYS=true: the published development key is trusted; never in production")
    verifier = TokenVerifier(auth) if auth.enabled else None
    server, health_servicer = build_server(app, settings, verifier)
    address = f"{settings.listen_host}:{settings.grpc_port}"
    tls = TlsSettings()
    if tls.enabled:
        port = server.add_secure_port(address, tls.server_credentials())
    else:
        log.warning("TLS_* not set: serving plaintext (development only)")
        port = server.add_insecure_port(address)
    health_server = _plaintext_health_server(health_servicer, settings)
    await server.start()
    if health_server is not None:
        await health_server.start()
    start_metrics_server(settings.listen_host, settings.metrics_port)
    tasks = [asyncio.create_task(job()) for job in app.background]
    for name in ("", *(b.full_name for b in app.bindings)):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "grpc_port": port,
            "tls": tls.enabled,
            "health_port": settings.health_port,
            "metrics_port": settings.metrics_port,
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace_seconds)
    if health_server is not None:
        await health_server.stop(None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for hook in app.on_stop:
        await hook()
    await mongo.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()
    log.info("stopped")


def run(service: str, settings: SettingsT, build: BuildApp[SettingsT]) -> None:
    """Runs a service until SIGTERM/SIGINT; returns normally (exit 0) after a graceful stop."""
    configure_logging(service, settings.log_level)
    asyncio.run(serve(service, settings, build))
