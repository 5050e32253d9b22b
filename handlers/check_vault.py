"""Scheduler tick -> run the Vault reachability matrix -> vault.reachability (failures counted)."""

from __future__ import annotations

from contracts.checks import first_failure
from contracts.events import SchedulerTick, VaultReachability
from contracts.state import VaultStatus
from handlers.deps import Deps


async def handle(event: SchedulerTick, deps: Deps) -> VaultReachability:
    report = await deps.prober.vault()
    previous = await deps.state.get_vault_status()
    failures = 0 if report.ok else (previous.consecutive_failures if previous else 0) + 1
    failing = first_failure(report.checks)
    await deps.state.put_vault_status(
        VaultStatus(
            ok=report.ok,
            url=report.url,
            checked_at=deps.clock.now(),
            consecutive_failures=failures,
            failing_step=failing.name if failing else None,
            checks=report.checks,
        )
    )
    return VaultReachability(
        ok=report.ok, url=report.url, checks=report.checks, consecutive_failures=failures
    )
