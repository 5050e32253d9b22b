"""The verification checks of one node, each a named CheckResult an operator can act on.

tailnet     a device with the hostname, our tags, authorized, online, MagicDNS name X.<domain>
service     ext-tailscale running (extension services have no health check: health is "unknown")
tailscale0  the node has a tailscale0 address
node_ip     the kubelet node IP is inside the lab subnets and outside 100.64.0.0/10
mesh        TCP to the device's tailnet IP on apid (50000), directly or through the SOCKS5 proxy
vault       the Vault reachability matrix passes
"""

from __future__ import annotations

import ipaddress
import time

from contracts.checks import CheckResult
from contracts.errors import CastleError
from contracts.policy import TAILNET_RANGE
from contracts.tailnet import Device
from handlers.deps import Deps
from handlers.devices import is_online, is_ours


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def tailnet_check(devices: list[Device], node: str, deps: Deps) -> tuple[CheckResult, Device | None]:
    started = time.monotonic()
    want = deps.policy.magicdns_name(node)
    mine = [d for d in devices if d.hostname == node]
    if not mine:
        return CheckResult(name="tailnet", ok=False, detail=f"no tailnet device with hostname {node}"), None
    now = deps.clock.now()
    device = next((d for d in mine if d.name.rstrip(".") == want and is_online(d, now)), None) or mine[0]
    problems = []
    if not is_ours(device, deps.policy):
        problems.append(f"tags {list(device.tags)} lack {list(deps.policy.tags)}")
    if not device.authorized:
        problems.append("not authorized")
    if not is_online(device, now):
        problems.append("offline")
    if device.name.rstrip(".") != want:
        problems.append(f"MagicDNS name is {device.name}, expected {want} (a stale device holds the name)")
    detail = "; ".join(problems) or f"{device.name} {device.ipv4 or ''} online"
    return CheckResult(name="tailnet", ok=not problems, detail=detail, latency_ms=_ms(started)), device


async def node_checks(deps: Deps, ip: str) -> list[CheckResult]:
    started = time.monotonic()
    service = await deps.talos.service(ip)
    results = [
        CheckResult(
            name="service",
            ok=service.running,
            detail="ext-tailscale running"
            if service.running
            else "ext-tailscale not running (waiting or failed)",
            latency_ms=_ms(started),
        )
    ]
    started = time.monotonic()
    addresses = await deps.talos.tailscale_addresses(ip)
    results.append(
        CheckResult(
            name="tailscale0",
            ok=bool(addresses),
            detail=", ".join(addresses) or "no tailscale0 address",
            latency_ms=_ms(started),
        )
    )
    started = time.monotonic()
    node_ips = await deps.talos.kubelet_node_ips(ip)
    bad = [a for a in node_ips if not deps.policy.in_lab(a) or ipaddress.ip_address(a) in TAILNET_RANGE]
    ok = bool(node_ips) and not bad
    detail = f"kubelet node IP {', '.join(node_ips) or 'unknown'}" + (
        f" outside the lab subnets {list(deps.policy.lab_subnets)}" if bad else ""
    )
    results.append(CheckResult(name="node_ip", ok=ok, detail=detail, latency_ms=_ms(started)))
    return results


async def run_checks(deps: Deps, node: str, ip: str) -> tuple[list[CheckResult], Device | None]:
    """Every check once; an external call that fails becomes a failed check, never an exception."""
    checks: list[CheckResult] = []
    device: Device | None = None
    try:
        tailnet, device = tailnet_check(await deps.tailnet.find_devices(node), node, deps)
        checks.append(tailnet)
    except CastleError as exc:
        checks.append(CheckResult(name="tailnet", ok=False, detail=f"tailnet API: {exc}"))
    try:
        checks.extend(await node_checks(deps, ip))
    except CastleError as exc:
        checks.append(CheckResult(name="service", ok=False, detail=f"talos API: {exc}"))
    address = device.ipv4 if device else None
    if address:
        checks.append(await deps.prober.mesh(address, deps.policy.apid_port))
    else:
        checks.append(CheckResult(name="mesh", ok=False, detail="skipped: no tailnet address yet"))
    if deps.policy.verify_vault:
        report = await deps.prober.vault()
        failing = next((c for c in report.checks if not c.ok and not c.informational), None)
        detail = f"{failing.name}: {failing.detail}" if failing else f"{report.url} answers over the tailnet"
        checks.append(CheckResult(name="vault", ok=report.ok, detail=detail))
    return checks, device
