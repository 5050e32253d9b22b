"""Three daemon replicas on one stream, started at the same moment (they race to create the stream, the
bucket and the durable consumers): JetStream splits the work, the KV claim keeps them from minting twice,
and every node is verified with exactly one key in this fault-free run."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from daemon.app import Daemon
from tests.busutil import stream_messages
from tests.castle_fixtures import LogCapture, simulated_castle
from tests.fault_harness import dead_letters, in_process_leak_scan

REPLICAS = ("replica-a", "replica-b", "replica-c")
NODES = 8


async def test_three_replicas_verify_every_node_and_mint_exactly_once_each(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    with LogCapture() as logs:
        async with (
            simulated_castle(nats_server, tmp_path, start_daemon=False) as castle,
            contextlib.AsyncExitStack() as stack,
        ):
            daemons = [
                Daemon(castle.settings, replica=replica, serve_http=replica == REPLICAS[0])
                for replica in REPLICAS
            ]
            await asyncio.gather(*(stack.enter_async_context(d) for d in daemons))
            castle.daemon = daemons[0]
            names = [f"tazlab-k8s-worker-{i}" for i in range(1, NODES + 1)]
            for name in names:
                await castle.publish_created(name, castle.born(name))
            outcomes = await castle.wait_outcomes(names, within=60)
            assert outcomes == dict.fromkeys(names, "verified")
            await asyncio.gather(*(d.runtime.idle(30) for d in daemons if d.runtime))

            requests = Counter(
                r["description"].removeprefix("castle-bridge ")
                for r in castle.sim.tailnet.key_requests
                if r.get("description", "").startswith("castle-bridge")
            )
            assert requests == Counter(names), "a node was minted for more (or less) than once"
            states = await daemons[1].state.list()  # any replica reads the same bucket
            assert {s.name: (s.phase, s.keys_minted) for s in states} == dict.fromkeys(names, ("verified", 1))
            assert await castle.events(subjects.BRIDGE_FAILED) == []
            assert await dead_letters(castle.js, castle.stream) == []
            for verified in await castle.events(subjects.BRIDGE_VERIFIED):
                assert verified["magicdns_name"] == f"{verified['name']}.{castle.sim.domain}"

            # Who did the work: every output names its replica in ce-source.
            sources = Counter(
                (m.headers or {}).get("ce-source", "").removeprefix("castle-bridge/")
                for m in await stream_messages(castle.js, castle.stream)
                if m.subject != subjects.VM_CREATED
            )
            assert set(sources) <= set(REPLICAS) and len(sources) >= 2, f"work not shared: {sources}"
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean("stream", "kv", "logs", "spans", "metrics", "argv")
    print(f"outputs by replica: {dict(sources)}")
