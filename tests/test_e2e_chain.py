"""End to end through the real bus, the talosctl-compatible simulator executable and the simulated
Tailscale control plane over HTTP: what an operator sees when VMs are born, die and misbehave."""

from __future__ import annotations

import json

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from contracts import subjects
from contracts.events import VmDestroyed
from daemon.bus.publisher import Publisher
from daemon.observability import setup_telemetry
from sim.tailnet_records import FaultPlan
from tests.busutil import eventually, stream_messages
from tests.castle_fixtures import LogCapture, bus_text, scan_for, simulated_castle


async def test_rebirth_of_several_nodes_ends_verified_with_exact_names_and_one_key_each(
    nats_server, tmp_path, span_exporter: InMemorySpanExporter
):
    with LogCapture() as logs:
        async with simulated_castle(nats_server, tmp_path) as castle:
            nodes = {
                "tazlab-k8s-cp-1": "controlplane",
                "tazlab-k8s-worker-1": "worker",
                "tazlab-k8s-worker-2": "worker",
            }
            stale = await castle.sim.add_stale_device("tazlab-k8s-worker-1")  # a previous life's device
            ips = {
                name: castle.born(name, role=role, talos_version="v1.14.0" if role == "worker" else "v1.13.9")
                for name, role in nodes.items()
            }
            for name, role in nodes.items():
                await castle.publish_created(name, ips[name], role)
            outcomes = await castle.wait_outcomes(list(nodes))
            assert outcomes == dict.fromkeys(nodes, "verified")

            verified = {v["name"]: v for v in await castle.events(subjects.BRIDGE_VERIFIED)}
            for name in nodes:
                assert verified[name]["magicdns_name"] == f"{name}.magellanic-gondola.ts.net"
                assert verified[name]["tailnet_ips"][0].startswith("100.")
                assert {c["name"] for c in verified[name]["checks"]} >= {
                    "tailnet",
                    "mesh",
                    "vault",
                    "node_ip",
                }
            assert stale.node_id in castle.sim.tailnet.deleted_devices
            ours = [
                r
                for r in castle.sim.tailnet.key_requests
                if r.get("description", "").startswith("castle-bridge")
            ]
            assert len(ours) == len(nodes)  # the castle's own infra devices were minted for separately
            for request in ours:
                create = request["capabilities"]["devices"]["create"]
                assert create == {
                    "reusable": False,
                    "ephemeral": False,
                    "preauthorized": True,
                    "tags": ["tag:tazlab-k8s"],
                }
                assert request["expirySeconds"] == 600 and request["description"].startswith(
                    "castle-bridge tazlab"
                )
            # The patch replaced nothing on the first apply and narrowed node IP for every version.
            worker = castle.sim.talos.node(ips["tazlab-k8s-worker-1"])
            assert worker.kubelet_node_ip() == ips["tazlab-k8s-worker-1"]

            state = await castle.daemon.state.list()
            assert {s.name: s.phase for s in state} == dict.fromkeys(nodes, "verified")

            # The leak scan: every message (headers and bodies), every KV entry with its history, every
            # log line, every span, the metrics, and every talosctl argv. Nothing holds a secret.
            secrets = castle.sim.secrets()
            assert len(secrets) >= len(nodes)
            kv = "\n".join(
                m.data.decode()
                for m in await stream_messages(castle.js, f"KV_{castle.settings.nats.kv_bucket}")
            )
            spans = "\n".join(
                json.dumps(
                    {
                        "name": s.name,
                        "attrs": dict(s.attributes or {}),
                        "status": s.status.description,
                        "events": [dict(e.attributes or {}) for e in s.events],
                    },
                    default=str,
                )
                for s in span_exporter.get_finished_spans()
            )
            metrics = generate_latest(setup_telemetry().registry).decode()
            argv = "\n".join(" ".join(a) for a in castle.sim.talos.invocations)
            assert "patch" in argv and "@/dev/stdin" in argv
            found = scan_for(
                secrets, await bus_text(castle.js, castle.stream), kv, logs.text, spans, metrics, argv
            )
            assert found == []
            assert '"event handled"' in logs.text or "event handled" in logs.text


async def test_a_rejected_patch_revokes_the_key_and_reports_bridge_failed(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = castle.born("tazlab-k8s-worker-5")
        castle.sim.talos.reject_patches(ip, "machine.kubelet: invalid field")
        await castle.publish_created("tazlab-k8s-worker-5", ip)
        outcomes = await castle.wait_outcomes(["tazlab-k8s-worker-5"])
        assert "patch rejected" in outcomes["tazlab-k8s-worker-5"]
        [failed] = await castle.events(subjects.BRIDGE_FAILED)
        assert failed["stage"] == "patch" and failed["retryable"] is False
        minted = castle.bridge_keys()
        assert castle.sim.tailnet.revoked_keys == minted != []
        state = (await castle.daemon.state.get("tazlab-k8s-worker-5")).state
        assert state.phase == "failed" and "invalid field" in state.last_error


async def test_a_flapping_tailscale_api_still_ends_with_every_node_verified(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        castle.sim.tailnet.faults = FaultPlan(error_rate=0.3, retry_after=0.05, seed=7)
        names = [f"tazlab-k8s-worker-{i}" for i in range(1, 5)]
        for name in names:
            await castle.publish_created(name, castle.born(name))
        outcomes = await castle.wait_outcomes(names, within=60)
        assert outcomes == dict.fromkeys(names, "verified")
        assert len(castle.bridge_keys()) >= len(names)


async def test_a_duplicate_vm_created_mints_once(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = castle.born("tazlab-k8s-worker-3")
        await castle.publish_created("tazlab-k8s-worker-3", ip, msg_id="hook-1")
        await castle.publish_created("tazlab-k8s-worker-3", ip, msg_id="hook-1")  # a retried hook: deduped
        await castle.wait_outcomes(["tazlab-k8s-worker-3"])
        await castle.publish_created("tazlab-k8s-worker-3", ip)  # a second publisher announces it again
        await eventually(lambda: castle.daemon.runtime.in_flight == 0, within=5)
        await castle.daemon.runtime.idle(30)
        assert len(castle.bridge_keys()) == 1
        assert len(await castle.events(subjects.VM_CREATED)) == 2
        assert {s.phase for s in await castle.daemon.state.list()} == {"verified"}


async def test_vm_destroyed_deletes_the_device_and_the_state(nats_server, tmp_path):
    async with simulated_castle(nats_server, tmp_path) as castle:
        ip = castle.born("tazlab-k8s-worker-4")
        await castle.publish_created("tazlab-k8s-worker-4", ip)
        await castle.wait_outcomes(["tazlab-k8s-worker-4"])
        [device] = await castle.events(subjects.BRIDGE_VERIFIED)
        castle.sim.talos.destroy(ip)
        await Publisher(castle.js).publish(VmDestroyed(name="tazlab-k8s-worker-4"))
        await eventually(lambda: device["device_id"] in castle.sim.tailnet.deleted_devices, within=15)
        await castle.daemon.runtime.idle(15)
        assert castle.sim.tailnet.device(device["device_id"]) is None
        assert await castle.daemon.state.get("tazlab-k8s-worker-4") is None
