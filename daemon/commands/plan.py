"""`castle-bridge plan NODE`: what bridging NODE would mint and apply, and how that differs from the node.

Nothing is changed. The documents come from the code the daemon runs (`handlers.bridging.desired_patch`,
`handlers.nodeip`), rendered without a key (it reads `<redacted>`), against what the real adapters read
from the node (talosctl) and the tailnet (when OAuth credentials are configured). The adapters are wrapped
so that any write (minting or revoking a key, deleting a device, patching, writing state) raises instead
of happening. The node's IP and role come from its state in the KV bucket, or from `--ip`/`--role`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.js.errors import BucketNotFoundError
from pydantic import TypeAdapter, ValidationError

from contracts.errors import CastleError, Permanent
from contracts.state import NodeState
from contracts.tailnet import Device
from contracts.talos import BridgePatch, ExtensionConfigState
from contracts.types import IPAddress, NodeName, Role
from daemon.adapters.tailscale_wire import key_description, key_request
from daemon.adapters.talos import STDIN_PATCH, TalosctlNodes
from daemon.clock import SystemClock
from daemon.commands.common import bus
from daemon.config import ConfigError, Settings, load_settings
from daemon.state import KvStateStore
from handlers.bridging import desired_patch, stale
from handlers.deps import Deps
from handlers.nodeip import narrowing_decision
from handlers.render import environment_differences

# Every port method that changes something; a plan only reads.
_WRITES = frozenset(
    {"create_auth_key", "revoke_key", "delete_device", "apply_patch", "create", "update", "delete"}
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "plan",
        help="show what bridging NODE would mint and apply, and the difference from the node; changes nothing",
        description="Render the patch the daemon would apply to NODE (key redacted), the key it would mint, "
        "the stale devices it would reap, and the difference from the node's current tailscale config. "
        "Reads the node through talosctl and the tailnet through the API; never writes anything.",
    )
    parser.add_argument("node", metavar="NODE", help="node hostname, e.g. tazlab-k8s-worker-1")
    parser.add_argument("--ip", help="management IP (default: from the node's state)")
    parser.add_argument("--role", choices=("controlplane", "worker"), help="default: from state, else worker")
    parser.add_argument("--talos-version", help="render for this Talos version instead of asking the node")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run)


class ReadOnly:
    """Forwards reads to an adapter and refuses its writes, so a plan cannot change anything by mistake."""

    def __init__(self, inner: object | None, what: str) -> None:
        self._inner = inner
        self._what = what

    def __getattr__(self, name: str) -> Any:
        if name in _WRITES:
            raise PermissionError(f"plan is read-only: it never calls {self._what}.{name}")
        if self._inner is None:
            raise AttributeError(f"plan has no {self._what} to read {name} from")
        return getattr(self._inner, name)


def read_only(inner: object | None, what: str) -> Any:
    """`ReadOnly` typed as Any: it stands in for whichever port it wraps."""
    return ReadOnly(inner, what)


class Refused(Exception):
    """The daemon itself would refuse to bridge this node (render's reason)."""


@dataclass
class Plan:
    node: str
    ip: str
    role: Role
    talos_version: str
    state: NodeState | None
    key: dict[str, Any]
    patch: BridgePatch
    node_ip_note: str | None
    current: ExtensionConfigState | None
    differences: list[str]
    reap: list[Device] | None  # None: the tailnet was not asked
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.current is None or bool(self.differences) or bool(self.patch.node_ip_documents)

    def documents(self) -> list[tuple[str, dict[str, Any]]]:
        """The `-p` arguments in the order talosctl would get them, the key redacted."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self.patch.delete_existing:
            out.append(("argv", self.patch.delete_document()))
        out += [("argv", doc) for doc in self.patch.node_ip_documents]
        out.append(("stdin", self.patch.extension_document(reveal=False)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ip": self.ip,
            "role": self.role,
            "talos_version": self.talos_version,
            "state": None
            if self.state is None
            else self.state.model_dump(
                mode="json", include={"phase", "patch_digest", "key_id", "last_error"}
            ),
            "mint": self.key,
            "reap": None if self.reap is None else [_device_json(d) for d in self.reap],
            "patch": {
                "digest": self.patch.digest,
                "mode": "no-reboot",
                "documents": [{"via": via, "document": doc} for via, doc in self.documents()],
            },
            "node_ip": {"narrow": bool(self.patch.node_ip_documents), "note": self.node_ip_note},
            "current_environment": None if self.current is None else list(self.current.environment),
            "differences": self.differences,
            "changes": self.changes,
            "notes": self.notes,
        }


def _device_json(device: Device) -> dict[str, Any]:
    seen = device.last_seen.isoformat() if device.last_seen else None
    return {"node_id": device.node_id, "name": device.name, "tags": list(device.tags), "last_seen": seen}


async def read_state(settings: Settings, node: str, notes: list[str], *, required: bool) -> NodeState | None:
    """The node's state entry; when --ip makes it optional, an unreachable bus is only a note."""
    try:
        async with bus(settings) as nc:
            try:
                store = await KvStateStore.attach(nc.jetstream(), settings.nats.kv_bucket)
            except BucketNotFoundError:
                return None
            found = await store.get(node)
            return found.state if found else None
    except ConfigError as exc:
        if required:
            raise
        notes.append(f"state not read ({exc})")
        return None


@contextlib.asynccontextmanager
async def tailnet_reader(settings: Settings, notes: list[str]) -> AsyncIterator[Any]:
    """The Tailscale client when credentials exist (imported late: plan works without them)."""
    s = settings.tailscale
    if not s.oauth_client_id or s.oauth_client_secret is None:
        notes.append("stale devices not checked: no Tailscale OAuth credentials configured")
        yield None
        return
    from daemon.adapters.tailscale import TailscaleClient

    async with httpx.AsyncClient(timeout=s.request_timeout_seconds) as http:
        yield TailscaleClient(s, http)


async def stale_devices(deps: Deps, node: str, notes: list[str]) -> list[Device] | None:
    """What patch_bridge's reaping would delete: our devices of this hostname that are offline."""
    try:
        devices = await deps.tailnet.find_devices(node)
    except CastleError as exc:
        notes.append(f"stale devices not checked: {exc}")
        return None
    return stale(devices, deps)


async def make_plan(
    settings: Settings, node: str, *, ip: str | None, role: Role | None, talos_version: str | None
) -> Plan:
    notes: list[str] = []
    state = await read_state(settings, node, notes, required=ip is None)
    if ip is None:
        if state is None:
            raise ConfigError(f"no state recorded for {node}: give its management IP with --ip")
        ip = state.ip
    role = role or (state.role if state else "worker")
    talos = read_only(TalosctlNodes(settings.talos), "talos")
    async with tailnet_reader(settings, notes) as tailnet:
        deps = Deps(
            tailnet=read_only(tailnet, "tailnet"),
            talos=talos,
            prober=read_only(None, "prober"),
            state=read_only(None, "state"),
            clock=SystemClock(),
            policy=settings.policy(),
            replica="castle-bridge plan",
        )
        version = talos_version or await talos.version(ip)
        current = await talos.extension_config(ip)
        narrow, note = await narrowing_decision(deps, ip)
        try:  # exactly what patch_bridge renders
            patch = await desired_patch(deps, node, ip, role, version, narrow_node_ip=narrow)
        except Permanent as exc:
            raise Refused(exc.reason) from None
        reap = await stale_devices(deps, node, notes) if tailnet is not None else None
    differences = (
        ["the node has no tailscale ExtensionServiceConfig: it would be created"]
        if current is None
        else environment_differences(patch.environment, current.environment)
    )
    s = settings.tailscale
    key = key_request(
        tags=s.tags,
        ephemeral=s.ephemeral,
        expiry_seconds=s.key_expiry_seconds,
        description=key_description(node),
    )
    return Plan(node, ip, role, version, state, key, patch, note, current, differences, reap, notes)


def render(plan: Plan) -> str:
    create = plan.key["capabilities"]["devices"]["create"]
    lines = [f"plan for {plan.node} ({plan.ip}, {plan.role}, Talos {plan.talos_version})"]
    if plan.state is None:
        lines.append("state:   none recorded")
    else:
        same = "the same as" if plan.state.patch_digest == plan.patch.digest else "differs from"
        lines.append(f"state:   phase {plan.state.phase}; recorded digest {same} this plan's")
    lines.append(
        f"mint:    one key: tags {', '.join(create['tags'])}; single-use; pre-authorized; "
        f"{'ephemeral' if create['ephemeral'] else 'not ephemeral'}; expires in {plan.key['expirySeconds']}s; "
        f'description "{plan.key["description"]}"'
    )
    if plan.reap is None:
        lines.append("reap:    not checked")
    elif not plan.reap:
        lines.append("reap:    nothing (no offline device of ours holds the name)")
    else:
        lines.append(
            f"reap:    {len(plan.reap)} offline device(s) of ours with this hostname, deleted first:"
        )
        lines += [f"           {d.name} ({d.node_id}, last seen {d.last_seen or 'never'})" for d in plan.reap]
    lines.append(
        f"apply:   talosctl -n {plan.ip} -e {plan.ip} patch machineconfig --mode=no-reboot (digest {plan.patch.digest})"
    )
    for via, document in plan.documents():
        if via == "stdin":
            lines.append(f"           -p {STDIN_PATCH}:")
            lines += ["               " + row for row in _yaml_lines(document)]
        else:
            lines.append(f"           -p '{json.dumps(document, separators=(',', ':'))}'")
    narrowing = "added" if plan.patch.node_ip_documents else "left as is"
    lines.append(f"node IP: narrowing {narrowing}" + (f" ({plan.node_ip_note})" if plan.node_ip_note else ""))
    if plan.differences:
        lines.append("differences from the node's tailscale config:")
        lines += [f"  - {d}" for d in plan.differences]
    else:
        lines.append("differences from the node's tailscale config: none")
    lines += [f"note:    {n}" for n in plan.notes]
    lines.append("would change the node" if plan.changes else "the node already has this config")
    return "\n".join(lines)


def _yaml_lines(document: dict[str, Any]) -> list[str]:
    import yaml

    return str(yaml.safe_dump(document, sort_keys=False)).rstrip().splitlines()


def _checked(args: argparse.Namespace) -> tuple[str, str | None]:
    try:
        node = TypeAdapter(NodeName).validate_python(args.node)
        ip = TypeAdapter(IPAddress).validate_python(args.ip) if args.ip else None
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"plan: {problem}") from None
    return node, ip


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    node, ip = _checked(args)
    try:
        plan = asyncio.run(make_plan(settings, node, ip=ip, role=args.role, talos_version=args.talos_version))
    except Refused as exc:
        print(f"castle-bridge: the daemon would refuse {node}: {exc}", file=sys.stderr)
        return 1
    except CastleError as exc:
        print(f"castle-bridge: cannot plan {node}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(plan.to_json(), indent=2) if args.json else render(plan))
    return 0
