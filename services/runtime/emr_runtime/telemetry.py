"""OpenTelemetry tracing: a tracer provider per process, exporting over OTLP only when configured.

The standard ``OTEL_*`` variables apply (``OTEL_EXPORTER_OTLP_ENDPOINT`` turns export on,
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` sample, ``OTEL_SDK_DISABLED`` turns it all off).
Spans are still made without an endpoint, so that logs carry trace ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pymongo import monitoring

from emr_runtime.metrics import MONGODB_COMMAND_SECONDS

PLATFORM_NAMESPACE = "emr-platform"


def configure_tracing(service: str, version: str = "0.1.0") -> TracerProvider | None:
    """Installs the global tracer provider; returns it so that shutdown can flush it."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    resource = Resource.create(
        {
            "service.name": f"emr-{service}",
            "service.version": version,
            "service.namespace": PLATFORM_NAMESPACE,
        }
    )
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str:
    """The W3C trace id of the current span, or an empty string outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> object:
    """Reads W3C trace context from incoming gRPC metadata."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def inject_context(metadata: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Returns outgoing gRPC metadata with the current W3C trace context added."""
    carrier: dict[str, str] = dict(metadata or {})
    propagate.inject(carrier)
    return list(carrier.items())


class MongoCommandTracing(monitoring.CommandListener):
    """A client span per MongoDB command, child of the span that issued it, and its latency in the
    ``emr_mongodb_command_duration_seconds`` histogram. Only the command name, database and collection
    are recorded: never the statement, filter or documents."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("emr_runtime.mongodb")
        self._spans: dict[tuple[int, int], trace.Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        attributes: dict[str, str] = {
            "db.system": "mongodb",
            "db.name": event.database_name,
            "db.operation": event.command_name,
        }
        if isinstance(collection, str):
            attributes["db.mongodb.collection"] = collection
        span = self._tracer.start_span(
            f"mongodb.{event.command_name}", kind=trace.SpanKind.CLIENT, attributes=attributes
        )
        self._spans[(event.request_id, event.operation_id or 0)] = span

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        MONGODB_COMMAND_SECONDS.labels(event.command_name, "ok").observe(event.duration_micros / 1e6)
        span = self._spans.pop((event.request_id, event.operation_id or 0), None)
        if span is not None:
            span.end()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        MONGODB_COMMAND_SECONDS.labels(event.command_name, "error").observe(event.duration_micros / 1e6)
        span = self._spans.pop((event.request_id, event.operation_id or 0), None)
        if span is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.failure.get("codeName", "failed")))
            span.end()
