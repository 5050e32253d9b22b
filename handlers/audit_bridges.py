"""Scheduler tick -> audit every verified node (bounded concurrency) -> one bridge.drift per drifted node."""

from __future__ import annotations

import asyncio

from contracts.events import BridgeDrift, SchedulerTick
from contracts.state import NodeState
from contracts.tailnet import Device
from handlers.deps import Deps
from handlers.drift import confirmed_findings
from handlers.state_ops import mutate_state


async def _audit(
    deps: Deps, state: NodeState, devices: list[Device], gate: asyncio.Semaphore
) -> BridgeDrift | None:
    async with gate:
        findings = await confirmed_findings(deps, state, devices)
    if not findings:
        return None
    summary = "drift: " + "; ".join(f.detail for f in findings)

    def note(current: NodeState | None) -> NodeState | None:
        if current is None or current.phase != "verified":
            return None
        return current.model_copy(update={"last_error": summary})

    await mutate_state(deps.state, state.name, note)
    return BridgeDrift(name=state.name, ip=state.ip, role=state.role, findings=tuple(findings))


def _audited(state: NodeState) -> bool:
    # Verified nodes, and nodes that were verified once and failed since (a heal past its budget): once
    # the budget window has passed, they get another heal.
    return state.phase == "verified" or (state.phase == "failed" and state.last_verified is not None)


async def handle(event: SchedulerTick, deps: Deps) -> list[BridgeDrift]:
    verified = [s for s in await deps.state.list() if _audited(s)]
    if not verified:
        return []
    # One listing for the whole sweep, grouped by hostname once: each node then looks at its own few
    # devices instead of scanning the whole tailnet (quadratic in fleet size; bench/audit_sweep.py).
    by_hostname: dict[str, list[Device]] = {}
    for device in await deps.tailnet.list_devices():
        by_hostname.setdefault(device.hostname, []).append(device)
    gate = asyncio.Semaphore(deps.policy.audit_concurrency)
    results = await asyncio.gather(*(_audit(deps, s, by_hostname.get(s.name, []), gate) for s in verified))
    return [r for r in results if r is not None]
