"""Outgoing gRPC channels: every call gets a deadline, trace context and client metrics; calls
that end in UNAVAILABLE are retried with backoff. Every platform RPC is safe to retry: reads are,
and every mutating RPC is idempotent by request_id.

Outgoing metadata is checked before the call starts (``metadata_problem``): grpc.aio never ends a
call whose metadata its core refuses (a non-ASCII value, say): the call would wait for its status
forever, and hold its memory. Such a call fails at once with INTERNAL naming the key; and no call
waits for its status longer than its deadline and ``STATUS_GRACE_SECONDS``, whatever else goes wrong.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from opentelemetry import trace

from emr_runtime import metrics
from emr_runtime.auth import AUTHORIZATION_KEY, ServiceToken
from emr_runtime.telemetry import inject_context
from emr_runtime.tls import TlsSettings

DEFAULT_DEADLINE_SECONDS = 5.0
# A call has its status by its deadline (gRPC ends it then); past this much more, it never will.
STATUS_GRACE_SECONDS = 1.0
# What gRPC accepts (src/core/lib/surface/validate_metadata.cc): keys of lowercase letters, digits
# and -_. ; values of keys not ending in -bin printable ASCII (space to tilde).
_LEGAL_KEY = re.compile(r"[0-9a-z_.-]+")
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


def metadata_problem(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """What gRPC would refuse in outgoing ``metadata`` (naming the key, never the value), or None."""
    for key, value in metadata:
        if not _LEGAL_KEY.fullmatch(key):
            return "a metadata key is not lowercase letters, digits, '-', '_' or '.'"
        if key.endswith("-bin"):
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not (text.isascii() and text.isprintable()):
            return f"the value of metadata {key!r} is not printable ASCII"
    return None


def _local_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error of a call that the server never answered, as gRPC reports its own."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


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
            timeout = (
                client_call_details.timeout
                if client_call_details.timeout is not None
                else self._default_deadline
            )
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=timeout,
                metadata=outgoing,
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            metrics.CLIENT_STARTED.labels(*labels).inc()
            started = time.perf_counter()
            problem = metadata_problem(outgoing)
            if problem is not None:
                metrics.CLIENT_HANDLED.labels(*labels, metrics.code_label(grpc.StatusCode.INTERNAL)).inc()
                raise _local_error(grpc.StatusCode.INTERNAL, f"not sent: {problem}")
            call = await continuation(details, request)
            try:
                code = await asyncio.wait_for(call.code(), timeout + STATUS_GRACE_SECONDS)
            except TimeoutError:
                call.cancel()
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                metrics.CLIENT_HANDLED.labels(*labels, metrics.code_label(code)).inc()
                raise _local_error(code, "the call got no status by its deadline; cancelled") from None
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
        # A peer that was down (a restart, a rollout) is dialled again within 2 s, not after gRPC's
        # default back-off of up to 120 s, during which every call fails at once.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if max_receive_message_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_receive_message_bytes))
    interceptors = [_ClientInterceptor(default_deadline, token)]
    tls = tls if tls is not None else TlsSettings()
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.channel_credentials(), options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
