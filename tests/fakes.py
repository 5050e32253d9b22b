"""Recording fakes of the ports, for calling handlers directly (no network).

Like the Tailscale operator's fakes: each records the calls the code under test made (`key_requests`,
`revoked`, `deleted`, `applied`) so tests assert on behaviour, not on mocks' call counts.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from contracts.checks import CheckResult
from contracts.errors import Conflict, NotFound, PatchRejected, Transient
from contracts.policy import BridgePolicy
from contracts.reachability import VaultReport
from contracts.state import NodeState, VaultStatus, Versioned
from contracts.tailnet import AuthKey, Device, KeyInfo
from contracts.talos import ApplyResult, BridgePatch, ExtensionConfigState, MachineStatus, ServiceState
from handlers.deps import Deps

DOMAIN = "magellanic-gondola.ts.net"
TAGS = ("tag:tazlab-k8s",)


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class MemoryState:
    def __init__(self) -> None:
        self.entries: dict[str, tuple[NodeState, int]] = {}
        self.revision = itertools.count(1)
        self.vault: VaultStatus | None = None

    async def get(self, name: str) -> Versioned | None:
        entry = self.entries.get(name)
        return Versioned(state=entry[0], revision=entry[1]) if entry else None

    async def create(self, state: NodeState) -> int:
        if state.name in self.entries:
            raise Conflict("exists")
        rev = next(self.revision)
        self.entries[state.name] = (state, rev)
        return rev

    async def update(self, state: NodeState, revision: int) -> int:
        if self.entries.get(state.name, (None, -1))[1] != revision:
            raise Conflict("moved on")
        rev = next(self.revision)
        self.entries[state.name] = (state, rev)
        return rev

    async def delete(self, name: str) -> None:
        self.entries.pop(name, None)

    async def list(self) -> list[NodeState]:
        return [s for s, _ in self.entries.values()]

    async def get_vault_status(self) -> VaultStatus | None:
        return self.vault

    async def put_vault_status(self, status: VaultStatus) -> None:
        self.vault = status

    def state(self, name: str) -> NodeState:
        return self.entries[name][0]


class FakeTailnet:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.devices: dict[str, Device] = {}
        self.key_requests: list[str] = []
        self.secrets: list[str] = []
        self.revoked: list[str] = []
        self.deleted: list[str] = []
        self.fail_mint: Exception | None = None
        self._ids = itertools.count(1)

    async def create_auth_key(self, node: str) -> AuthKey:
        if self.fail_mint:
            raise self.fail_mint
        self.key_requests.append(node)
        n = next(self._ids)
        secret = f"tskey-auth-k{n}FAKE-secret{n:04d}"
        self.secrets.append(secret)
        now = self.clock.now()
        return AuthKey(
            key_id=f"k{n}FAKE",
            secret=SecretStr(secret),
            created=now,
            expires=now + timedelta(seconds=600),
            tags=TAGS,
        )

    async def revoke_key(self, key_id: str) -> None:
        self.revoked.append(key_id)

    async def get_key(self, key_id: str) -> KeyInfo:
        raise NotFound(key_id)

    async def list_devices(self) -> list[Device]:
        return list(self.devices.values())

    async def find_devices(self, hostname: str) -> list[Device]:
        return [d for d in self.devices.values() if d.hostname == hostname]

    async def delete_device(self, device_id: str) -> None:
        self.deleted.append(device_id)
        self.devices.pop(device_id, None)

    def add_device(
        self, hostname: str, *, online: bool = True, tags: tuple[str, ...] = TAGS, label: str | None = None
    ) -> Device:
        n = next(self._ids)
        device = Device(
            id=str(1000 + n),
            node_id=f"n{n}CNTRL",
            name=f"{label or hostname}.{DOMAIN}",
            hostname=hostname,
            addresses=(f"100.64.0.{n}",),
            tags=tags,
            authorized=True,
            connected_to_control=online,
            last_seen=self.clock.now(),
        )
        self.devices[device.node_id] = device
        return device

    def set_online(self, hostname: str, online: bool) -> None:
        for key, d in list(self.devices.items()):
            if d.hostname == hostname:
                self.devices[key] = d.model_copy(update={"connected_to_control": online})


@dataclass
class FakeNode:
    name: str
    stage: str = "running"
    version: str = "v1.13.9"
    environment: tuple[str, ...] | None = None
    running: bool = False
    addresses: tuple[str, ...] = ()
    kubelet_ips: tuple[str, ...] = ()
    subnets: tuple[str, ...] | None = None
    reject: str | None = None
    unreachable: bool = False
    applied: list[BridgePatch] = field(default_factory=list)
    keys_seen: list[str] = field(default_factory=list)


class FakeTalos:
    """Nodes by IP. Applying a patch 'joins' the node through the fake tailnet, like ext-tailscale."""

    def __init__(self, tailnet: FakeTailnet) -> None:
        self.tailnet = tailnet
        self.nodes: dict[str, FakeNode] = {}
        self.stage_script: dict[str, list[str]] = {}

    def add(self, ip: str, name: str, **kw: object) -> FakeNode:
        node = FakeNode(name=name, kubelet_ips=(ip,), **kw)  # type: ignore[arg-type]
        self.nodes[ip] = node
        return node

    def _node(self, ip: str) -> FakeNode:
        node = self.nodes[ip]
        if node.unreachable:
            raise Transient(f"rpc error: code = Unavailable desc = dial tcp {ip}:50000: connection refused")
        return node

    async def machine_status(self, ip: str) -> MachineStatus:
        script = self.stage_script.get(ip)
        if script:
            stage = script.pop(0)
            if stage == "down":
                raise Transient("connection refused")
            return MachineStatus(stage=stage, ready=stage == "running")
        node = self._node(ip)
        return MachineStatus(stage=node.stage, ready=node.stage == "running")

    async def version(self, ip: str) -> str:
        return self._node(ip).version

    async def extension_config(self, ip: str) -> ExtensionConfigState | None:
        env = self._node(ip).environment
        return ExtensionConfigState(environment=env) if env is not None else None

    async def service(self, ip: str) -> ServiceState:
        return ServiceState(id="ext-tailscale", running=self._node(ip).running)

    async def tailscale_addresses(self, ip: str) -> tuple[str, ...]:
        return self._node(ip).addresses

    async def kubelet_node_ips(self, ip: str) -> tuple[str, ...]:
        return self._node(ip).kubelet_ips

    async def node_ip_subnets(self, ip: str) -> tuple[str, ...] | None:
        return self._node(ip).subnets

    async def apply_patch(self, ip: str, patch: BridgePatch) -> ApplyResult:
        node = self._node(ip)
        if node.reject:
            raise PatchRejected(f"validation failed: {node.reject}")
        assert patch.auth_key is not None
        node.applied.append(patch)
        node.keys_seen.append(patch.auth_key.get_secret_value())
        node.environment = ("TS_AUTHKEY=<redacted>", *patch.environment)
        if patch.node_ip_documents:
            node.subnets = ("192.168.1.0/24",)
        device = self.tailnet.add_device(node.name)
        node.running = True
        node.addresses = device.addresses
        return ApplyResult(changed=True)


class FakeProber:
    def __init__(self) -> None:
        self.vault_ok = True
        self.unreachable: set[str] = set()
        self.mesh_calls: list[tuple[str, int]] = []

    async def vault(self) -> VaultReport:
        checks = (
            CheckResult(name="dns", ok=False, detail="no MagicDNS here", informational=True),
            CheckResult(name="tailnet_ip", ok=True, detail="100.100.1.1"),
            CheckResult(name="tcp", ok=True),
            CheckResult(name="tls", ok=True),
            CheckResult(name="http", ok=self.vault_ok, detail="" if self.vault_ok else "503 sealed=true"),
            CheckResult(name="contract", ok=True),
        )
        return VaultReport(url=f"https://lushycorp-vault.{DOMAIN}:8200", checks=checks)

    async def mesh(self, address: str, port: int = 50000) -> CheckResult:
        self.mesh_calls.append((address, port))
        ok = address not in self.unreachable
        return CheckResult(name="mesh", ok=ok, detail=f"{address}:{port}" + ("" if ok else " refused"))


@dataclass
class World:
    clock: FakeClock
    state: MemoryState
    tailnet: FakeTailnet
    talos: FakeTalos
    prober: FakeProber
    deps: Deps


def make_world(replica: str = "replica-a", **policy: object) -> World:
    clock = FakeClock()
    state = MemoryState()
    tailnet = FakeTailnet(clock)
    talos = FakeTalos(tailnet)
    prober = FakeProber()
    settings = {"tags": TAGS, "dns_domain": DOMAIN, "confirm_seconds": 30.0, **policy}
    deps = Deps(
        tailnet=tailnet,
        talos=talos,
        prober=prober,
        state=state,
        clock=clock,
        policy=BridgePolicy.model_validate(settings),
        replica=replica,
    )
    return World(clock, state, tailnet, talos, prober, deps)
