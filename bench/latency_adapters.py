"""Port adapters whose every call waits one fixed latency and then behaves like a healthy castle.

The benchmarks put these behind the real daemon instead of the Tailscale API, talosctl and the prober,
so that what they measure is the daemon itself (bus, state, handlers, concurrency limits) against a
known external cost: a node whose chain makes N external calls in a row cannot finish in less than
N x latency, and anything beyond that is ours.

Modelled on tests/fakes.py, without its test-only switches: keys are random, single-use and expire;
a patch joins the node to the tailnet only with a live key minted for it; a name already taken makes
the newcomer `<name>-1` as the control plane does; Talos appends to an extension document that was not
deleted first; an unknown node refuses the connection like talosctl reports it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from contracts.checks import CheckResult
from contracts.errors import NotFound, PatchRejected, Transient
from contracts.reachability import VAULT_STEPS, VaultReport
from contracts.tailnet import AuthKey, Device, KeyInfo
from contracts.talos import (
    AUTHKEY_VAR,
    EXTENSION_SERVICE,
    ApplyResult,
    BridgePatch,
    ExtensionConfigState,
    MachineStatus,
    ServiceState,
)
from daemon.app import Adapters
from handlers.render import desired_environment

KEY_LIFETIME = timedelta(seconds=600)
TAILNET_BASE = ipaddress.ip_address("100.64.0.0")
# RFC 2544's benchmarking range: simulated nodes never get an address anything could route to.
BENCH_LAB = "198.18.0.0/15"


def lab_ip(index: int) -> str:
    """Management IP of the index-th simulated node, inside BENCH_LAB."""
    return str(ipaddress.ip_address("198.18.0.10") + index)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CastleNode:
    """One Talos node as its API would describe it."""

    name: str
    ip: str
    talos_version: str = "v1.13.9"
    environment: tuple[str, ...] | None = None
    running: bool = False
    addresses: tuple[str, ...] = ()
    subnets: tuple[str, ...] | None = None


@dataclass
class _Key:
    info: KeyInfo
    secret: str
    used: bool = False

    def usable(self, now: datetime) -> bool:
        expires = self.info.expires or now
        return not self.used and self.info.revoked is None and expires > now


@dataclass
class LatencyCastle:
    """The world behind the three adapters. `calls` counts every port call by method name."""

    latency: float
    domain: str
    tags: tuple[str, ...]
    lab_subnets: tuple[str, ...] = (BENCH_LAB,)
    calls: Counter[str] = field(default_factory=Counter)
    nodes: dict[str, CastleNode] = field(default_factory=dict)  # by management IP
    devices: dict[str, Device] = field(default_factory=dict)  # by node id
    keys: dict[str, _Key] = field(default_factory=dict)  # by key id
    _by_hostname: dict[str, set[str]] = field(default_factory=dict)
    _by_address: dict[str, str] = field(default_factory=dict)  # tailnet address -> node id
    _by_secret: dict[str, str] = field(default_factory=dict)  # key secret -> key id
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.tailnet = LatencyTailnet(self)
        self.talos = LatencyTalos(self)
        self.prober = LatencyProber(self)

    def adapters(self) -> Adapters:
        return Adapters(tailnet=self.tailnet, talos=self.talos, prober=self.prober)

    async def call(self, name: str) -> None:
        """What every port call costs: one round trip to the outside world."""
        self.calls[name] += 1
        await asyncio.sleep(self.latency)

    def boot(self, name: str, ip: str, talos_version: str = "v1.13.9") -> CastleNode:
        """A freshly born VM: Talos is up, nothing of the bridge is there yet."""
        node = CastleNode(name=name, ip=ip, talos_version=talos_version)
        self.nodes[ip] = node
        return node

    def bridged(self, name: str, ip: str, talos_version: str = "v1.13.9") -> tuple[CastleNode, Device]:
        """A node bridged earlier: its config in place, ext-tailscale running, its device online."""
        node = self.boot(name, ip, talos_version)
        node.environment = (f"{AUTHKEY_VAR}=<redacted>", *desired_environment(name, self.tags))
        node.subnets = self.lab_subnets
        return node, self.join(node, self.tags)

    def next_id(self) -> int:
        return next(self._ids)

    def join(self, node: CastleNode, tags: tuple[str, ...]) -> Device:
        """ext-tailscale logged in: a new device, named `<name>-N` if the name is taken."""
        n = self.next_id()
        taken = {self.devices[i].magicdns_label for i in self._by_hostname.get(node.name, ())}
        label = node.name
        suffix = itertools.count(1)
        while label in taken:
            label = f"{node.name}-{next(suffix)}"
        device = Device(
            id=str(100000 + n),
            node_id=f"n{n:06d}BENCH",
            name=f"{label}.{self.domain}",
            hostname=node.name,
            addresses=(str(TAILNET_BASE + n), f"fd7a:115c:a1e0::{n:x}"),
            tags=tags,
            authorized=True,
            last_seen=_now(),
            connected_to_control=True,
            os="linux",
            client_version="1.80.0",
        )
        self.devices[device.node_id] = device
        self._by_hostname.setdefault(node.name, set()).add(device.node_id)
        self._by_address.update(dict.fromkeys(device.addresses, device.node_id))
        node.running = True
        node.addresses = (device.addresses[0],)
        return device

    def forget_device(self, node_id: str) -> None:
        device = self.devices.pop(node_id, None)
        if device is not None:
            self._by_hostname.get(device.hostname, set()).discard(node_id)
            for address in device.addresses:
                self._by_address.pop(address, None)

    def devices_of(self, hostname: str) -> list[Device]:
        return [self.devices[i] for i in sorted(self._by_hostname.get(hostname, ()))]

    def online_address(self, address: str) -> bool:
        device = self.devices.get(self._by_address.get(address, ""))
        return device is not None and bool(device.connected_to_control)

    def add_key(self, info: KeyInfo, secret: str) -> None:
        self.keys[info.key_id] = _Key(info=info, secret=secret)
        self._by_secret[secret] = info.key_id

    def key_of(self, secret: str) -> _Key | None:
        return self.keys.get(self._by_secret.get(secret, ""))

    def node(self, ip: str) -> CastleNode:
        node = self.nodes.get(ip)
        if node is None:
            raise Transient(
                f'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
                f'dialing: dial tcp {ip}:50000: connect: connection refused"'
            )
        return node


class LatencyTailnet:
    """contracts.tailnet.TailnetAPI."""

    def __init__(self, castle: LatencyCastle) -> None:
        self._castle = castle

    async def create_auth_key(self, node: str) -> AuthKey:
        await self._castle.call("create_auth_key")
        key_id = f"k{self._castle.next_id()}BENCH"
        secret = f"tskey-auth-{key_id}-{secrets.token_hex(16)}"
        now = _now()
        info = KeyInfo(
            key_id=key_id,
            created=now,
            expires=now + KEY_LIFETIME,
            description=f"castle-bridge {node}"[:50],
            tags=self._castle.tags,
            preauthorized=True,
        )
        self._castle.add_key(info, secret)
        return AuthKey(
            key_id=key_id,
            secret=SecretStr(secret),
            created=now,
            expires=now + KEY_LIFETIME,
            tags=info.tags,
            description=info.description,
        )

    async def revoke_key(self, key_id: str) -> None:
        await self._castle.call("revoke_key")
        key = self._castle.keys.get(key_id)
        if key is not None and key.info.revoked is None:
            key.info = key.info.model_copy(update={"revoked": _now()})

    async def get_key(self, key_id: str) -> KeyInfo:
        await self._castle.call("get_key")
        key = self._castle.keys.get(key_id)
        if key is None:
            raise NotFound(f"key {key_id} not found")
        return key.info

    async def list_devices(self) -> list[Device]:
        await self._castle.call("list_devices")
        return list(self._castle.devices.values())

    async def find_devices(self, hostname: str) -> list[Device]:
        await self._castle.call("find_devices")
        return self._castle.devices_of(hostname.strip().lower())

    async def delete_device(self, device_id: str) -> None:
        await self._castle.call("delete_device")
        self._castle.forget_device(device_id)


class LatencyTalos:
    """contracts.talos.TalosNodes."""

    def __init__(self, castle: LatencyCastle) -> None:
        self._castle = castle

    async def _node(self, operation: str, ip: str) -> CastleNode:
        await self._castle.call(operation)
        return self._castle.node(ip)

    async def machine_status(self, ip: str) -> MachineStatus:
        await self._node("machine_status", ip)
        return MachineStatus(stage="running", ready=True)

    async def version(self, ip: str) -> str:
        return (await self._node("version", ip)).talos_version

    async def extension_config(self, ip: str) -> ExtensionConfigState | None:
        env = (await self._node("extension_config", ip)).environment
        return None if env is None else ExtensionConfigState(environment=env)

    async def service(self, ip: str) -> ServiceState:
        node = await self._node("service", ip)
        return ServiceState(id=EXTENSION_SERVICE, running=node.running, healthy=False, unknown=True)

    async def tailscale_addresses(self, ip: str) -> tuple[str, ...]:
        return (await self._node("tailscale_addresses", ip)).addresses

    async def kubelet_node_ips(self, ip: str) -> tuple[str, ...]:
        return ((await self._node("kubelet_node_ips", ip)).ip,)

    async def node_ip_subnets(self, ip: str) -> tuple[str, ...] | None:
        return (await self._node("node_ip_subnets", ip)).subnets

    async def apply_patch(self, ip: str, patch: BridgePatch) -> ApplyResult:
        node = await self._node("apply_patch", ip)
        if patch.auth_key is None:
            raise PatchRejected("the patch carries no AuthKey")
        environment = (f"{AUTHKEY_VAR}=<redacted>", *patch.environment)
        if node.environment is not None and not patch.delete_existing:
            environment = node.environment + environment  # Talos appends to a matching document
        node.environment = environment
        if patch.node_ip_documents:
            node.subnets = self._castle.lab_subnets
        # ext-tailscale restarts with the new key; it joins only if the key is live and unused.
        key = self._castle.key_of(patch.auth_key.get_secret_value())
        if key is not None and key.usable(_now()):
            key.used = True
            self._castle.join(node, key.info.tags)
        return ApplyResult(changed=True, message="Applied configuration without a reboot")


class LatencyProber:
    """contracts.reachability.ReachabilityProber: Vault answers; a device's address is dialable while
    the device is online."""

    def __init__(self, castle: LatencyCastle) -> None:
        self._castle = castle

    async def vault(self) -> VaultReport:
        await self._castle.call("vault")
        checks = tuple(CheckResult(name=step, ok=True, detail="ok", latency_ms=0.0) for step in VAULT_STEPS)
        return VaultReport(url=f"https://lushycorp-vault.{self._castle.domain}:8200", checks=checks)

    async def mesh(self, address: str, port: int = 50000) -> CheckResult:
        await self._castle.call("mesh")
        online = self._castle.online_address(address)
        detail = f"{address}:{port}" + ("" if online else " timed out")
        return CheckResult(name="mesh", ok=online, detail=detail)
