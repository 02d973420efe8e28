"""Server interceptors shared by every service, outermost first: tracing, metrics, errors, audit,
access (emr_runtime.access).

Each interceptor wraps a call in an async context manager (``scope``); the base class applies it to
unary and server-streaming methods alike, so a new concern is one small class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from pymongo.errors import PyMongoError

from emr_runtime import metrics
from emr_runtime.db import is_transient
from emr_runtime.errors import (
    ConflictError,
    DataIntegrityError,
    DependencyUnavailableError,
    DomainError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    TooLargeError,
    UnauthenticatedError,
)
from emr_runtime.telemetry import current_trace_id, extract_context

log = logging.getLogger("emr.rpc")
_tracer = trace.get_tracer("emr_runtime.server")

HEALTH_SERVICE = "grpc.health.v1.Health"
_REFLECTION_PREFIX = "/grpc.reflection."
ERROR_DOMAIN = "emr.platform"


@dataclass
class Call:
    """One incoming call as the interceptors see it."""

    full_method: str
    request: Any
    context: grpc.aio.ServicerContext[Any, Any]
    streaming: bool
    response: Any = None
    service: str = field(init=False)
    method: str = field(init=False)

    def __post_init__(self) -> None:
        self.service, self.method = metrics.split_method(self.full_method)


class ScopedInterceptor(grpc.aio.ServerInterceptor):
    """Runs ``scope(call)`` around every unary-unary and unary-stream method it applies to."""

    def applies_to(self, full_method: str) -> bool:
        return not full_method.startswith(_REFLECTION_PREFIX)

    def scope(self, call: Call) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or not self.applies_to(full_method):
            return handler
        scope = self.scope
        unary_behavior = getattr(handler, "unary_unary", None)
        stream_behavior = getattr(handler, "unary_stream", None)
        if unary_behavior is not None:

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = Call(full_method, request, context, streaming=False)
                async with scope(call):
                    call.response = await unary_behavior(request, context)
                return call.response

            return handler._replace(unary_unary=unary_unary)  # type: ignore[attr-defined,no-any-return]
        if stream_behavior is not None:

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                call = Call(full_method, request, context, streaming=True)
                async with scope(call):
                    async for item in stream_behavior(request, context):
                        yield item

            return handler._replace(unary_stream=unary_stream)  # type: ignore[attr-defined,no-any-return]
        return handler


def _status_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class TracingInterceptor(ScopedInterceptor):
    """A server span per call, continuing the caller's W3C trace; health checks are not traced."""

    def applies_to(self, full_method: str) -> bool:
        return super().applies_to(full_method) and not full_method.startswith(f"/{HEALTH_SERVICE}/")

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        parent = extract_context(call.context.invocation_metadata())
        with _tracer.start_as_current_span(
            call.full_method.lstrip("/"),
            context=parent,  # type: ignore[arg-type]
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.method},
            record_exception=False,  # exception messages could carry request content
            set_status_on_exception=False,
        ) as span:
            error: BaseException | None = None
            try:
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = _status_code(call.context, error)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code not in (grpc.StatusCode.OK,):
                    span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))


class MetricsInterceptor(ScopedInterceptor):
    """go-grpc-prometheus server metrics: started, handled by code, handling seconds."""

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        grpc_type = "server_stream" if call.streaming else "unary"
        labels = (grpc_type, call.service, call.method)
        metrics.SERVER_STARTED.labels(*labels).inc()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.SERVER_HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - started)
            code = _status_code(call.context, error)
            metrics.SERVER_HANDLED.labels(*labels, metrics.code_label(code)).inc()


