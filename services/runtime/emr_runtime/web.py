"""The HTTP components (FastAPI gateway, national emulator) are built here, so that they trace and
count the same way: a server span per request continuing the caller's W3C trace, and RED metrics,
named and labelled by route template only. FastAPI's and Starlette's own telemetry is switched
off: it records the concrete path and query (which carry patient ids) and exception messages."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram

from emr_runtime.metrics import LATENCY_BUCKETS

_tracer = trace.get_tracer("emr_runtime.http")
UNTRACED_PATHS = frozenset({"/healthz", "/metrics"})
HTTP_REQUESTS = Counter(
    "http_server_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ("method", "route", "code"),
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Time to answer HTTP requests, by method and route template.",
    ("method", "route"),
    buckets=LATENCY_BUCKETS,
)


_NATIVE_TELEMETRY_OFF: Any = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def create_web_app(
    title: str, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None
) -> FastAPI:
    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan, telemetry=_NATIVE_TELEMETRY_OFF)
    _add_tracing_and_metrics(app)
    return app


def _add_tracing_and_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def trace_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in UNTRACED_PATHS:
            return await call_next(request)
        parent = propagate.extract(dict(request.headers))
        started = time.perf_counter()
        with _tracer.start_as_current_span(
            f"HTTP {request.method}", context=parent, kind=trace.SpanKind.SERVER, record_exception=False
        ) as span:
            response = await call_next(request)
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            span.update_name(f"{request.method} {template}")
            span.set_attributes(
                {
                    "http.request.method": request.method,
                    "http.route": template,
                    "http.response.status_code": response.status_code,
                }
            )
            if response.status_code >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            HTTP_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
            HTTP_REQUEST_SECONDS.labels(request.method, template).observe(time.perf_counter() - started)
            return response
