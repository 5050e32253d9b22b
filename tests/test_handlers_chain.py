"""The chain's handlers called directly with recording fakes: await_talos, patch_bridge, verify_bridge,
forget_node. No network; the clock is injected, so deadlines of minutes take no time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from contracts.errors import Permanent, Retry, Transient
from contracts.events import BridgeFailed, BridgePatched, BridgeVerified, TalosReady, VmCreated, VmDestroyed
from contracts.state import NodeState
from handlers import await_talos, forget_node, patch_bridge, verify_bridge
from tests.fakes import DOMAIN, make_world

IP = "192.168.1.21"
NAME = "tazlab-k8s-worker-1"


def ready(**kw: object) -> TalosReady:
    return TalosReady.model_validate({"name": NAME, "ip": IP, **kw})


async def test_await_talos_polls_with_backoff_until_running():
    w = make_world()
    w.talos.add(IP, NAME, version="v1.14.0")
    w.talos.stage_script[IP] = ["down", "down", "booting", "running"]
    out = await await_talos.handle(VmCreated(name=NAME, ip=IP, vmid=301), w.deps)
    assert out == TalosReady(name=NAME, ip=IP, role="worker", talos_version="v1.14.0")
    assert w.clock.slept == [5.0, 10.0, 20.0]
    state = w.state.state(NAME)
    assert state.phase == "talos_ready" and state.vmid == 301 and state.talos_version == "v1.14.0"


async def test_await_talos_gives_up_at_the_deadline_naming_what_it_saw():
    w = make_world(talos_deadline_seconds=60)
    w.talos.add(IP, NAME)
    w.talos.stage_script[IP] = ["booting"] * 100
    out = await await_talos.handle(VmCreated(name=NAME, ip=IP), w.deps)
    assert isinstance(out, BridgeFailed) and out.stage == "talos" and out.retryable
    assert "not running after 60s (stage booting)" in out.reason
    assert w.state.state(NAME).phase == "failed"


async def test_patch_reaps_stale_device_mints_once_and_applies_with_the_key_on_the_node_only():
    w = make_world()
    node = w.talos.add(IP, NAME)
    stale = w.tailnet.add_device(NAME, online=False)
    personal = w.tailnet.add_device(NAME, online=False, tags=())  # not ours: never touched
    out = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(out, BridgePatched)
    assert w.tailnet.key_requests == [NAME]
    assert w.tailnet.deleted == [stale.node_id] and personal.node_id in w.tailnet.devices
    [applied] = node.applied
    assert node.keys_seen == [w.tailnet.secrets[0]]
    assert applied.environment[0] == f"TS_HOSTNAME={NAME}" and not applied.delete_existing
    assert applied.node_ip_documents  # subnets were unset and kubelet runs on the lab IP
    assert out.key_id == "k3FAKE"  # ids 1 and 2 went to the two devices added above
    state = w.state.state(NAME)
    assert state.phase == "patched" and state.patch_digest == out.patch_digest == applied.digest
    assert state.key_id == out.key_id and state.keys_minted == 1 and state.claim_owner is None
    assert w.tailnet.secrets[0] not in state.model_dump_json() + out.model_dump_json()


async def test_duplicate_talos_ready_for_a_bridged_node_does_not_mint_again():
    w = make_world()
    w.talos.add(IP, NAME)
    first = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(first, BridgePatched)
    # Still `patched`: announced again (the first announcement may have been lost with the bus), not minted.
    again = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(again, BridgePatched) and again.key_id == first.key_id
    await verify_bridge.handle(first, w.deps)
    assert await patch_bridge.handle(ready(), w.deps) is None
    assert len(w.tailnet.key_requests) == 1


async def test_rebirth_after_vm_created_reverifies_without_minting_when_the_bridge_is_intact():
    w = make_world()
    w.talos.add(IP, NAME)
    patched = await patch_bridge.handle(ready(), w.deps)
    await verify_bridge.handle(patched, w.deps)
    await await_talos.handle(VmCreated(name=NAME, ip=IP), w.deps)  # a duplicate vm.created
    again = await patch_bridge.handle(ready(talos_version="v1.13.9"), w.deps)
    assert isinstance(again, BridgePatched) and again.key_id == patched.key_id
    assert len(w.tailnet.key_requests) == 1


async def test_a_reborn_node_without_its_config_is_bridged_again():
    w = make_world()
    node = w.talos.add(IP, NAME)
    patched = await patch_bridge.handle(ready(), w.deps)
    await verify_bridge.handle(patched, w.deps)
    node.environment, node.running = None, False  # the VM was re-created from scratch
    w.tailnet.set_online(NAME, False)
    again = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(again, BridgePatched) and again.key_id != patched.key_id
    assert len(w.tailnet.deleted) == 1  # the old, offline device was reaped first


async def test_rejected_patch_revokes_the_key_and_fails_without_retry():
    w = make_world()
    w.talos.add(IP, NAME, reject="environment: invalid entry")
    out = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(out, BridgeFailed) and out.stage == "patch" and not out.retryable
    assert "validation failed" in out.reason
    assert w.tailnet.revoked == ["k1FAKE"]
    state = w.state.state(NAME)
    assert (
        state.phase == "failed"
        and state.claim_owner is None
        and "validation failed" in (state.last_error or "")
    )


async def test_transient_apply_failure_revokes_the_key_releases_the_claim_and_retries():
    w = make_world()
    node = w.talos.add(IP, NAME)
    original = w.talos.apply_patch

    async def flaky(ip, patch):
        node.unreachable = True
        try:
            return await original(ip, patch)
        finally:
            node.unreachable = False

    w.talos.apply_patch = flaky  # type: ignore[method-assign]
    with pytest.raises(Transient):
        await patch_bridge.handle(ready(), w.deps)
    assert w.tailnet.revoked == ["k1FAKE"]
    state = w.state.state(NAME)
    assert state.phase == "talos_ready" and state.claim_owner is None


async def test_a_live_claim_of_another_replica_defers_without_minting():
    w = make_world(replica="replica-b")
    w.talos.add(IP, NAME)
    until = w.clock.now() + timedelta(seconds=60)
    await w.state.create(
        NodeState(
            name=NAME, ip=IP, phase="patching", claim_owner="replica-a", claim_until=until, key_id="k9FAKE"
        )
    )
    with pytest.raises(Retry) as caught:
        await patch_bridge.handle(ready(), w.deps)
    assert "replica-a is patching" in caught.value.reason and caught.value.delay == 60.0  # until it lapses
    assert w.tailnet.key_requests == [] and w.tailnet.revoked == []


async def test_an_expired_claim_is_taken_over_and_the_orphan_key_revoked():
    w = make_world(replica="replica-b")
    w.talos.add(IP, NAME)
    await w.state.create(
        NodeState(
            name=NAME,
            ip=IP,
            phase="patching",
            claim_owner="replica-a",
            claim_until=w.clock.now() - timedelta(seconds=1),
            key_id="k9FAKE",
            keys_minted=1,
        )
    )
    out = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(out, BridgePatched)
    assert w.tailnet.revoked == ["k9FAKE"] and w.state.state(NAME).keys_minted == 2


async def test_node_ip_narrowing_is_never_changed_on_a_kubelet_running_elsewhere():
    w = make_world()
    node = w.talos.add(IP, NAME)
    node.kubelet_ips = ("100.64.0.9",)
    out = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(out, BridgePatched)
    assert node.applied[0].node_ip_documents == ()
    assert "not changed (it would break the CNI)" in (w.state.state(NAME).last_error or "")


async def test_existing_other_subnets_are_left_alone_and_existing_config_is_replaced():
    w = make_world()
    node = w.talos.add(
        IP, NAME, subnets=("10.0.0.0/8",), environment=("TS_AUTHKEY=<redacted>", "TS_HOSTNAME=old")
    )
    out = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(out, BridgePatched)
    assert node.applied[0].node_ip_documents == () and node.applied[0].delete_existing


async def test_unknown_talos_version_is_refused_before_anything_is_minted():
    w = make_world()
    w.talos.add(IP, NAME, version="v1.7.0")
    with pytest.raises(Permanent, match=r"Talos v1\.7\.0 is not supported"):
        await patch_bridge.handle(ready(), w.deps)
    assert w.tailnet.key_requests == []


async def test_verify_polls_until_every_check_passes():
    w = make_world()
    w.talos.add(IP, NAME)
    patched = await patch_bridge.handle(ready(), w.deps)
    device = next(iter(w.tailnet.devices.values()))
    w.prober.unreachable.add(device.addresses[0])
    calls = 0
    original = w.prober.mesh

    async def recovering(address, port=50000):
        nonlocal calls
        calls += 1
        if calls == 3:
            w.prober.unreachable.clear()
        return await original(address, port)

    w.prober.mesh = recovering  # type: ignore[method-assign]
    out = await verify_bridge.handle(patched, w.deps)
    assert isinstance(out, BridgeVerified)
    assert out.magicdns_name == f"{NAME}.{DOMAIN}" and out.device_id == device.node_id
    assert {c.name for c in out.checks} == {"tailnet", "service", "tailscale0", "node_ip", "mesh", "vault"}
    assert w.prober.mesh_calls[0] == (device.addresses[0], 50000)
    state = w.state.state(NAME)
    assert (
        state.phase == "verified"
        and state.last_verified == w.clock.now()
        and state.device_id == device.node_id
    )


async def test_verify_fails_at_the_deadline_naming_the_failing_check():
    w = make_world(verify_deadline_seconds=60, verify_poll_seconds=10)
    w.talos.add(IP, NAME)
    patched = await patch_bridge.handle(ready(), w.deps)
    w.prober.vault_ok = False
    out = await verify_bridge.handle(patched, w.deps)
    assert isinstance(out, BridgeFailed) and out.stage == "verify" and out.retryable
    assert out.reason == "vault: http: 503 sealed=true"
    assert sum(w.clock.slept) == 60
    assert w.state.state(NAME).phase == "failed"


async def test_verify_flags_a_renamed_device():
    w = make_world(verify_deadline_seconds=10)
    w.talos.add(IP, NAME)
    patched = await patch_bridge.handle(ready(), w.deps)
    [device] = w.tailnet.devices.values()
    w.tailnet.devices[device.node_id] = device.model_copy(update={"name": f"{NAME}-1.{DOMAIN}"})
    out = await verify_bridge.handle(patched, w.deps)
    assert isinstance(out, BridgeFailed) and out.reason.startswith("tailnet: MagicDNS name is")


async def test_forget_deletes_our_devices_revokes_the_key_and_drops_state():
    w = make_world()
    w.talos.add(IP, NAME)
    await patch_bridge.handle(ready(), w.deps)
    personal = w.tailnet.add_device(NAME, tags=())
    await forget_node.handle(VmDestroyed(name=NAME), w.deps)
    assert list(w.tailnet.devices) == [personal.node_id]
    assert w.tailnet.revoked == ["k1FAKE"] and await w.state.get(NAME) is None
    await forget_node.handle(VmDestroyed(name=NAME), w.deps)  # already gone: still fine


async def test_a_patch_that_landed_before_its_replica_died_is_adopted_not_minted_again():
    w = make_world(replica="replica-b")
    node = w.talos.add(IP, NAME)
    first = await patch_bridge.handle(ready(), w.deps)  # replica-a's work, as it happened
    assert isinstance(first, BridgePatched) and node.running
    # ...but replica-a died before recording the outcome: the record still shows its expired claim.
    crashed = w.state.state(NAME).model_copy(
        update={
            "phase": "patching",
            "claim_owner": "replica-a",
            "claim_until": w.clock.now() - timedelta(seconds=1),
        }
    )
    await w.state.update(crashed, (await w.state.get(NAME)).revision)
    again = await patch_bridge.handle(ready(), w.deps)
    assert isinstance(again, BridgePatched) and again.key_id == first.key_id
    assert len(w.tailnet.key_requests) == 1 and w.tailnet.revoked == []
    state = w.state.state(NAME)
    assert state.phase == "patched" and state.claim_owner is None