def status_for(error: DomainError) -> status_pb2.Status:
    """The google.rpc.Status (with details) that a domain error becomes. The one place for it."""
    detail = any_pb2.Any()
    if isinstance(error, InvalidArgumentError):
        code = code_pb2.INVALID_ARGUMENT
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    elif isinstance(error, NotFoundError):
        code = code_pb2.NOT_FOUND
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="NOT_FOUND",
                domain=ERROR_DOMAIN,
                metadata={"field": error.field, "resource_type": error.resource_type},
            )
        )
    elif isinstance(error, ConflictError):
        code = code_pb2.ABORTED
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="CONFLICT", domain=ERROR_DOMAIN, metadata={"field": error.field}
            )
        )
    elif isinstance(error, TooLargeError):
        code = code_pb2.RESOURCE_EXHAUSTED
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=f"at most {error.limit_bytes} bytes"
                    )
                ]
            )
        )
    elif isinstance(error, RateLimitedError):
        code = code_pb2.RESOURCE_EXHAUSTED
        delay_nanos = max(int(error.retry_after_seconds * 1e9), 1_000_000)
        detail.Pack(
            error_details_pb2.RetryInfo(
                retry_delay={"seconds": delay_nanos // 10**9, "nanos": delay_nanos % 10**9}
            )
        )
    elif isinstance(error, DataIntegrityError):
        code = code_pb2.DATA_LOSS
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="INTEGRITY_CHECK_FAILED",
                domain=ERROR_DOMAIN,
                metadata={"resource_type": error.resource_type},
            )
        )
    elif isinstance(error, UnauthenticatedError | PermissionDeniedError):
        unauthenticated = isinstance(error, UnauthenticatedError)
        code = code_pb2.UNAUTHENTICATED if unauthenticated else code_pb2.PERMISSION_DENIED
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason="UNAUTHENTICATED" if unauthenticated else "PERMISSION_DENIED", domain=ERROR_DOMAIN
            )
        )
    elif isinstance(error, DependencyUnavailableError):
        code = code_pb2.UNAVAILABLE
        detail.Pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 1}))
    else:
        code = code_pb2.FAILED_PRECONDITION
        detail.Pack(error_details_pb2.ErrorInfo(reason=type(error).__name__, domain=ERROR_DOMAIN))
    return status_pb2.Status(code=code, message=error.message, details=[detail])


def _translate(error: Exception) -> DomainError | None:
    """Errors of dependencies that are not bugs: an unreachable database or service."""
    if isinstance(error, DomainError):
        return error
    if isinstance(error, PyMongoError) and is_transient(error):
        return DependencyUnavailableError("database")
    if isinstance(error, grpc.aio.AioRpcError) and error.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # a callee's rate limit: retry later, never INTERNAL
    ):
        return DependencyUnavailableError("a platform service")
    return None


class ErrorInterceptor(ScopedInterceptor):
    """Maps domain errors to status codes with rich details; anything else becomes INTERNAL with a
    trace id to quote, its stack trace logged here and never sent to the caller."""

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            domain_error = _translate(exc)
            if domain_error is None:
                log.exception(
                    "unhandled error",
                    extra={"grpc_method": call.full_method, "error_type": type(exc).__name__},
                )
                message = f"internal error; quote trace id {current_trace_id() or 'n/a'}"
                await call.context.abort(grpc.StatusCode.INTERNAL, message)
                raise  # unreachable: abort raises; keeps type checkers aware
            else:
                if isinstance(exc, PyMongoError | grpc.aio.AioRpcError):
                    log.warning(
                        "dependency unavailable",
                        extra={"grpc_method": call.full_method, "error_type": type(exc).__name__},
                    )
                await call.context.abort_with_status(rpc_status.to_status(status_for(domain_error)))


@dataclass(frozen=True)
class AuditRule:
    """How a method touches patient data: the action and how to find the patient and resource.

    The extractors receive the request and the response (None when the call failed) and must
    return ids only.
    """

    action: int
    resource_type: str
    patient_id: Callable[[Any, Any], str]
    resource_id: Callable[[Any, Any], str] = lambda request, response: ""
    # emr.audit.v1.AuditEventSubtype (e.g. MERGE, EXPORT); 0 lets the audit service derive it from action.
    subtype: int = 0
    # Searches: the patients a successful call returned, one event each (every hit appears in that
    # patient's access report).
    patient_ids: Callable[[Any, Any], Sequence[str]] | None = None


class AuditSink:
    """What the audit interceptor needs: a way to record an audited call durably."""

    async def record_call(self, rule: AuditRule, call: Call, outcome: str) -> None:
        raise NotImplementedError


class AuditInterceptor(ScopedInterceptor):
    """Records every call of an audited method, success or failure, before the caller gets an answer."""

    def __init__(self, sink: AuditSink, rules: Mapping[str, AuditRule]) -> None:
        self._sink = sink
        self._rules = dict(rules)

    def applies_to(self, full_method: str) -> bool:
        return full_method in self._rules

    @asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        rule = self._rules[call.full_method]
        try:
            yield
        except DependencyUnavailableError:
            await self._sink.record_call(rule, call, "server_failure")
            raise
        except (DomainError, grpc.aio.AbortError):
            await self._sink.record_call(rule, call, "client_failure")
            raise
        except Exception:
            await self._sink.record_call(rule, call, "server_failure")
            raise
        await self._sink.record_call(rule, call, "success")
