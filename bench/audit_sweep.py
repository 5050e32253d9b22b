"""Issue 7: one audit sweep over 1,000 verified nodes, against the ideal for the configured concurrency,
and the daemon's memory while it tracks them.

The real `Daemon` runs on a private nats-server with the latency adapters behind its ports. 1,000 nodes
are bridged in the simulated castle (config in place, ext-tailscale running, device online) and their
`verified` records are written to the KV bucket through the daemon's own `KvStateStore`. Then one
`bridge.audit.tick` is published and the clock runs until the daemon has handled and acknowledged it.

A healthy node costs the audit three Talos calls in a row (extension config, service, kubelet node
IP); the tailnet is listed once for the whole sweep. So

ideal = 3 x latency x ceil(nodes / bridge.audit_concurrency) + latency

Memory is read in the same process while the daemon still tracks the nodes: VmRSS now, and the peak
(getrusage). The process also holds the simulated castle, so the figure is an upper bound.

    python -m bench.audit_sweep [--nodes 1000] [--latency 0.05] [--audit-concurrency 16] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

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
    rss_mb,
    setup_process,
    vm_hwm_mb,
)
from bench.latency_adapters import BENCH_LAB, LatencyCastle, lab_ip
from contracts import subjects
from contracts.checks import CheckResult
from contracts.events import SchedulerTick
from contracts.state import NodeState
from contracts.talos import patch_digest
from daemon.app import Daemon
from daemon.bus.publisher import Publisher
from daemon.bus.runtime import Runtime
from handlers.render import desired_environment, node_ip_documents

IDEAL_TARGET = "<= 1.25"
RSS_LIMIT_MB = 150.0
TALOS_CALLS_PER_NODE = ("extension_config", "service", "kubelet_node_ips")
VERIFY_CHECKS = ("tailnet", "service", "tailscale0", "node_ip", "mesh", "vault")


def verified_record(castle: LatencyCastle, index: int) -> NodeState:
    """A node bridged and verified earlier, as the chain leaves its record."""
    name, ip = f"tazlab-k8s-node-{index:04d}", lab_ip(index)
    node, device = castle.bridged(name, ip)
    now = datetime.now(UTC)
    digest = patch_digest(
        desired_environment(name, TAGS), node_ip_documents("worker", node.talos_version, (BENCH_LAB,))
    )
    return NodeState(
        name=name,
        ip=ip,
        vmid=1000 + index,
        phase="verified",
        talos_version=node.talos_version,
        patch_digest=digest,
        key_id=f"k{index}BENCH",
        key_expires_at=now + timedelta(minutes=10),
        device_id=device.node_id,
        tailnet_ips=device.addresses,
        magicdns_name=device.name,
        last_verified=now,
        last_checks=tuple(CheckResult(name=c, ok=True, detail="ok", latency_ms=1.0) for c in VERIFY_CHECKS),
        keys_minted=1,
    )


AUDIT_CONSUMER = "castle-bridge-audit-bridges"  # daemon/routes.py, with the Daemon's default prefix


async def _until_acknowledged(
    runtime: Runtime, js: JetStreamContext, stream: str, sequence: int, within: float
) -> None:
    """The daemon handled the tick and the server has its ack. The consumer is asked only while the
    runtime has nothing in flight, so the sweep itself is not slowed by the polling."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if runtime.in_flight == 0:
            info = await js.consumer_info(stream, AUDIT_CONSUMER)
            if info.ack_floor.stream_seq >= sequence:
                return
        await asyncio.sleep(0.001)
    raise TimeoutError(f"the audit tick was not handled within {within:.0f}s")


async def run(nodes: int = 1000, latency: float = 0.05, audit_concurrency: int = 16) -> Result:
    castle = LatencyCastle(latency, domain=DOMAIN, tags=TAGS)
    drifts: list[bytes] = []
    rss: dict[str, float] = {"start": rss_mb()}
    with private_server() as server:
        settings = daemon_settings(server.url, concurrency=32, audit_concurrency=audit_concurrency)
        async with Daemon(settings, adapters=castle.adapters(), serve_http=False, schedule=False) as daemon:
            assert daemon.state is not None and daemon.runtime is not None
            rss["daemon_started"] = rss_mb()
            records = [verified_record(castle, i) for i in range(nodes)]
            for first in range(0, nodes, 100):
                await asyncio.gather(*(daemon.state.create(r) for r in records[first : first + 100]))
            del records
            rss["state_written"] = rss_mb()
            nc = await nats.connect(server.url)
            try:

                async def on_drift(msg: Msg) -> None:
                    drifts.append(msg.data)

                await nc.subscribe(subjects.BRIDGE_DRIFT, cb=on_drift)
                js = nc.jetstream()
                publisher = Publisher(js, source="bench/audit")
                waves = math.ceil(nodes / audit_concurrency)
                ideal = len(TALOS_CALLS_PER_NODE) * latency * waves + latency
                before = castle.calls.copy()
                tick = SchedulerTick(job="audit-bridges", period_start=datetime.now(UTC))
                started, cpu = time.perf_counter(), time.process_time()
                ack = await publisher.publish(
                    tick, subject=subjects.BRIDGE_AUDIT_TICK, msg_id=f"audit-bridges:{uuid.uuid4()}"
                )
                await _until_acknowledged(
                    daemon.runtime, js, settings.nats.stream, ack.seq, within=max(120.0, 10 * ideal)
                )
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu
                rss["tracking"] = rss_mb()
                await nc.flush()
            finally:
                await nc.close()
    calls = castle.calls - before
    complete = all(calls[c] == nodes for c in TALOS_CALLS_PER_NODE) and calls["list_devices"] == 1
    peak = max(peak_rss_mb(), rss["tracking"], vm_hwm_mb())
    note = f"{nodes} nodes, {latency * 1000:.0f} ms per call, audit_concurrency {audit_concurrency} ({waves} waves)"
    if not complete or drifts:
        note += f"; INCOMPLETE: calls {dict(calls)}, {len(drifts)} drift event(s)"
    rows = [
        Row(
            "audit sweep vs ideal", wall, ideal, "s", wall / ideal, IDEAL_TARGET if complete else "<= 0", note
        ),
        Row(
            "audit sweep peak RSS",
            peak,
            RSS_LIMIT_MB,
            "MB",
            peak / RSS_LIMIT_MB,
            "< 1.00",
            f"VmRSS {rss['tracking']:.1f} MB while tracking {nodes} nodes (daemon started: "
            f"{rss['daemon_started']:.1f} MB, records written: {rss['state_written']:.1f} MB)",
        ),
    ]
    details = {
        "nodes": nodes,
        "latency_s": latency,
        "audit_concurrency": audit_concurrency,
        "waves": waves,
        "wall_s": round(wall, 4),
        "ideal_s": round(ideal, 4),
        "cpu_s": round(cpu, 3),  # this process (daemon + bench), during the sweep
        "calls": dict(calls),
        "drift_events": len(drifts),
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "peak_rss_mb": round(peak, 1),
    }
    return Result("audit_sweep", rows, details, peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--nodes", type=int, default=1000, help="verified nodes to audit (1000)")
    parser.add_argument("--latency", type=float, help="seconds per external call (0.05; 0.02 with --quick)")
    parser.add_argument("--audit-concurrency", type=int, default=16, help="bridge.audit_concurrency (16)")
    args = parser.parse_args(argv)
    setup_process(args.log_level)
    latency = args.latency if args.latency is not None else (0.02 if args.quick else 0.05)
    result = asyncio.run(run(args.nodes, latency, args.audit_concurrency))
    return report(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
