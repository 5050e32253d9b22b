"""Tracer, meter and instruments shared by the runtime and the adapters.

They come from the OpenTelemetry API, so they are no-ops until `daemon.observability.setup` installs
the SDK providers (OTLP export, Prometheus reader). Attribute values are ids and names, never secrets.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from pydantic import BaseModel

from contracts.checks import first_failure
from contracts.events import BridgeDrift, BridgeFailed, BridgePatched, BridgeVerified, VaultReachability

TRACER = trace.get_tracer("castle-bridge")
METER = metrics.get_meter("castle-bridge")


class HandledCounts:
    """Messages handled, by subject and outcome: a plain dict on the hot path, read at collection.

    A synchronous OpenTelemetry counter costs several microseconds per `add`, once per message; an
    observable counter reads the totals only when /metrics is scraped or OTLP exports.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, subject: str, outcome: str) -> None:
        key = (subject, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        for (subject, outcome), count in list(self._counts.items()):
            yield Observation(count, {"subject": subject, "outcome": outcome})


EVENTS_HANDLED = HandledCounts()
METER.create_observable_counter(
    "castle_bridge_events_handled",
    callbacks=[EVENTS_HANDLED.observe],
    description="Messages handled, by subject and outcome",
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
BRIDGE_FAILURES = METER.create_counter("castle_bridge_failures", description="bridge.failed events, by stage")
VAULT_REACHABLE = METER.create_gauge(
    "castle_bridge_vault_reachable", description="1 when the last Vault matrix passed, 0 otherwise"
)
VAULT_CONSECUTIVE_FAILURES = METER.create_gauge(
    "castle_bridge_vault_consecutive_failures", description="Failed Vault matrix runs in a row"
)


def record_outcome(event: BaseModel) -> None:
    """Outcome metrics, read off the events the daemon publishes (one place, no handler plumbing)."""
    if isinstance(event, BridgeVerified):
        VERIFICATIONS.add(1, {"outcome": "verified", "failing_check": "none"})
    elif isinstance(event, BridgeFailed):
        BRIDGE_FAILURES.add(1, {"stage": event.stage})
        if event.stage == "verify":
            failing = first_failure(event.checks)
            VERIFICATIONS.add(
                1, {"outcome": "failed", "failing_check": failing.name if failing else "unknown"}
            )
        elif event.stage == "heal":
            HEALS.add(1, {"outcome": "refused"})
    elif isinstance(event, BridgeDrift):
        for finding in event.findings:
            DRIFT_FINDINGS.add(1, {"kind": finding.kind})
    elif isinstance(event, BridgePatched) and event.heal:
        HEALS.add(1, {"outcome": "patched"})
    elif isinstance(event, VaultReachability):
        failing = first_failure(event.checks)
        VAULT_CHECKS.add(
            1,
            {"outcome": "ok" if event.ok else "failed", "failing_step": failing.name if failing else "none"},
        )
        VAULT_REACHABLE.set(1 if event.ok else 0)
        VAULT_CONSECUTIVE_FAILURES.set(event.consecutive_failures)
