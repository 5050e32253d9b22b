"""Simulated Talos nodes: boot, machine config, the ext-tailscale service and the faults tests inject.

Each node lives on its own loopback address (the whole 127/8 is on `lo`) and, while booted and
reachable, listens on `ip:apid_port` so mesh checks have something to dial. The node's config holds
the tailscale document exactly as a patch left it, key included, as a real node does; only what the
simulator records for tests (`applied`) is redacted. `sim.talosctl` turns talosctl invocations into
calls on this state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.redact import redact
from sim import talos_config
from sim.joining import JoinedDevice, JoinRefused, TailnetJoiner

log = logging.getLogger(__name__)

BOOTING_SECONDS = 0.05  # how long machinestatus shows `booting` after the API comes up
REBOOT_SECONDS = 0.2


@dataclass
class AppliedPatch:
    """One `patch machineconfig` as the node received it, key redacted."""

    mode: str
    documents: tuple[dict[str, Any], ...]
    outcome: str  # applied, skipped, staged, rejected, panic


@dataclass
class ServiceRuntime:
    """ext-tailscale as machined runs it."""

    state: str = "Waiting"  # Waiting, Preparing, Running, Failed
    message: str = "Waiting for extension service config"
    version: int = 1
    events: list[tuple[datetime, str, str]] = field(default_factory=list)

    def set(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self.version += 1
        self.events.append((datetime.now(UTC), state, message))
        del self.events[:-10]


@dataclass
class SimNode:
    """One simulated Talos machine, keyed by its management IP."""

    name: str
    ip: str
    role: str
    talos_version: str
    boot_at: float
    config: list[dict[str, Any]]
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    config_version: int = 1
    config_updated: datetime = field(default_factory=lambda: datetime.now(UTC))
    unreachable: bool = False
    reject_reason: str | None = None
    service: ServiceRuntime = field(default_factory=ServiceRuntime)
    state_device: JoinedDevice | None = None  # what tailscaled keeps in TS_STATE_DIR
    device: JoinedDevice | None = None  # the device tailscaled is connected as, while running
    kubelet_ip_override: str | None = None
    nodeip_version: int = 1
    staged: list[dict[str, Any]] | None = None

    @property
    def minor(self) -> tuple[int, int]:
        return talos_config.version_minor(self.talos_version)

    def tailscale_document(self) -> dict[str, Any] | None:
        return talos_config.find(self.config, "ExtensionServiceConfig", "tailscale")

    def tailscale_address(self) -> str | None:
        if self.service.state != "Running" or self.device is None:
            return None
        return next((a for a in self.device.addresses if ipaddress.ip_address(a).version == 4), None)

    def kubelet_node_ip(self) -> str:
        if self.kubelet_ip_override is not None:
            return self.kubelet_ip_override
        subnets = [
            s for s in talos_config.valid_subnets(self.config, self.minor) if not str(s).startswith("!")
        ]
        addresses = [self.ip] + ([a] if (a := self.tailscale_address()) else [])
        for address in addresses:
            if any(ipaddress.ip_address(address) in ipaddress.ip_network(s, strict=False) for s in subnets):
                return address
        return self.ip


class TalosSim:
    """A fleet of simulated Talos nodes behind one talosctl emulation."""

    def __init__(
        self,
        joiner: TailnetJoiner,
        *,
        apid_port: int = 50000,
        join_delay: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.joiner = joiner
        self.apid_port = apid_port
        self.join_delay = join_delay
        self.clock = clock
        self.patch_delay = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.invocations: list[list[str]] = []
        self.applied: dict[str, list[AppliedPatch]] = {}
        self._listeners: dict[str, asyncio.Server] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._service_tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listener_lock = asyncio.Lock()  # the boot task and refresh() may race to open one port

    # -- lifetime -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start what add_node deferred because no event loop was running yet."""
        pending, self._pending = self._pending, []
        for factory in pending:
            self._spawn(factory)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ip in list(self._listeners):
            await self._close_listener(ip)

    async def __aenter__(self) -> TalosSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None] | None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._pending.append(factory)
            return None
        task = asyncio.create_task(factory())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- nodes ----------------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        ip: str,
        *,
        role: str = "worker",
        talos_version: str = "v1.13.9",
        boot_delay: float = 0.0,
    ) -> SimNode:
        """A freshly born machine: the Talos API answers after boot_delay seconds."""
        ip = str(ipaddress.ip_address(ip))
        if ip in self.nodes:
            raise ValueError(f"a simulated node already has IP {ip}")
        talos_config.version_minor(talos_version)
        node = SimNode(
            name=name,
            ip=ip,
            role=role,
            talos_version=talos_version,
            boot_at=self.clock() + boot_delay,
            config=talos_config.initial_config(name, ip, role, talos_version),
        )
        self.nodes[ip] = node
        self.applied.setdefault(ip, [])
        self._locks[ip] = asyncio.Lock()
        self._spawn(lambda: self._bring_up(ip))
        return node

    def node(self, ip: str) -> SimNode | None:
        return self.nodes.get(ip)

    def reachable(self, ip: str) -> bool:
        node = self.nodes.get(ip)
        return node is not None and not node.unreachable and self.clock() >= node.boot_at

    def stage(self, node: SimNode) -> str:
        now = self.clock()
        if now < node.boot_at:
            return "booting"
        return "booting" if now < node.boot_at + BOOTING_SECONDS else "running"

    def lock(self, ip: str) -> asyncio.Lock:
        return self._locks.setdefault(ip, asyncio.Lock())

    # -- faults ---------------------------------------------------------------------------------

    def set_unreachable(self, ip: str, unreachable: bool) -> None:
        """Cut (or restore) the path to the node's API; the node itself keeps running."""
        self._require(ip).unreachable = unreachable
        self._spawn(lambda: self._sync_listener(ip))

    def reject_patches(self, ip: str, reason: str | None) -> None:
        """Make the node refuse every patch with `reason` (None: accept again)."""
        self._require(ip).reject_reason = reason

    def lose_tailscale_state(self, ip: str) -> None:
        """Wipe TS_STATE_DIR and restart ext-tailscale: a consumed single-use key then fails the join."""
        node = self._require(ip)
        node.state_device = None
        self._restart_service(node)

    def remove_extension_config(self, ip: str) -> None:
        """Drop the tailscale document behind the bridge's back; the service stops."""
        node = self._require(ip)
        node.config = [
            d for d in node.config if talos_config.doc_key(d)[1:] != ("ExtensionServiceConfig", "tailscale")
        ]
        self._config_changed(node)
        self._restart_service(node)

    def set_kubelet_node_ip(self, ip: str, address: str | None) -> None:
        """Pretend the kubelet runs with another node IP (None: computed from config again)."""
        node = self._require(ip)
        node.kubelet_ip_override = address
        node.nodeip_version += 1

    def destroy(self, ip: str) -> None:
        """The VM is gone: its API stops answering and its device goes offline."""
        node = self.nodes.pop(ip, None)
        if node is None:
            return
        self._cancel_service_task(ip)
        self._disconnect(node)
        self._spawn(lambda: self._close_listener(ip))

    def restart_service(self, ip: str) -> None:
        """`talosctl service ext-tailscale restart`: the state dir survives, so a joined node reconnects."""
        self._restart_service(self._require(ip))

    def _require(self, ip: str) -> SimNode:
        node = self.nodes.get(ip)
        if node is None:
            raise KeyError(f"no simulated Talos node at {ip}")
        return node

    # -- config ---------------------------------------------------------------------------------

    def record(self, ip: str, mode: str, patches: list[dict[str, Any]], outcome: str) -> None:
        shown = tuple(_redacted(p) for p in patches)
        self.applied.setdefault(ip, []).append(AppliedPatch(mode=mode, documents=shown, outcome=outcome))

    def commit_config(self, node: SimNode, new_config: list[dict[str, Any]], mode: str) -> None:
        """Make a validated config effective (or stage it); restart what the change touches."""
        if mode == "staged":
            node.staged = new_config
            return
        before = node.tailscale_document()
        node.config = new_config
        self._config_changed(node)
        if mode == "reboot":
            self._reboot(node)
        elif node.tailscale_document() != before:
            self._restart_service(node)

    def _config_changed(self, node: SimNode) -> None:
        node.config_version += 1
        node.config_updated = datetime.now(UTC)
        node.nodeip_version += 1

    def _reboot(self, node: SimNode) -> None:
        node.boot_at = self.clock() + REBOOT_SECONDS
        self._spawn(lambda: self._sync_listener(node.ip))
        self._spawn(lambda: self._bring_up(node.ip))
        self._restart_service(node)

    # -- ext-tailscale --------------------------------------------------------------------------

    def _restart_service(self, node: SimNode) -> None:
        self._cancel_service_task(node.ip)
        self._disconnect(node)
        if node.tailscale_document() is None:
            node.service.set("Waiting", "Waiting for extension service config")
            return
        node.service.set("Preparing", "Starting ext-tailscale")
        task = self._spawn(lambda: self._run_tailscaled(node))
        if task is not None:
            self._service_tasks[node.ip] = task

    def _cancel_service_task(self, ip: str) -> None:
        task = self._service_tasks.pop(ip, None)
        if task is not None and not task.done():
            task.cancel()

    def _disconnect(self, node: SimNode) -> None:
        if node.device is not None:
            with contextlib.suppress(Exception):
                self.joiner.set_connected(node.device.node_id, False)
            node.device = None

    async def _run_tailscaled(self, node: SimNode) -> None:
        await asyncio.sleep(self.join_delay)
        doc = node.tailscale_document()
        if doc is None:
            node.service.set("Waiting", "Waiting for extension service config")
            return
        env: dict[str, str] = {}
        for entry in doc.get("environment") or []:
            key, _, value = str(entry).partition("=")
            env[key] = value  # the last entry wins, as in a process environment
        hostname = env.get("TS_HOSTNAME") or node.name
        stateful = bool(env.get("TS_STATE_DIR"))
        kept = node.state_device if stateful else None
        once = env.get("TS_AUTH_ONCE") == "true"
        device: JoinedDevice | None = None
        if kept is not None and once and self.joiner.device(kept.node_id) is not None:
            device = kept  # logged in already: the key is not used again
        else:
            device = await self._join(node, env.get("TS_AUTHKEY", ""), hostname)
        if device is None:
            return
        node.state_device = device if stateful else None
        node.device = device
        self.joiner.set_connected(device.node_id, True)
        node.service.set("Running", "Started task ext-tailscale for container ext-tailscale")

    async def _join(self, node: SimNode, key: str, hostname: str) -> JoinedDevice | None:
        if not key:
            node.state_device = None
            node.service.set("Failed", "Failed to run pre stage: no TS_AUTHKEY and no saved state")
            return None
        try:
            return await self.joiner.join(key, hostname)
        except JoinRefused as exc:
            reason = redact(exc.reason, key)
        except Exception as exc:  # the control plane is another simulator; any failure fails the task
            reason = redact(f"{type(exc).__name__}: {exc}", key)
        node.state_device = None
        node.service.set("Failed", f"Condition failed: backend error: {reason}")
        return None

    # -- the apid listener ------------------------------------------------------------------------

    async def _bring_up(self, ip: str) -> None:
        node = self.nodes.get(ip)
        if node is not None and (delay := node.boot_at - self.clock()) > 0:
            await asyncio.sleep(delay)
        await self._sync_listener(ip)

    async def refresh(self) -> None:
        """Open or close apid listeners to match each node's state (for injected clocks too)."""
        for ip in list(self.nodes) + list(self._listeners):
            await self._sync_listener(ip)

    async def _sync_listener(self, ip: str) -> None:
        async with self._listener_lock:
            want = self.reachable(ip)
            if want and ip not in self._listeners:
                try:
                    self._listeners[ip] = await asyncio.start_server(_accept_and_close, ip, self.apid_port)
                except OSError as exc:
                    log.warning("simulated node %s cannot listen on %s:%s: %s", ip, ip, self.apid_port, exc)
            elif not want and ip in self._listeners:
                await self._close_listener_now(ip)

    async def _close_listener(self, ip: str) -> None:
        async with self._listener_lock:
            await self._close_listener_now(ip)

    async def _close_listener_now(self, ip: str) -> None:
        server = self._listeners.pop(ip, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()


async def _accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _redacted(value: Any) -> Any:
    """A deep copy with every string passed through `redact` (keys may hide anywhere in a patch)."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact(value) if isinstance(value, str) else value
