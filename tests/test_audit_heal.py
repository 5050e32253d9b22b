"""Audit and self-healing through the simulated castle: drift injected by hand is found and, where
allowed, healed back to verified; passing glitches are confirmed before they count; the heal budget
holds under a flapping node. The daemon's clock is injected, so a 10-minute budget window takes no time."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from contracts import subjects
from contracts.events import SchedulerTick
from daemon.bus.publisher import Publisher
from tests.busutil import eventually
from tests.castle_fixtures import Castle, simulated_castle

NAME = "tazlab-k8s-worker-1"


class OffsetClock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def audit(castle: Castle) -> None:
    tick = SchedulerTick(job="audit-bridges", period_start=datetime.now(UTC))
    await Publisher(castle.js).publish(tick, subject=subjects.BRIDGE_AUDIT_TICK, msg_id=str(uuid.uuid4()))


async def verified_count(castle: Castle, name: str = NAME) -> int:
    return sum(1 for v in await castle.events(subjects.BRIDGE_VERIFIED) if v["name"] == name)


async def bridged(castle: Castle, name: str = NAME) -> str:
    ip = castle.born(name)
    await castle.publish_created(name, ip)
    await castle.wait_outcomes([name])
    return ip


async def heal_round(castle: Castle, verified_before: int) -> list[dict]:
    """Audit, then wait for the heal's verification; returns the drift findings."""
    await audit(castle)

    async def healed() -> bool:
        return await verified_count(castle) > verified_before

    await eventually(healed, within=30, every=0.2)
    drifts = [d for d in await castle.events(subjects.BRIDGE_DRIFT) if d["name"] == NAME]
    return drifts[-1]["findings"]


async def test_a_device_deleted_by_hand_is_found_and_healed(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        await bridged(castle)
        state = (await castle.daemon.state.get(NAME)).state
        castle.sim.tailnet.delete_device_by_hand(state.device_id)
        findings = await heal_round(castle, 1)
        assert [f["kind"] for f in findings] == ["device_missing"]
        healed = [p for p in await castle.events(subjects.BRIDGE_PATCHED) if p["heal"]]
        assert len(healed) == 1 and len(castle.bridge_keys()) == 2
        state = (await castle.daemon.state.get(NAME)).state
        assert state.phase == "verified" and len(state.heal_history) == 1
        assert state.magicdns_name == f"{NAME}.magellanic-gondola.ts.net"


async def test_a_removed_extension_config_is_healed(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = await bridged(castle)
        castle.sim.talos.remove_extension_config(ip)
        findings = await heal_round(castle, 1)
        assert "config_missing" in {f["kind"] for f in findings}
        node = castle.sim.talos.node(ip)
        assert node.tailscale_document() is not None
        assert (await castle.daemon.state.get(NAME)).state.phase == "verified"


async def test_lost_tailscale_state_is_healed_without_a_dash_one_name(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = await bridged(castle)
        castle.sim.talos.lose_tailscale_state(ip)  # the single-use key is spent: the rejoin fails
        findings = await heal_round(castle, 1)
        assert {"service_not_running", "device_offline"} <= {f["kind"] for f in findings}
        [last] = [v for v in await castle.events(subjects.BRIDGE_VERIFIED) if v["name"] == NAME][-1:]
        assert last["magicdns_name"] == f"{NAME}.magellanic-gondola.ts.net"


async def test_a_node_ip_outside_the_lab_is_reported_and_never_changed(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = await bridged(castle)
        castle.sim.talos.set_kubelet_node_ip(ip, "100.71.3.9")
        await audit(castle)

        async def drifted() -> bool:
            return any(d["name"] == NAME for d in await castle.events(subjects.BRIDGE_DRIFT))

        await eventually(drifted, within=15, every=0.2)
        await castle.daemon.runtime.idle(15)
        [drift] = await castle.events(subjects.BRIDGE_DRIFT)
        assert [(f["kind"], f["healable"]) for f in drift["findings"]] == [("node_ip_outside_lab", False)]
        assert len(castle.bridge_keys()) == 1  # no heal: changing a live kubelet's node IP breaks the CNI
        assert not [p for p in await castle.events(subjects.BRIDGE_PATCHED) if p["heal"]]
        state = (await castle.daemon.state.get(NAME)).state
        assert "100.71.3.9" in state.last_error and "not auto-healed" in state.last_error


async def test_a_passing_glitch_is_confirmed_on_a_second_look_and_not_counted(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path, bridge={"confirm_seconds": 1.0}) as castle:
        await bridged(castle)
        device_id = (await castle.daemon.state.get(NAME)).state.device_id
        castle.sim.tailnet.set_connected(device_id, False)  # a blip: back before the second look
        await audit(castle)
        await asyncio.sleep(0.4)
        castle.sim.tailnet.set_connected(device_id, True)
        await castle.daemon.runtime.idle(15)
        assert await castle.events(subjects.BRIDGE_DRIFT) == []
        assert len(castle.bridge_keys()) == 1


async def test_the_heal_budget_holds_under_a_flapping_node(nats_server, tmp_path):
    clock = OffsetClock()
    async with simulated_castle(nats_server, tmp_path, clock=clock) as castle:
        ip = await bridged(castle)
        castle.sim.talos.lose_tailscale_state(ip)
        await heal_round(castle, 1)  # the first heal fits the budget (one per 10 minutes)

        castle.sim.talos.lose_tailscale_state(ip)  # it flaps again at once
        await audit(castle)

        async def refused() -> bool:
            return any(f["stage"] == "heal" for f in await castle.events(subjects.BRIDGE_FAILED))

        await eventually(refused, within=15, every=0.2)
        [failure] = [f for f in await castle.events(subjects.BRIDGE_FAILED) if f["stage"] == "heal"]
        assert failure["reason"].startswith("heal budget exhausted") and failure["retryable"] is False
        assert len(castle.bridge_keys()) == 2
        assert (await castle.daemon.state.get(NAME)).state.phase == "failed"

        clock.offset = timedelta(minutes=11)  # the window has passed: the next audit heals again
        findings = await heal_round(castle, 2)
        assert "device_offline" in {f["kind"] for f in findings}
        assert len(castle.bridge_keys()) == 3
        assert (await castle.daemon.state.get(NAME)).state.phase == "verified"
