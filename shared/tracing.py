"""OpenTelemetry tracing, off unless `otlp_endpoint` is set. One trace per job: the API's
`generation.create` (the enqueue), the worker's `generation.run` (or `task.run`) and one
span per upstream attempt, the trace context carried on the job record as a W3C
`traceparent` (`record.request["trace"]`). Spans go to the collector over OTLP/HTTP.

While tracing is off nothing of OpenTelemetry is imported and `active()` is None, so the
code that makes spans costs one check. The process's tracer is kept here, not in
OpenTelemetry's global provider, and is set once by the command that starts the process
(`spool api`, `spool worker`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

Attributes = Mapping[str, str | int | float | bool]
TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """The collector's trace URL: `endpoint` itself when it names it, else the OTLP/HTTP
    path under it."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class Tracing:
    """The process's tracer: spans as context managers, and the current trace context as a
    `traceparent` to carry on a job."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("spool")
        self._kinds = {
            "internal": trace.SpanKind.INTERNAL,
            "producer": trace.SpanKind.PRODUCER,
            "consumer": trace.SpanKind.CONSUMER,
            "client": trace.SpanKind.CLIENT,
            "server": trace.SpanKind.SERVER,
        }
        self._error = trace.StatusCode.ERROR
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: str = "internal",
        parent: str | None = None,
        attributes: Attributes | None = None,
    ) -> Iterator[Span]:
        """A span, current inside the block (tasks started in it are its children's
        parents too); a child of the `traceparent` `parent` when given, else of the
        current span. An exception leaving the block marks it failed."""
        context = self._propagator.extract({"traceparent": parent}) if parent else None
        with self.tracer.start_as_current_span(
            name, context=context, kind=self._kinds[kind], attributes=attributes
        ) as span:
            yield span

    def fail(self, span: Span, description: str) -> None:
        """Mark `span` failed without an exception (a job that ended with an error)."""
        from opentelemetry.trace import Status

        span.set_status(Status(self._error, description))

    def traceparent(self) -> str | None:
        """The current span's context as a W3C `traceparent`."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        self.provider.shutdown()


_active: Tracing | None = None


def active() -> Tracing | None:
    """The process's tracer; None while tracing is off."""
    return _active


def start(settings: Settings, role: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """Start tracing for this process when `otlp_endpoint` is set (or, in tests, with
    `exporter`, which gets each span as it ends). The service is `otel_service_name`,
    else `spool-<role>`."""
    global _active
    if settings.otlp_endpoint is None and exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processor: SpanProcessor
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        assert settings.otlp_endpoint is not None
        # Headers (a collector's key) come from OTEL_EXPORTER_OTLP_HEADERS, as usual.
        exporting = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))
        processor = BatchSpanProcessor(exporting)
    else:
        processor = SimpleSpanProcessor(exporter)
    name = settings.otel_service_name or f"spool-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    _active = Tracing(provider)
    return _active


@contextmanager
def span(
    name: str,
    *,
    kind: str = "internal",
    parent: str | None = None,
    attributes: Attributes | None = None,
) -> Iterator[Span | None]:
    """A span of this process's tracer (see `Tracing.span`), or None while tracing is off."""
    if _active is None:
        yield None
        return
    with _active.span(name, kind=kind, parent=parent, attributes=attributes) as made:
        yield made


def traceparent() -> str | None:
    """The current span's context as a W3C `traceparent`; None while tracing is off."""
    return _active.traceparent() if _active is not None else None


def fail(made: Span | None, description: str) -> None:
    """Mark a span failed without an exception (a job that ended with an error)."""
    if _active is not None and made is not None:
        _active.fail(made, description)


def stop() -> None:
    """Flush and stop this process's tracing, if it was started."""
    global _active
    if _active is not None:
        _active.shutdown()
        _active = None
