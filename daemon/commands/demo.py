"""`castle-bridge demo [--nodes N]`: a rebirth of N VMs in a simulated castle, watched live.

Everything runs here, with no credentials: an embedded nats-server, the simulated tailnet, Talos nodes
behind the talosctl-compatible simulator, a TLS Vault stand-in on the tailnet, and the daemon itself with
its production adapters talking to them over the same wire as to the real things. Exit 0 when every node
is verified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from contracts import subjects
from contracts.events import VmCreated
from daemon.app import Daemon
from daemon.commands.status import render
from daemon.config import load_settings
from daemon.logs import setup_logging
from daemon.observability import setup_telemetry
from sim.castle import SimCastle

FINAL = {subjects.BRIDGE_VERIFIED, subjects.BRIDGE_FAILED}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo", help="a rebirth of N VMs in a simulated castle, end to end, no credentials"
    )
    parser.add_argument("--nodes", type=int, default=3, help="how many VMs are born (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up (default 120)")
    parser.add_argument("--talos-version", default="v1.13.9", help="Talos version of the simulated nodes")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 250:
        print("castle-bridge demo: --nodes must be between 1 and 250", file=sys.stderr)
        return 2
    setup_logging("WARNING", "text")
    setup_telemetry()
    with tempfile.TemporaryDirectory(prefix="castle-bridge-demo-") as tmp:
        return asyncio.run(demo(Path(tmp), args.nodes, args.timeout, args.talos_version, sys.stdout))


def node_names(count: int) -> list[tuple[str, str]]:
    out = [("tazlab-k8s-cp-1", "controlplane")]
    out += [(f"tazlab-k8s-worker-{i}", "worker") for i in range(1, count)]
    return out[:count]


async def demo(workdir: Path, count: int, timeout: float, talos_version: str, out: TextIO) -> int:
    async with SimCastle(workdir / "castle") as castle:
        nodes = [
            (name, role, castle.add_node(name, role=role, talos_version=talos_version, boot_delay=0.5).ip)
            for name, role in node_names(count)
        ]
        # A previous life of the first worker left its device behind: without reaping, it would come
        # back as <name>-1.
        if count > 1:
            await castle.add_stale_device(nodes[1][0])
        sections = castle.settings()
        sections["talos"]["ready_poll_seconds"] = 0.3
        settings = load_settings(
            None,
            **sections,
            nats={"data_dir": str(workdir / "nats"), "embedded_port": 0},
            http={"listen": "127.0.0.1:0"},
            bridge={"verify_poll_seconds": 0.3, "verify_deadline_seconds": max(30.0, timeout - 10)},
        )
        async with Daemon(settings) as daemon:
            print(
                f"castle-bridge demo: {count} VM(s) born in a simulated castle (lab {castle.lab})", file=out
            )
            print(
                f"  bus {daemon.embedded.url if daemon.embedded else '-'}   http {daemon.http_url}\n",
                file=out,
            )
            outcome = await _watch(daemon, nodes, timeout, out)
            states = await daemon.state.list() if daemon.state else []
            vault = await daemon.state.get_vault_status() if daemon.state else None
            print("\n" + render(states, vault), file=out)
    failed = {n: r for n, r in outcome.items() if r != "verified"}
    if failed:
        for name, reason in failed.items():
            print(f"NOT VERIFIED: {name}: {reason}", file=out)
        return 1
    print(
        f"\nall {count} node(s) verified over the tailnet, and Vault answers at its MagicDNS name", file=out
    )
    return 0


async def _watch(
    daemon: Daemon, nodes: list[tuple[str, str, str]], timeout: float, out: TextIO
) -> dict[str, str]:
    assert daemon.nc is not None and daemon.publisher is not None
    started = time.monotonic()
    outcome: dict[str, str] = {}
    done = asyncio.Event()

    async def show(msg: object) -> None:
        subject = getattr(msg, "subject", "")
        try:
            body = json.loads(getattr(msg, "data", b"{}"))
        except ValueError:
            return
        name = body.get("name")
        if not name:
            return
        print(
            f"  {time.monotonic() - started:6.1f}s  {name:<22} {subject:<16} {_detail(subject, body)}",
            file=out,
        )
        if subject in FINAL:
            outcome[name] = (
                "verified" if subject == subjects.BRIDGE_VERIFIED else body.get("reason", "failed")
            )
            if len(outcome) == len(nodes):
                done.set()

    subs = [await daemon.nc.subscribe(s, cb=show) for s in ("vm.>", "talos.>", "bridge.>")]
    for name, role, ip in nodes:
        await daemon.publisher.publish(
            VmCreated(name=name, ip=ip, role=role), msg_id=f"demo:{name}:{started}"
        )
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        for name, _, _ in nodes:
            outcome.setdefault(name, f"no outcome within {timeout:.0f}s")
    for sub in subs:
        await sub.unsubscribe()
    return outcome


def _detail(subject: str, body: dict[str, object]) -> str:
    if subject == subjects.VM_CREATED:
        return f"ip {body.get('ip')} ({body.get('role', 'worker')})"
    if subject == subjects.TALOS_READY:
        return f"Talos {body.get('talos_version')} is up"
    if subject == subjects.BRIDGE_PATCHED:
        return f"key {body.get('key_id')} minted, config applied"
    if subject == subjects.BRIDGE_VERIFIED:
        addresses = body.get("tailnet_ips")
        first = addresses[0] if isinstance(addresses, list) and addresses else "-"
        return f"{body.get('magicdns_name')} {first}"
    if subject in (subjects.BRIDGE_FAILED, subjects.BRIDGE_DRIFT):
        return str(body.get("reason") or body.get("findings"))[:100]
    return ""
