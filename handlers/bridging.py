"""The steps shared by patch_bridge and heal_bridge: claim the node, reap stale devices, mint one key,
apply the patch, revoke the key if the patch fails, release the claim.

The claim (phase `patching` + owner + expiry, written compare-and-set) is what keeps two replicas from
both minting for the same node. The key id is recorded before the patch is applied, so a replica that
takes over an expired claim can revoke the key a crashed replica left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from contracts.errors import NotFound, Permanent, Retry
from contracts.events import BridgeFailed, BridgePatched
from contracts.state import NodeState
from contracts.tailnet import Device
from contracts.talos import BridgePatch
from contracts.types import Role
from handlers.deps import Deps
from handlers.devices import is_online, is_ours
from handlers.render import render_patch
from handlers.state_ops import mutate_state, with_error

Admit = Callable[[NodeState | None], dict[str, object]]


async def claim(deps: Deps, name: str, ip: str, role: Role, *, admit: Admit | None = None) -> NodeState:
    """Take the node's patch claim, or raise Retry while another replica holds a live one.

    `admit` runs inside the same compare-and-set: it may refuse (raise) or add fields (heal history),
    so a budget check and the claim can never be split by another replica.
    """
    now = deps.clock.now()
    orphan: list[str] = []

    def change(current: NodeState | None) -> NodeState:
        if current and current.phase == "patching" and current.claim_owner != deps.replica:
            if current.claim_until and current.claim_until > now:
                # Come back when the claim lapses, not before: every redelivery that finds it live
                # spends one of the message's max_deliver, and the owner may be dead (it holds the
                # claim until then). Shorter retries used up the budget before a 120 s claim lapsed.
                wait = (current.claim_until - now).total_seconds()
                raise Retry(f"{current.claim_owner} is patching {name}", delay=max(wait, 1.0))
            if current.key_id:
                orphan[:] = [current.key_id]  # minted by a replica that died before finishing
        base = current or NodeState(name=name, ip=ip, role=role, phase="talos_ready")
        until = now + timedelta(seconds=deps.policy.claim_seconds)
        extra = admit(current) if admit else {}
        return base.model_copy(
            update={
                "phase": "patching",
                "ip": ip,
                "role": role,
                "claim_owner": deps.replica,
                "claim_until": until,
                **extra,
            }
        )

    state = await mutate_state(deps.state, name, change)
    assert state is not None
    for key_id in orphan:
        await deps.tailnet.revoke_key(key_id)
    return state


async def release(deps: Deps, name: str, error: str | None, **updates: object) -> None:
    def change(current: NodeState | None) -> NodeState | None:
        if current is None or current.claim_owner != deps.replica:
            return None  # our claim lapsed and someone else owns the node now
        return with_error(current, error, claim_owner=None, claim_until=None, **updates)

    await mutate_state(deps.state, name, change)


def stale(devices: list[Device], deps: Deps, *, include_online: bool = False) -> list[Device]:
    """Our devices of a hostname that would push a new registration to `name-1`."""
    now = deps.clock.now()
    return [d for d in devices if is_ours(d, deps.policy) and (include_online or not is_online(d, now))]


async def reap_stale_devices(deps: Deps, name: str, *, include_online: bool = False) -> list[str]:
    """Delete our stale devices of this hostname (a device already gone counts as deleted)."""
    doomed = stale(await deps.tailnet.find_devices(name), deps, include_online=include_online)
    for device in doomed:
        await deps.tailnet.delete_device(device.node_id)
    return [d.node_id for d in doomed]


async def revoke_quietly(deps: Deps, key_id: str) -> None:
    try:
        await deps.tailnet.revoke_key(key_id)
    except NotFound:
        pass


async def mint_and_apply(
    deps: Deps, state: NodeState, patch: BridgePatch, *, heal: bool, note: str | None = None
) -> BridgePatched | BridgeFailed:
    """Mint one key, apply `patch` with it, and record the outcome. The key never leaves this call.

    `note` is recorded as the node's last error on success: something the operator should know (a
    node-IP setting deliberately left alone) that does not stop the bridge.
    """
    stage = "heal" if heal else "patch"
    try:
        key = await deps.tailnet.create_auth_key(state.name)
    except Permanent as exc:  # e.g. TagNotPermitted: configuration, not the event, is wrong
        await release(deps, state.name, exc.reason, phase="failed")
        return BridgeFailed(name=state.name, stage=stage, reason=exc.reason, retryable=False)
    except Exception as exc:
        await release(deps, state.name, f"minting failed: {exc}")
        raise

    def minted(current: NodeState | None) -> NodeState | None:
        # Recorded before applying, with the digest it is meant for: a replica taking over after a
        # crash can revoke this key, or see that this very patch landed and adopt it instead.
        if current is None:
            return None
        update = {"key_id": key.key_id, "key_expires_at": key.expires, "patch_digest": patch.digest}
        return current.model_copy(update={**update, "keys_minted": current.keys_minted + 1})

    await mutate_state(deps.state, state.name, minted)
    try:
        await deps.talos.apply_patch(state.ip, patch.model_copy(update={"auth_key": key.secret}))
    except Permanent as exc:
        await revoke_quietly(deps, key.key_id)
        reason = f"patch rejected by {state.ip}: {exc.reason}"
        await release(deps, state.name, reason, phase="failed")
        return BridgeFailed(name=state.name, stage=stage, reason=reason, retryable=False)
    except Exception as exc:  # transient: the message is retried, a new key minted then
        await revoke_quietly(deps, key.key_id)
        await release(deps, state.name, f"patch not applied: {exc}", phase="talos_ready")
        raise
    await release(deps, state.name, note, phase="patched", patch_digest=patch.digest)
    return patched_event(state, patch, key.key_id, key.expires, heal=heal)


def patched_event(
    state: NodeState, patch: BridgePatch, key_id: str, expires: datetime, *, heal: bool = False
) -> BridgePatched:
    return BridgePatched(
        name=state.name,
        ip=state.ip,
        role=state.role,
        key_id=key_id,
        key_expires_at=expires,
        patch_digest=patch.digest,
        talos_version=patch.talos_version,
        heal=heal,
    )


async def desired_patch(
    deps: Deps, name: str, ip: str, role: Role, talos_version: str, *, narrow_node_ip: bool
) -> BridgePatch:
    """The patch for the node as it is now (keyless: the key is attached only when applying)."""
    return render_patch(
        node=name,
        ip=ip,
        role=role,
        talos_version=talos_version,
        policy=deps.policy,
        auth_key=None,
        extension_exists=await deps.talos.extension_config(ip) is not None,
        narrow_node_ip=narrow_node_ip,
    )
