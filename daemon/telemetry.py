"""Tracer, meter and instruments shared by the runtime and the adapters.

They come from the OpenTelemetry API, so they are no-ops until `daemon.observability.setup` installs
the SDK providers (OTLP export, Prometheus reader). Attribute values are ids and names, never secrets.
"""

from __future__ import annotations

from opentelemetry import metrics, trace

TRACER = trace.get_tracer("castle-bridge")
METER = metrics.get_meter("castle-bridge")

EVENTS_HANDLED = METER.create_counter(
    "castle_bridge_events_handled", description="Messages handled, by subject and outcome"
)
HANDLER_SECONDS = METER.create_histogram(
    "castle_bridge_handler_duration_seconds", unit="s", description="Handler duration, by subject and outcome"
)
EVENTS_PUBLISHED = METER.create_counter(
    "castle_bridge_events_published", description="Events published, by subject"
)
DEAD_LETTERS = METER.create_counter(
    "castle_bridge_dead_letters", description="Messages dead-lettered, by subject"
)
EXTERNAL_CALLS = METER.create_counter(
    "castle_bridge_external_calls", description="Calls to external systems, by system, operation and outcome"
)
EXTERNAL_SECONDS = METER.create_histogram(
    "castle_bridge_external_call_duration_seconds", unit="s", description="External call duration"
)
KEYS_MINTED = METER.create_counter("castle_bridge_keys_minted", description="AuthKeys minted")
KEYS_REVOKED = METER.create_counter("castle_bridge_keys_revoked", description="AuthKeys revoked")
VERIFICATIONS = METER.create_counter(
    "castle_bridge_verifications", description="Verification results, by outcome and failing check"
)
DRIFT_FINDINGS = METER.create_counter("castle_bridge_drift_findings", description="Drift findings, by kind")
HEALS = METER.create_counter("castle_bridge_heals", description="Heals started, by outcome")
VAULT_CHECKS = METER.create_counter("castle_bridge_vault_checks", description="Vault matrix runs, by outcome")
