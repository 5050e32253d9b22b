"""What differs between a verified node's bridge and the node as it is now.

Device offline, service not running and an unreachable node can be passing states (a restart, MagicDNS
settling after a reboot): the audit confirms them on a second look before they count.
"""

from __future__ import annotations

from contracts.errors import CastleError, Transient
from contracts.events import DriftFinding
from contracts.state import NodeState
from contracts.tailnet import Device
from handlers.deps import Deps
from handlers.devices import is_online, is_ours
from handlers.render import desired_environment, environment_differences

PASSING = frozenset({"device_offline", "service_not_running", "node_unreachable"})


def device_findings(devices: list[Device], state: NodeState, deps: Deps) -> list[DriftFinding]:
    want = deps.policy.magicdns_name(state.name)
    mine = [d for d in devices if d.hostname == state.name]
    if not mine:
        return [
            DriftFinding(kind="device_missing", detail=f"no tailnet device named {state.name}", healable=True)
        ]
    exact = [d for d in mine if d.name.rstrip(".") == want]
    if not exact:
        names = ", ".join(d.name for d in mine)
        return [DriftFinding(kind="device_renamed", detail=f"expected {want}, found {names}", healable=True)]
    device = exact[0]
    found = []
    if not is_ours(device, deps.policy):
        detail = f"{device.name} has tags {list(device.tags)}, expected {list(deps.policy.tags)}"
        found.append(DriftFinding(kind="device_untagged", detail=detail, healable=True))
    if not is_online(device, deps.clock.now()):
        found.append(DriftFinding(kind="device_offline", detail=f"{device.name} is offline", healable=True))
    return found


async def node_findings(deps: Deps, state: NodeState) -> list[DriftFinding]:
    try:
        config = await deps.talos.extension_config(state.ip)
        service = await deps.talos.service(state.ip)
        node_ips = await deps.talos.kubelet_node_ips(state.ip)
    except Transient as exc:
        return [DriftFinding(kind="node_unreachable", detail=f"Talos API: {exc.reason}", healable=False)]
    found = []
    desired = desired_environment(state.name, deps.policy.tags)
    if config is None:
        found.append(
            DriftFinding(kind="config_missing", detail="no tailscale ExtensionServiceConfig", healable=True)
        )
    else:
        differences = environment_differences(desired, config.environment)
        duplicated = [d for d in differences if "duplicated" in d]
        if duplicated:
            found.append(DriftFinding(kind="config_duplicated", detail="; ".join(duplicated), healable=True))
        elif differences:
            found.append(DriftFinding(kind="config_differs", detail="; ".join(differences), healable=True))
    if not service.running:
        found.append(
            DriftFinding(kind="service_not_running", detail="ext-tailscale is not running", healable=True)
        )
    outside = [a for a in node_ips if not deps.policy.in_lab(a)]
    if outside:
        detail = (
            f"kubelet node IP {', '.join(outside)} outside {list(deps.policy.lab_subnets)} (not auto-healed)"
        )
        found.append(DriftFinding(kind="node_ip_outside_lab", detail=detail, healable=False))
    return found


async def look(deps: Deps, state: NodeState, devices: list[Device] | None = None) -> list[DriftFinding]:
    try:
        if devices is None:
            devices = await deps.tailnet.find_devices(state.name)
        found = device_findings(devices, state, deps)
    except CastleError:
        found = []  # the tailnet API is down: that is not the node's drift; the next audit looks again
    return found + await node_findings(deps, state)


async def confirmed_findings(deps: Deps, state: NodeState, devices: list[Device]) -> list[DriftFinding]:
    first = await look(deps, state, devices)
    if not any(f.kind in PASSING for f in first):
        return first
    await deps.clock.sleep(deps.policy.confirm_seconds)
    seen_first = {f.kind for f in first}
    second = await look(deps, state)
    return [f for f in second if f.kind not in PASSING or f.kind in seen_first]
