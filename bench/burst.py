"""Issue 6: a rebirth burst of 200 `vm.created` through the whole chain, against the ideal and against
doing the nodes one after another.

The real `Daemon` (bus, KV state, routes, handlers, traced adapters) runs on a private nats-server with
the latency adapters behind its ports: every external call waits `latency` and then behaves like a
healthy castle. Scheduler and HTTP are off.

1. Sequential sample: `sample` nodes, one after another (publish, wait for bridge.verified, next), as the
   old rebirth script did. Their median is the critical path of one node alone, measured in this run.
2. Burst: `nodes` vm.created at once; the clock stops at the last bridge.verified.

ideal      = critical path x ceil(nodes / concurrency), concurrency being `nats.concurrency`, each
             handler's in-flight limit (every node waits for its wave)
sequential = critical path x nodes
Ratios: wall / ideal (target <= 1.25) and sequential / wall (target > 20).

    python -m bench.burst [--nodes 200] [--latency 0.05] [--concurrency 32] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from collections.abc import Iterable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import (
    DOMAIN,
    TAGS,
    Result,
    Row,
    add_common_arguments,
    daemon_settings,
    peak_rss_mb,
    private_server,
    report,
    setup_process,
)
from bench.latency_adapters import LatencyCastle, lab_ip
from contracts import subjects
from contracts.events import VmCreated
from daemon.app import Daemon
from daemon.bus.publisher import Publisher

IDEAL_TARGET = "<= 1.25"
SEQUENTIAL_TARGET = "> 20"


class Outcomes:
    """bridge.verified / bridge.failed as they are published, by node name, with the time seen."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, float]] = {}
        self._changed = asyncio.Event()

    async def watch(self, nc: Client) -> None:
        for subject in (subjects.BRIDGE_VERIFIED, subjects.BRIDGE_FAILED):
            await nc.subscribe(subject, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        name = json.loads(msg.data).get("name")
        if isinstance(name, str) and name not in self.seen:
            outcome = "verified" if msg.subject == subjects.BRIDGE_VERIFIED else "failed"
            self.seen[name] = (outcome, time.perf_counter())
            self._changed.set()

    async def wait(self, names: Iterable[str], within: float) -> None:
        wanted = set(names)
        deadline = time.monotonic() + within
        while not wanted <= self.seen.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(wanted - self.seen.keys())
                raise TimeoutError(
                    f"{len(missing)} node(s) without an outcome after {within:.0f}s: {missing[:5]}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


def _created(castle: LatencyCastle, name: str, index: int) -> VmCreated:
    ip = lab_ip(index)
    castle.boot(name, ip)
    return VmCreated(name=name, ip=ip, vmid=1000 + index)


async def run(nodes: int = 200, latency: float = 0.05, concurrency: int = 32, sample: int = 3) -> Result:
    castle = LatencyCastle(latency, domain=DOMAIN, tags=TAGS)
    outcomes = Outcomes()
    with private_server() as server:
        settings = daemon_settings(server.url, concurrency=concurrency)
        async with Daemon(settings, adapters=castle.adapters(), serve_http=False, schedule=False):
            nc = await nats.connect(server.url)
            try:
                await outcomes.watch(nc)
                publisher = Publisher(nc.jetstream(), source="bench/rebirth")
                alone: list[float] = []
                for i in range(sample):
                    event = _created(castle, f"tazlab-k8s-solo-{i}", i)
                    started = time.perf_counter()
                    await publisher.publish(event)
                    await outcomes.wait([event.name], within=60)
                    alone.append(outcomes.seen[event.name][1] - started)
                calls_alone = sum(castle.calls.values()) / sample
                burst = [_created(castle, f"tazlab-k8s-worker-{i}", sample + i) for i in range(nodes)]
                critical = statistics.median(alone)
                waves = math.ceil(nodes / concurrency)
                started, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(publisher.publish(event) for event in burst))
                await outcomes.wait([e.name for e in burst], within=max(120.0, 10 * critical * waves))
                wall = max(outcomes.seen[e.name][1] for e in burst) - started
                cpu = time.process_time() - cpu
            finally:
                await nc.close()
    failed = sorted(e.name for e in burst if outcomes.seen[e.name][0] != "verified")
    ideal, sequential = critical * waves, critical * nodes
    note = (
        f"{nodes} nodes, {latency * 1000:.0f} ms per external call, concurrency {concurrency} ({waves} waves)"
    )
    if failed:
        note += f"; NOT VERIFIED: {len(failed)} ({', '.join(failed[:3])})"
    rows = [
        Row("rebirth burst vs ideal", wall, ideal, "s", wall / ideal, IDEAL_TARGET, note),
        Row(
            "rebirth burst vs sequential",
            wall,
            sequential,
            "s",
            sequential / wall,
            SEQUENTIAL_TARGET if not failed else "> inf",
            f"sequential = critical path {critical:.3f} s x {nodes}; sample of {sample} timed one by one",
        ),
    ]
    details = {
        "nodes": nodes,
        "latency_s": latency,
        "concurrency": concurrency,
        "waves": waves,
        "critical_path_s": round(critical, 4),
        "sample_s": [round(a, 4) for a in alone],
        "external_calls_per_node": round(calls_alone, 1),
        "external_wait_per_node_s": round(calls_alone * latency, 4),
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 3),  # this process (daemon + bench), during the burst
        "cpu_ms_per_node": round(cpu * 1000 / nodes, 2),
        "nodes_failed": len(failed),
    }
    return Result("burst", rows, details, peak_rss_mb())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--nodes", type=int, default=200, help="VMs in the burst (200)")
    parser.add_argument("--latency", type=float, help="seconds per external call (0.05; 0.02 with --quick)")
    parser.add_argument("--concurrency", type=int, default=32, help="nats.concurrency per handler (32)")
    parser.add_argument("--sample", type=int, default=3, help="nodes timed one by one (3)")
    args = parser.parse_args(argv)
    setup_process(args.log_level)
    latency = args.latency if args.latency is not None else (0.02 if args.quick else 0.05)
    result = asyncio.run(run(args.nodes, latency, args.concurrency, args.sample))
    return report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
