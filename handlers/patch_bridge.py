"""talos.ready -> reap stale devices -> mint one key -> apply the patch (revoke on failure) -> bridge.patched.

Idempotent under redelivery and duplicates: a node whose recorded digest matches, whose tailscale config
is in place and whose device is online is never minted for again; at most it is verified again.
"""

from __future__ import annotations

from contracts.events import BridgeFailed, BridgePatched, TalosReady
from contracts.state import NodeState
from contracts.talos import BridgePatch
from handlers.bridging import claim, mint_and_apply, reap_stale_devices, release
from handlers.deps import Deps
from handlers.devices import is_online, the_device
from handlers.nodeip import narrowing_decision
from handlers.render import render_patch
from handlers.state_ops import mutate_state

Existing = tuple[bool, BridgePatched | None]


async def _existing_bridge(deps: Deps, state: NodeState | None, patch: BridgePatch) -> Existing:
    """(already bridged?, the event to verify it again, if it needs one)."""
    if (
        state is None
        or state.patch_digest != patch.digest
        or state.key_id is None
        or not state.key_expires_at
    ):
        return False, None
    current = await deps.talos.extension_config(state.ip)
    if current is None or current.without_key() != patch.environment:
        return False, None
    if state.phase in ("patched", "verified", "patching"):
        return True, None  # a duplicate or a redelivery; the verification under way decides
    device = the_device(
        await deps.tailnet.find_devices(state.name), state.name, deps.policy, deps.clock.now()
    )
    if device is None or not is_online(device, deps.clock.now()):
        return False, None
    await mutate_state(deps.state, state.name, lambda s: s and s.model_copy(update={"phase": "patched"}))
    return True, BridgePatched(
        name=state.name,
        ip=state.ip,
        role=state.role,
        key_id=state.key_id,
        key_expires_at=state.key_expires_at,
        patch_digest=patch.digest,
        talos_version=patch.talos_version,
    )


async def handle(event: TalosReady, deps: Deps) -> BridgePatched | BridgeFailed | None:
    version = event.talos_version or await deps.talos.version(event.ip)
    narrow, note = await narrowing_decision(deps, event.ip)
    patch = render_patch(
        node=event.name,
        ip=event.ip,
        role=event.role,
        talos_version=version,
        policy=deps.policy,
        auth_key=None,
        extension_exists=await deps.talos.extension_config(event.ip) is not None,
        narrow_node_ip=narrow,
    )
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
