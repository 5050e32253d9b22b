"""Observability: one trace per node journey (heals included), metrics on /metrics, /readyz following
NATS, and one structured log line per handled event; none of it carries a secret."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts import subjects
from daemon.app import Adapters, Daemon
from daemon.config import ConfigError
from daemon.natsserver import NatsServer
from daemon.observability import RecordWhileExporting, sampler_from_environment
from tests.busutil import eventually
from tests.castle_fixtures import LogCapture, scan_for, simulated_castle
from tests.daemon_fixtures import daemon_settings
from tests.fakes import make_world
from tests.test_audit_heal import heal_round

NODES = ["tazlab-k8s-worker-1", "tazlab-k8s-worker-2"]
JOURNEY = {subjects.VM_CREATED, subjects.TALOS_READY, subjects.BRIDGE_PATCHED}


async def test_each_node_journey_is_one_trace_and_a_heal_continues_it(
    nats_server, tmp_path, span_exporter: InMemorySpanExporter
):
    span_exporter.clear()
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            for name in NODES:
                await castle.publish_created(name, castle.born(name))
            await castle.wait_outcomes(NODES)
            await castle.daemon.runtime.idle(10)

            spans = span_exporter.get_finished_spans()
            consumed: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
            for span in spans:
                attrs = dict(span.attributes or {})
                if span.kind == SpanKind.CONSUMER and "castle.node" in attrs:
                    consumed[attrs["castle.node"]][attrs["messaging.destination.name"]].add(
                        span.context.trace_id
                    )
            traces = {}
            for name in NODES:
                assert set(consumed[name]) == JOURNEY
                ids = set().union(*consumed[name].values())
                assert len(ids) == 1, f"{name} spans {len(ids)} traces"
                traces[name] = ids.pop()
            assert len(set(traces.values())) == len(NODES)  # one trace per node, not one for all

            # Every external call of a journey is a child span in that journey's trace.
            trace_of_node = {v: k for k, v in traces.items()}
            calls = [s for s in spans if s.kind == SpanKind.CLIENT and s.context.trace_id in trace_of_node]
            names = {s.name for s in calls}
            assert {"tailscale create_auth_key", "talos apply_patch", "reachability mesh"} <= names
            assert {"reachability tls", "reachability http"} <= names  # each Vault step
            minted = [s for s in calls if s.name == "tailscale create_auth_key"]
            assert all(str(s.attributes["castle.key_id"]).startswith("k") for s in minted)
            verified_pub = [
                s
                for s in spans
                if s.name == "bridge.verified publish" and s.context.trace_id in trace_of_node
            ]
            assert len(verified_pub) == len(NODES)

            # A heal of worker-1 continues worker-1's trace, linked to the audit tick that found it.
            state = (await castle.daemon.state.get(NODES[0])).state
            castle.sim.tailnet.delete_device_by_hand(state.device_id)
            await heal_round(castle, 1)
            await castle.daemon.runtime.idle(10)
            drift_spans = [
                s
                for s in span_exporter.get_finished_spans()
                if s.name == "bridge.drift process" and s.attributes.get("castle.node") == NODES[0]
            ]
            assert drift_spans and {s.context.trace_id for s in drift_spans} == {traces[NODES[0]]}

            # The structured log: one line per handled event, with node, subject, outcome, duration, trace.
            lines = [json.loads(line) for line in logs.text.splitlines() if line.startswith("{")]
            handled = [r for r in lines if r["message"] == "event handled"]
            created = [r for r in handled if r.get("subject") == subjects.VM_CREATED]
            assert {r["node"] for r in created} == set(NODES)
            for record in handled:
                assert {"subject", "outcome", "duration_ms", "trace_id"} <= record.keys()
            assert {r["trace_id"] for r in created} == {format(t, "032x") for t in traces.values()}

            # And none of it holds a secret.
            attributes = json.dumps(
                [dict(s.attributes or {}) for s in span_exporter.get_finished_spans()], default=str
            )
            assert scan_for(castle.sim.secrets(), attributes, logs.text) == []

            # /metrics after the rebirth and the heal.
            async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:
                metrics = (await http.get("/metrics")).text
            for needle in (
                'castle_bridge_events_handled_total{outcome="ok",subject="vm.created"}',
                "castle_bridge_keys_minted_total",
                'castle_bridge_verifications_total{failing_check="none",outcome="verified"}',
                'castle_bridge_drift_findings_total{kind="device_missing"}',
                'castle_bridge_heals_total{outcome="patched"}',
                'castle_bridge_external_calls_total{operation="apply_patch",outcome="ok",system="talos"}',
                "castle_bridge_handler_duration_seconds_bucket",
            ):
                assert needle in metrics, needle
            assert scan_for(castle.sim.secrets(), metrics) == []


async def test_vault_reachability_is_published_counted_and_shown_in_readyz(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        from datetime import UTC, datetime

        from contracts.events import SchedulerTick
        from daemon.bus.publisher import Publisher

        castle.sim.vault.state = "sealed"
        for n in range(2):
            tick = SchedulerTick(job="check-vault", period_start=datetime.now(UTC))
            await Publisher(castle.js).publish(tick, subject=subjects.VAULT_CHECK_TICK, msg_id=f"vault-{n}")
            await castle.daemon.runtime.idle(15)
        reports = await castle.events(subjects.VAULT_REACHABILITY)
        assert [r["consecutive_failures"] for r in reports] == [1, 2] and not reports[-1]["ok"]
        async with httpx.AsyncClient(base_url=castle.daemon.http_url) as http:
            ready = (await http.get("/readyz")).json()
            metrics = (await http.get("/metrics")).text
        assert ready["vault"]["ok"] is False and ready["vault"]["failing_step"] == "http"
        assert ready["vault"]["consecutive_failures"] == 2
        assert "castle_bridge_vault_reachable 0.0" in metrics
        castle.sim.vault.state = "active"
        tick = SchedulerTick(job="check-vault", period_start=datetime.now(UTC))
        await Publisher(castle.js).publish(tick, subject=subjects.VAULT_CHECK_TICK, msg_id="vault-3")
        await castle.daemon.runtime.idle(15)
        status = await castle.daemon.state.get_vault_status()
        assert status.ok and status.consecutive_failures == 0


async def test_readyz_follows_nats_down_and_back(tmp_path):
    server = NatsServer(tmp_path / "nats").start()
    world = make_world()
    settings = daemon_settings(server.url)
    try:
        async with Daemon(settings, adapters=Adapters(world.tailnet, world.talos, world.prober)) as daemon:
            async with httpx.AsyncClient(base_url=daemon.http_url) as http:

                async def status() -> int:
                    return (await http.get("/readyz")).status_code

                assert await status() == 200
                server.stop()
                await eventually(lambda: status_is(status, 503), within=10, every=0.1)
                body = (await http.get("/readyz")).json()
                assert body["nats_connected"] is False and body["ready"] is False
                assert (await http.get("/healthz")).status_code == 200  # alive all along
                server.start()
                await eventually(lambda: status_is(status, 200), within=15, every=0.1)
    finally:
        server.stop()


async def status_is(status, code: int) -> bool:  # type: ignore[no-untyped-def]
    return await status() == code


def test_spans_are_recorded_only_while_something_exports_them_and_ids_travel_either_way() -> None:
    sampler = RecordWhileExporting()
    provider = TracerProvider(sampler=sampler)
    tracer = provider.get_tracer("test")
    parent = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})

    quiet = tracer.start_span("vm.created process", context=parent, kind=SpanKind.CONSUMER)
    assert not quiet.is_recording()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(quiet))
    # Same trace, a span id of its own: log lines and the next event still name the journey.
    assert carrier["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert quiet.get_span_context().span_id not in (0, 0xB7AD6B7169203331)

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sampler.exporting = True
    unsampled_parent = propagate.extract({"traceparent": carrier["traceparent"][:-2] + "00"})
    recorded = tracer.start_span("talos.ready process", context=unsampled_parent, kind=SpanKind.CONSUMER)
    assert recorded.is_recording()  # an exporting replica records even when the publisher did not
    recorded.end()
    [span] = exporter.get_finished_spans()
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and span.name == "talos.ready process"


def test_an_operator_chosen_sampler_decides_while_exporting_and_a_bad_one_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    sampler = RecordWhileExporting(sampler_from_environment())
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    sampler.exporting = True
    assert not tracer.start_span("vm.created process").is_recording()  # ratio 0: the operator's choice
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1")
    sampler = RecordWhileExporting(sampler_from_environment())
    sampler.exporting = True
    assert TracerProvider(sampler=sampler).get_tracer("test").start_span("x").is_recording()

    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER: 'sometimes' is not one of always_on"):
        sampler_from_environment()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG: 'lots' is not a number"):
        sampler_from_environment()
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert sampler_from_environment() is None
