"""vm.destroyed -> delete the node's tailnet device(s), revoke its last key, drop its state."""

from __future__ import annotations

from contracts.events import VmDestroyed
from handlers.bridging import reap_stale_devices, revoke_quietly
from handlers.deps import Deps


async def handle(event: VmDestroyed, deps: Deps) -> None:
    # Only devices carrying our tags: an operator's own untagged machine with the same name is not ours.
    await reap_stale_devices(deps, event.name, include_online=True)
    current = await deps.state.get(event.name)
    if current is not None and current.state.key_id:
        await revoke_quietly(deps, current.state.key_id)  # unused or consumed: revoking is harmless
    await deps.state.delete(event.name)
