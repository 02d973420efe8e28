"""Outgoing gRPC channels: every call gets a deadline, trace context and client metrics; calls
that end in UNAVAILABLE are retried with backoff. Every platform RPC is safe to retry: reads are,
and every mutating RPC is idempotent by request_id."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import trace

from emr_runtime import metrics
from emr_runtime.auth import AUTHORIZATION_KEY, ServiceToken
from emr_runtime.telemetry import inject_context
from emr_runtime.tls import TlsSettings

DEFAULT_DEADLINE_SECONDS = 5.0
_tracer = trace.get_tracer("emr_runtime.client")


def _retry_service_config(service_full_name: str) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": service_full_name}],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, default_deadline: float, token: ServiceToken | None) -> None:
        self._default_deadline = default_deadline
        self._token = token

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        raw_method = client_call_details.method
        full_method = raw_method.decode() if isinstance(raw_method, bytes) else str(raw_method)
        service, method = metrics.split_method(full_method)
        labels = ("unary", service, method)
        with _tracer.start_as_current_span(
            full_method.lstrip("/"),
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        ):
            outgoing = grpc.aio.Metadata(*(client_call_details.metadata or ()))
            for key, value in inject_context():
                outgoing.add(key, value)
            # The service's own identity, unless the call forwards its caller's token.
            if self._token is not None and not outgoing.get_all(AUTHORIZATION_KEY):
                outgoing.add(AUTHORIZATION_KEY, self._token.authorization())
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=client_call_details.timeout
                if client_call_details.timeout is not None
                else self._default_deadline,
                metadata=outgoing,
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            metrics.CLIENT_STARTED.labels(*labels).inc()
            started = time.perf_counter()
            call = await continuation(details, request)
            code = await call.code()
            metrics.CLIENT_HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            metrics.CLIENT_HANDLED.labels(*labels, metrics.code_label(code)).inc()
            return call


def create_channel(
    target: str,
    service_full_name: str,
    default_deadline: float = DEFAULT_DEADLINE_SECONDS,
    max_receive_message_bytes: int | None = None,
    tls: TlsSettings | None = None,
    token: ServiceToken | None = None,
) -> grpc.aio.Channel:
    """A channel to one platform service (``host:port``), with deadlines and retries applied;
    ``max_receive_message_bytes`` raises gRPC's 4 MiB default for calls with large answers. It is
    mutual TLS when ``tls`` (default: this process's ``TLS_*`` variables) names certificates;
    ``token`` is the calling service's own identity, presented on calls that carry no token."""
    options: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _retry_service_config(service_full_name)),
    ]
    if max_receive_message_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_receive_message_bytes))
    interceptors = [_ClientInterceptor(default_deadline, token)]
    tls = tls if tls is not None else TlsSettings()
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
