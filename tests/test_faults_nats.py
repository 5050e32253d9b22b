"""The bus failing under a burst: the NATS server restarted (its JetStream file store kept), and one server
of a three-server cluster killed under an R3 stream. The daemon reconnects by itself; no event is lost.

Each test owns its servers (the session server is shared and must never be restarted).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from daemon.natsserver import NatsServer, free_port
from tests.busutil import eventually
from tests.castle_fixtures import Castle, LogCapture
from tests.fault_harness import castle_on, dead_letters, in_process_leak_scan, settled, wait_outcomes

pytestmark = pytest.mark.timeout(150)

# Messages the daemon held when the bus went away come back after ack_wait; a few more deliveries than
# the default absorb the failed naks and publishes of the outage itself.
RESILIENT = {"nats": {"ack_wait_seconds": 2, "max_deliver": 10}, "bridge": {"verify_deadline_seconds": 40}}


async def _burst(castle: Castle, names: list[str]) -> None:
    for name in names:
        await castle.publish_created(name, castle.born(name))


async def _stored(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def _first_progress(castle: Castle) -> None:
    """Mid-burst: the first node reached talos.ready, the rest are still on their way."""

    async def started() -> bool:
        return await _stored(castle.js, castle.stream, subjects.TALOS_READY) >= 1

    await eventually(started, within=20, every=0.05)


async def _assert_nothing_lost(castle: Castle, names: list[str]) -> None:
    outcomes = await wait_outcomes(castle, names, within=90)
    assert outcomes == dict.fromkeys(names, "verified")
    assert castle.daemon is not None and castle.daemon.state is not None
    state = castle.daemon.state

    async def losses() -> list[str]:
        problems = [f"dead letter: {d['reason']}" for d in await dead_letters(castle.js, castle.stream)]
        for subject in (subjects.VM_CREATED, subjects.TALOS_READY, subjects.BRIDGE_PATCHED):
            seen = {e["name"] for e in await castle.events(subject)}
            problems += [f"{subject} lost for {n}" for n in sorted(set(names) - seen)]
        phases = {s.name: s.phase for s in await state.list()}
        problems += [f"{n} is {phases.get(n)}" for n in names if phases.get(n) != "verified"]
        return problems

    await settled(losses)
    assert len(castle.bridge_keys()) >= len(names)


async def test_nats_restarted_mid_burst_keeps_its_store_and_loses_no_event(
    tmp_path: Path, span_exporter: InMemorySpanExporter
):
    server = NatsServer(tmp_path / "nats").start()
    try:
        with LogCapture() as logs:
            async with castle_on([server.url], tmp_path / "castle", **RESILIENT) as castle:
                names = [f"tazlab-k8s-worker-{i}" for i in range(1, 7)]
                await _burst(castle, names[:4])
                await _first_progress(castle)
                before = (await castle.js.stream_info(castle.stream)).state
                await asyncio.to_thread(server.restart)  # SIGTERM, then the same port and store dir
                await _burst(castle, names[4:])  # the test's client reconnected too
                after = (await castle.js.stream_info(castle.stream)).state
                assert after.first_seq == before.first_seq and after.last_seq >= before.last_seq
                await _assert_nothing_lost(castle, names)
                assert castle.daemon is not None and castle.daemon.connection.reconnects >= 1
                assert castle.daemon.ready == {"nats_connected": True, "consumers_bound": True}
                scan = await in_process_leak_scan(castle, logs.text, span_exporter)
        assert "reconnected to NATS" in logs.text
        scan.assert_clean("stream", "kv", "logs", "spans", "metrics", "argv")
    finally:
        server.stop()


async def test_an_announcement_the_bus_refused_is_made_again_on_redelivery(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    """The state says `patched` before the runtime stores bridge.patched: when that store fails (as in a
    leader election), the redelivered talos.ready must announce the patch again, or nobody verifies it."""
    with LogCapture() as logs:
        async with castle_on([nats_server.url], tmp_path / "castle", **RESILIENT) as castle:
            assert castle.daemon is not None and castle.daemon.state is not None
            name = "tazlab-k8s-worker-9"
            config = (await castle.js.stream_info(castle.stream)).config
            config.subjects = [s for s in config.subjects or [] if s != "bridge.>"]
            await castle.js.update_stream(config)  # bridge.* now has no stream: publishing it fails
            await castle.publish_created(name, castle.born(name))
            store = castle.daemon.state

            async def patched_but_unannounced() -> bool:
                current = await store.get(name)
                return (
                    current is not None and current.state.phase == "patched" and "handler raised" in logs.text
                )

            await eventually(patched_but_unannounced, within=20, every=0.05)
            config.subjects = [*(config.subjects or []), "bridge.>"]
            await castle.js.update_stream(config)
            assert await castle.wait_outcomes([name], within=30) == {name: "verified"}
            assert len(castle.bridge_keys()) == 1  # announced again, never minted again
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean("stream", "kv", "logs", "spans", "argv")


def _cluster(tmp_path: Path) -> list[NatsServer]:
    cluster_ports = [free_port() for _ in range(3)]
    routes = tuple(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
    return [
        NatsServer(
            tmp_path / f"n{i}",
            port=free_port(),
            name=f"n{i}",
            cluster_name="castle-faults",
            cluster_port=cluster_ports[i],
            routes=routes,
        )
        for i in range(3)
    ]


async def _jetstream_ready(urls: list[str]) -> None:
    """A fresh cluster answers JetStream requests only once it has elected a meta leader."""
    nc = await nats.connect(urls)
    js = nc.jetstream()

    async def meta_leader() -> bool:
        try:
            await js.account_info()
        except Exception:
            return False
        return True

    try:
        await eventually(meta_leader, within=30, every=0.2)
    finally:
        await nc.close()


async def test_one_server_of_a_three_server_cluster_killed_mid_burst_loses_no_event(
    tmp_path: Path, span_exporter: InMemorySpanExporter
):
    servers = _cluster(tmp_path)
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        urls = [s.url for s in servers]
        with LogCapture() as logs:
            await _jetstream_ready(urls)
            replicated = {**RESILIENT, "nats": {**RESILIENT["nats"], "stream_replicas": 3}}
            async with castle_on(urls, tmp_path / "castle", **replicated) as castle:
                info = await castle.js.stream_info(castle.stream)
                assert info.config.num_replicas == 3 and info.cluster is not None
                assert len(info.cluster.replicas or []) == 2
                names = [f"tazlab-k8s-worker-{i}" for i in range(1, 7)]
                await _burst(castle, names)
                await _first_progress(castle)
                # Kill the stream's leader (the hardest server to lose): the others elect a new one.
                leader = (await castle.js.stream_info(castle.stream)).cluster.leader
                victim = next(s for s in servers if s.name == leader)
                victim.kill()
                await _assert_nothing_lost(castle, names)
                info = await castle.js.stream_info(castle.stream)
                assert info.cluster is not None and info.cluster.leader not in (None, leader)
                scan = await in_process_leak_scan(castle, logs.text, span_exporter)
        scan.assert_clean("stream", "kv", "logs", "spans", "metrics", "argv")
    finally:
        for s in servers:
            s.stop()
