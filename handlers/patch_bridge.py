"""talos.ready -> reap stale devices -> mint one key -> apply the patch (revoke on failure) -> bridge.patched.

Idempotent under redelivery, duplicates and crashes: a node whose recorded digest matches, whose tailscale
config is in place and whose device is online is never minted for again; at most it is verified again.
That includes a node patched by a replica that died before recording it: the bridge is adopted.
"""

from __future__ import annotations

from contracts.events import BridgeFailed, BridgePatched, TalosReady
from contracts.state import NodeState
from contracts.talos import BridgePatch
from handlers.bridging import claim, desired_patch, mint_and_apply, patched_event, reap_stale_devices, release
from handlers.deps import Deps
from handlers.devices import is_online, the_device
from handlers.nodeip import narrowing_decision
from handlers.state_ops import mutate_state

Existing = tuple[bool, BridgePatched | None]


def _claimed_elsewhere(deps: Deps, state: NodeState) -> bool:
    live = state.claim_until is not None and state.claim_until > deps.clock.now()
    return state.phase == "patching" and state.claim_owner != deps.replica and live


async def _existing_bridge(deps: Deps, state: NodeState | None, patch: BridgePatch) -> Existing:
    """(already bridged?, the event to verify it again, if it needs one)."""
    if (
        state is None
        or state.patch_digest != patch.digest
        or state.key_id is None
        or not state.key_expires_at
        or _claimed_elsewhere(deps, state)  # claim() will defer with Retry
    ):
        return False, None
    current = await deps.talos.extension_config(state.ip)
    if current is None or current.without_key() != patch.environment:
        return False, None
    if state.phase == "verified":
        return True, None  # a duplicate: the journey already ended verified
    if state.phase == "patched":
        # Announce it again: the state is written before the runtime stores bridge.patched, so the first
        # announcement may have been lost with the bus. A redelivery's copy keeps its de-duplication id.
        return True, patched_event(state, patch, state.key_id, state.key_expires_at)
    # The config is in place but the record says otherwise: a duplicate vm.created reset the phase, or
    # the replica that applied it died before recording the outcome. If the device joined, adopt it.
    now = deps.clock.now()
    device = the_device(await deps.tailnet.find_devices(state.name), state.name, deps.policy, now)
    if device is None or not is_online(device, now):
        return False, None
    adopted = {"phase": "patched", "claim_owner": None, "claim_until": None, "last_error": None}
    await mutate_state(deps.state, state.name, lambda s: s and s.model_copy(update=adopted))
    return True, patched_event(state, patch, state.key_id, state.key_expires_at)


async def handle(event: TalosReady, deps: Deps) -> BridgePatched | BridgeFailed | None:
    version = event.talos_version or await deps.talos.version(event.ip)
    narrow, note = await narrowing_decision(deps, event.ip)
    patch = await desired_patch(deps, event.name, event.ip, event.role, version, narrow_node_ip=narrow)
    current = await deps.state.get(event.name)
    bridged, again = await _existing_bridge(deps, current.state if current else None, patch)
    if bridged:
        return again
    state = await claim(deps, event.name, event.ip, event.role)
    try:
        await reap_stale_devices(deps, event.name)
    except Exception as exc:
        await release(deps, event.name, f"reaping stale devices failed: {exc}", phase="talos_ready")
        raise
    return await mint_and_apply(deps, state, patch, heal=False, note=note)
