"""`castle-bridge status`: the node table from state (phase, tailnet name and IP, last verified, last error)."""

from __future__ import annotations

import argparse
import asyncio
import json

from nats.js.errors import BucketNotFoundError

from contracts.state import NodeState, VaultStatus
from daemon.commands.common import bus, table
from daemon.config import Settings, load_settings
from daemon.state import KvStateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="show every node's bridge state")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


async def read_status(settings: Settings) -> tuple[list[NodeState], VaultStatus | None]:
    async with bus(settings) as nc:
        try:
            store = await KvStateStore.attach(nc.jetstream(), settings.nats.kv_bucket)
        except BucketNotFoundError:
            return [], None
        return await store.list(), await store.get_vault_status()


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"  # type: ignore[attr-defined]


def render(nodes: list[NodeState], vault: VaultStatus | None) -> str:
    rows = [
        (
            n.name,
            n.phase,
            n.magicdns_name or "-",
            n.tailnet_ips[0] if n.tailnet_ips else "-",
            _when(n.last_verified),
            (n.last_error or "")[:90],
        )
        for n in nodes
    ]
    out = table(("NODE", "PHASE", "TAILNET NAME", "TAILNET IP", "LAST VERIFIED", "LAST ERROR"), rows)
    if not nodes:
        out = "no nodes recorded yet"
    if vault is None:
        return out + "\nvault: not checked yet"
    verdict = (
        "ok"
        if vault.ok
        else f"FAILING at {vault.failing_step} ({vault.consecutive_failures} run(s) in a row)"
    )
    return out + f"\nvault: {vault.url} {verdict}, checked {_when(vault.checked_at)}"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    nodes, vault = asyncio.run(read_status(settings))
    if args.json:
        print(
            json.dumps(
                {
                    "nodes": [n.model_dump(mode="json") for n in nodes],
                    "vault": vault.model_dump(mode="json") if vault else None,
                },
                indent=2,
            )
        )
    else:
        print(render(nodes, vault))
    failed = [n for n in nodes if n.phase == "failed"]
    return 1 if failed or (vault is not None and not vault.ok) else 0
