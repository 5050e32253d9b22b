"""vm.created -> wait for the node's Talos API (backoff, deadline) -> talos.ready."""

from __future__ import annotations

from contracts.errors import Transient
from contracts.events import BridgeFailed, TalosReady, VmCreated
from contracts.state import NodeState
from handlers.deps import Deps
from handlers.state_ops import mutate_state, with_error


def _discovered(event: VmCreated) -> NodeState:
    return NodeState(name=event.name, ip=event.ip, role=event.role, vmid=event.vmid, phase="waiting_talos")


async def _record_discovered(deps: Deps, event: VmCreated) -> None:
    def change(current: NodeState | None) -> NodeState | None:
        if current is None:
            return _discovered(event)
        if current.phase == "patching":
            return None  # a replica is mid-patch; its outcome decides the phase
        # A re-created VM keeps its history (digest, heals) but its journey starts again.
        update = {"ip": event.ip, "role": event.role, "vmid": event.vmid, "phase": "waiting_talos"}
        return with_error(current, None, **update)

    await mutate_state(deps.state, event.name, change)


async def _gave_up(deps: Deps, event: VmCreated, seen: str) -> BridgeFailed:
    reason = f"Talos API at {event.ip} not running after {deps.policy.talos_deadline_seconds:.0f}s ({seen})"
    await mutate_state(deps.state, event.name, lambda s: s and with_error(s, reason, phase="failed"))
    return BridgeFailed(name=event.name, stage="talos", reason=reason, retryable=True)


async def handle(event: VmCreated, deps: Deps) -> TalosReady | BridgeFailed:
    await _record_discovered(deps, event)
    deadline = deps.clock.now().timestamp() + deps.policy.talos_deadline_seconds
    delay = deps.policy.talos_poll_seconds
    seen = "no answer"
    while True:
        try:
            status = await deps.talos.machine_status(event.ip)
            if status.running:
                break
            seen = f"stage {status.stage}"
        except Transient as exc:
            seen = exc.reason
        if deps.clock.now().timestamp() >= deadline:
            return await _gave_up(deps, event, seen)
        await deps.clock.sleep(delay)
        delay = min(delay * 2, 30.0)
    version = await deps.talos.version(event.ip)
    await mutate_state(
        deps.state,
        event.name,
        lambda s: s and with_error(s, None, phase="talos_ready", talos_version=version),
    )
    return TalosReady(name=event.name, ip=event.ip, role=event.role, talos_version=version)
