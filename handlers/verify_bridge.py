"""bridge.patched -> poll every verification check until all pass or the deadline -> verified / failed.

The deadline is generous (default 5 minutes): MagicDNS and joins can take minutes after a restart.
"""

from __future__ import annotations

from contracts.checks import CheckResult, first_failure
from contracts.events import BridgeFailed, BridgePatched, BridgeVerified
from contracts.tailnet import Device
from handlers.checks import run_checks
from handlers.deps import Deps
from handlers.state_ops import mutate_state, with_error


async def _verified(
    deps: Deps, event: BridgePatched, checks: list[CheckResult], device: Device
) -> BridgeVerified:
    update = {
        "phase": "verified",
        "device_id": device.node_id,
        "tailnet_ips": device.addresses,
        "magicdns_name": device.name,
        "last_verified": deps.clock.now(),
        "last_checks": tuple(checks),
        "last_error": None,
    }
    await mutate_state(deps.state, event.name, lambda s: s and s.model_copy(update=update))
    return BridgeVerified(
        name=event.name,
        device_id=device.node_id,
        tailnet_ips=device.addresses,
        magicdns_name=device.name,
        checks=tuple(checks),
    )


async def _failed(deps: Deps, event: BridgePatched, checks: list[CheckResult]) -> BridgeFailed:
    failing = first_failure(checks)
    reason = f"{failing.name}: {failing.detail}" if failing else "no tailnet device"
    error = f"verification failed: {reason}"
    await mutate_state(
        deps.state,
        event.name,
        lambda s: s and with_error(s, error, phase="failed", last_checks=tuple(checks)),
    )
    return BridgeFailed(name=event.name, stage="verify", reason=reason, retryable=True, checks=tuple(checks))


async def handle(event: BridgePatched, deps: Deps) -> BridgeVerified | BridgeFailed:
    deadline = deps.clock.now().timestamp() + deps.policy.verify_deadline_seconds
    while True:
        checks, device = await run_checks(deps, event.name, event.ip)
        if first_failure(checks) is None and device is not None:
            return await _verified(deps, event, checks, device)
        if deps.clock.now().timestamp() >= deadline:
            return await _failed(deps, event, checks)
        await deps.clock.sleep(deps.policy.verify_poll_seconds)
