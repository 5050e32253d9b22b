"""Installing the OpenTelemetry SDK: traces (OTLP over HTTP when an endpoint is set) and metrics
(Prometheus for /metrics, plus OTLP when an endpoint is set).

A TracerProvider is always installed, even with nothing to export, because the trace context must still
travel from event to event in the `traceparent` header; spans are recorded only while something exports
them (`RecordWhileExporting`). The standard OTEL_* variables (endpoint,
headers, service name, resource attributes, OTEL_SDK_DISABLED) are read by the SDK itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry

from daemon.config import ConfigError


class RecordWhileExporting(Sampler):
    """Record spans only while something exports them; otherwise only make the ids.

    With no exporter, a recorded span costs more than the rest of handling an event and goes nowhere.
    Unrecorded spans still carry trace and span ids, so `traceparent` travels from event to event, log
    lines name their trace and a heal continues the node's trace. While exporting, every span is recorded
    unless the operator chose a sampler (`OTEL_TRACES_SAMPLER`, then that one decides); the parent's
    sampled flag is not followed by default, so a replica that exports records its part even when the
    publisher did not.
    """

    def __init__(self, when_exporting: Sampler | None = None) -> None:
        self.exporting = False
        self._when_exporting = when_exporting

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if self.exporting and self._when_exporting is not None:
            return self._when_exporting.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        parent_state = trace.get_current_span(parent_context).get_span_context().trace_state
        if self.exporting:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent_state)
        return SamplingResult(Decision.DROP, None, parent_state)

    def get_description(self) -> str:
        return "RecordWhileExporting"


def sampler_from_environment() -> Sampler | None:
    """The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) names, None when unset; a bad value stops start-up."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name:
        return None
    raw_ratio = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        ratio = float(raw_ratio)
    except ValueError:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {raw_ratio!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG: {raw_ratio!r} is not between 0 and 1")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise ConfigError(f"OTEL_TRACES_SAMPLER: {name!r} is not one of {', '.join(samplers)}")
    return samplers[name]


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry  # what /metrics serves
    sampler: RecordWhileExporting

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Export spans through `processor` (from now on, every span is recorded)."""
        self.tracer_provider.add_span_processor(processor)
        self.sampler.exporting = True

    def shutdown(self) -> None:
        self.tracer_provider.force_flush(5000)
        self.meter_provider.force_flush(5000)


_installed: Telemetry | None = None


def _otlp_wanted(signal: str) -> bool:
    exporter = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return bool(endpoint) and exporter != "none"


def setup_telemetry(service_name: str = "castle-bridge") -> Telemetry:
    """Install the SDK providers once per process and return them (idempotent)."""
    global _installed
    if _installed is not None:
        return _installed
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    sampler = RecordWhileExporting(sampler_from_environment())
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry, scope_info_enabled=False)]
    if _otlp_wanted("metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _installed = Telemetry(tracer_provider, meter_provider, registry, sampler)
    if _otlp_wanted("traces"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        _installed.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return _installed
