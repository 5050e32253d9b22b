"""The castle misbehaving under the daemon: the Tailscale API failing 30% of calls with 429/5xx and
Retry-After, talosctl timing out (a slow apply, an unreachable node), Vault sealed then unsealed. Each
case ends in the state and the event an operator should see, and with the leak scan."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import subjects
from contracts.events import SchedulerTick
from daemon.bus.publisher import Publisher
from sim.tailnet_records import ApiError, FaultPlan
from tests.busutil import eventually
from tests.castle_fixtures import Castle, LogCapture, simulated_castle
from tests.fault_harness import dead_letters, in_process_leak_scan

# The default seed's fault sequence has a 429 (with Retry-After) among the first API calls, and 5xx
# after it; another seed (CASTLE_TAILNET_FAULT_SEED) explores other sequences.
DEFAULT_SEED = 2
SEED = int(os.environ.get("CASTLE_TAILNET_FAULT_SEED", DEFAULT_SEED))
PLACES = ("stream", "kv", "logs", "spans", "metrics", "argv")


async def _state(castle: Castle, name: str):  # type: ignore[no-untyped-def]
    assert castle.daemon is not None and castle.daemon.state is not None
    current = await castle.daemon.state.get(name)
    return current.state if current else None


async def _no_losses(castle: Castle) -> None:
    assert await dead_letters(castle.js, castle.stream) == []


async def test_tailscale_api_failing_30_percent_with_retry_after_still_verifies_every_node(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path, nats={"max_deliver": 10}) as castle:
            tailnet = castle.sim.tailnet
            injected: Counter[int] = Counter()
            draw = tailnet.draw_fault

            def counted() -> ApiError | None:
                fault = draw()
                if fault is not None:
                    injected[fault.status] += 1
                return fault

            tailnet.draw_fault = counted  # type: ignore[method-assign]
            tailnet.faults = FaultPlan(
                error_rate=0.3, statuses=(429, 500, 502, 503), retry_after=0.2, seed=SEED
            )
            names = [f"tazlab-k8s-worker-{i}" for i in range(1, 6)]
            for name in names:
                await castle.publish_created(name, castle.born(name))
            outcomes = await castle.wait_outcomes(names, within=90)
            assert outcomes == dict.fromkeys(names, "verified"), f"seed={SEED}"
            assert sum(injected.values()) >= 3, f"seed={SEED} injected={injected}"
            assert injected[429] >= 1 or SEED != DEFAULT_SEED, f"seed={SEED} injected={injected}"
            # An injected fault answers before the API acts, so no failed call ever minted a key.
            assert len(castle.bridge_keys()) == len(names), f"seed={SEED}"
            for name in names:
                state = await _state(castle, name)
                assert state.phase == "verified" and state.keys_minted == 1
            assert await castle.events(subjects.BRIDGE_FAILED) == []
            await _no_losses(castle)
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean(*PLACES)


async def test_talosctl_timing_out_on_the_apply_revokes_each_attempts_key_then_verifies(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    extra = {"talos": {"command_timeout_seconds": 1.0}, "nats": {"max_deliver": 10}}
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path, **extra) as castle:
            name = "tazlab-k8s-worker-1"
            ip = castle.born(name)
            castle.sim.talos.patch_delay = 2.0  # the apply outlives talosctl's timeout (and lands late)
            await castle.publish_created(name, ip)

            async def timed_out() -> bool:
                state = await _state(castle, name)
                return state is not None and "timed out" in (state.last_error or "")

            await eventually(timed_out, within=20, every=0.05)
            castle.sim.talos.patch_delay = 0.0
            assert await castle.wait_outcomes([name], within=40) == {name: "verified"}
            state = await _state(castle, name)
            minted = castle.bridge_keys()
            assert state.phase == "verified" and len(minted) >= 2
            # Each timed-out attempt revoked its key; only the key of the patch that worked is alive,
            # even though the late apply of an earlier attempt landed on the node with a revoked key.
            assert set(minted) - set(castle.sim.tailnet.revoked_keys) == {state.key_id}
            last_patched = (await castle.events(subjects.BRIDGE_PATCHED))[-1]
            assert last_patched["key_id"] == state.key_id
            assert await castle.events(subjects.BRIDGE_FAILED) == []
            await _no_losses(castle)
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean(*PLACES)


async def test_an_unreachable_node_is_waited_for_and_one_unreachable_past_the_deadline_fails_then_recovers(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    extra = {"talos": {"ready_deadline_seconds": 4.0}}
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path, **extra) as castle:
            talos = castle.sim.talos
            brief, lost = "tazlab-k8s-worker-1", "tazlab-k8s-worker-2"
            ips = {brief: castle.born(brief), lost: castle.born(lost)}
            for name, ip in ips.items():
                talos.set_unreachable(ip, True)
                await castle.publish_created(name, ip)

            async def polled_while_down() -> bool:
                return sum(ips[brief] in argv for argv in talos.invocations) >= 2

            await eventually(polled_while_down, within=10)
            talos.set_unreachable(ips[brief], False)
            outcomes = await castle.wait_outcomes([brief, lost], within=30)
            assert outcomes[brief] == "verified"
            [failed] = await castle.events(subjects.BRIDGE_FAILED)
            assert failed["name"] == lost and failed["stage"] == "talos" and failed["retryable"] is True
            assert ips[lost] in failed["reason"] and "not running after 4s" in failed["reason"]
            state = await _state(castle, lost)
            assert state.phase == "failed" and ips[lost] in (state.last_error or "")
            assert len(castle.bridge_keys()) == 1  # nothing was minted for the node that never answered

            talos.set_unreachable(ips[lost], False)  # it comes back: announcing it again bridges it
            await castle.publish_created(lost, ips[lost])

            async def recovered() -> bool:
                return [e["name"] for e in await castle.events(subjects.BRIDGE_VERIFIED)].count(lost) == 1

            await eventually(recovered, within=30, every=0.2)
            assert (await _state(castle, lost)).phase == "verified"
            await _no_losses(castle)
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean(*PLACES)


async def _tick(castle: Castle, n: int) -> None:
    await Publisher(castle.js).publish(
        SchedulerTick(job="check-vault", period_start=datetime.now(UTC)),
        subject=subjects.VAULT_CHECK_TICK,
        msg_id=f"check-vault:test-{n}",
    )


async def _reachability(castle: Castle, count: int) -> dict:  # type: ignore[type-arg]
    async def arrived() -> bool:
        return len(await castle.events(subjects.VAULT_REACHABILITY)) >= count

    await eventually(arrived, within=20, every=0.1)
    return (await castle.events(subjects.VAULT_REACHABILITY))[count - 1]


async def test_vault_sealed_fails_verification_and_reachability_then_unsealed_recovers_without_a_new_key(
    nats_server, tmp_path: Path, span_exporter: InMemorySpanExporter
):
    extra = {"bridge": {"verify_deadline_seconds": 3.0}}
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path, **extra) as castle:
            assert castle.daemon is not None and castle.daemon.state is not None
            castle.sim.vault.state = "sealed"
            name = "tazlab-k8s-worker-1"
            ip = castle.born(name)
            await castle.publish_created(name, ip)
            await _tick(castle, 1)
            sealed = await _reachability(castle, 1)
            http = next(c for c in sealed["checks"] if c["name"] == "http")
            assert sealed["ok"] is False and http["ok"] is False and "503" in http["detail"]
            await _tick(castle, 2)
            assert (await _reachability(castle, 2))["consecutive_failures"] == 2
            status = await castle.daemon.state.get_vault_status()
            assert status is not None and not status.ok and status.failing_step == "http"

            assert await castle.wait_outcomes([name], within=30) != {name: "verified"}
            [failed] = await castle.events(subjects.BRIDGE_FAILED)
            assert (
                failed["stage"] == "verify" and failed["reason"].startswith("vault:") and failed["retryable"]
            )
            assert (await _state(castle, name)).phase == "failed"

            castle.sim.vault.state = "active"  # unsealed
            await _tick(castle, 3)
            unsealed = await _reachability(castle, 3)
            assert unsealed["ok"] is True and unsealed["consecutive_failures"] == 0
            await castle.publish_created(name, ip)  # announced again: the bridge in place is adopted

            async def verified() -> bool:
                return bool(await castle.events(subjects.BRIDGE_VERIFIED))

            await eventually(verified, within=30, every=0.2)
            assert (await _state(castle, name)).phase == "verified"
            assert len(castle.bridge_keys()) == 1  # recovery re-verified the bridge; it minted nothing
            assert (await castle.daemon.state.get_vault_status()).ok
            await _no_losses(castle)
            scan = await in_process_leak_scan(castle, logs.text, span_exporter)
    scan.assert_clean(*PLACES)
