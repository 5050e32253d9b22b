"""bridge.drift -> within the heal budget: reap, re-mint, re-patch the extension config only -> bridge.patched.

The normal chain then verifies the node again. Drift that re-patching cannot repair (node IP outside the
lab subnets) is reported and left alone; past the budget the node is marked failed.
"""

from __future__ import annotations

from datetime import timedelta

from contracts.events import BridgeDrift, BridgeFailed, BridgePatched
from contracts.state import NodeState
from handlers.bridging import Admit, claim, desired_patch, mint_and_apply, reap_stale_devices, release
from handlers.deps import Deps
from handlers.state_ops import mutate_state, with_error

DEVICE_KINDS = frozenset({"device_renamed", "device_untagged"})


class BudgetExhausted(Exception):
    pass


def _budget(deps: Deps) -> Admit:
    now = deps.clock.now()
    window = timedelta(seconds=deps.policy.heal_window_seconds)

    def admit(current: NodeState | None) -> dict[str, object]:
        recent = tuple(t for t in (current.heal_history if current else ()) if now - t < window)
        if len(recent) >= deps.policy.heal_budget:
            raise BudgetExhausted(f"{len(recent)} heal(s) in the last {window.total_seconds():.0f}s")
        return {"heal_history": (*recent, now)}

    return admit


async def handle(event: BridgeDrift, deps: Deps) -> BridgePatched | BridgeFailed | None:
    healable = [f for f in event.findings if f.healable]
    current = await deps.state.get(event.name)
    if not healable or current is None:
        return None  # reported only (the audit recorded it), or the node was forgotten meanwhile
    try:
        state = await claim(deps, event.name, event.ip, event.role, admit=_budget(deps))
    except BudgetExhausted as exc:
        reason = f"heal budget exhausted: {exc}; findings: " + "; ".join(f.detail for f in healable)
        await mutate_state(deps.state, event.name, lambda s: s and with_error(s, reason, phase="failed"))
        return BridgeFailed(name=event.name, stage="heal", reason=reason, retryable=False)
    try:
        include_online = any(f.kind in DEVICE_KINDS for f in healable)
        await reap_stale_devices(deps, event.name, include_online=include_online)
        version = state.talos_version or await deps.talos.version(event.ip)
        # The extension config only: node-IP settings of a live kubelet are never touched by a heal.
        patch = await desired_patch(deps, event.name, event.ip, event.role, version, narrow_node_ip=False)
    except Exception as exc:
        await release(deps, event.name, f"heal could not start: {exc}", phase="verified")
        raise
    return await mint_and_apply(deps, state, patch, heal=True)
