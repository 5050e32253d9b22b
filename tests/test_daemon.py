"""The assembled daemon on a real nats-server with recording fakes behind the ports: the chain runs
through the bus, state lands in KV, the HTTP surface answers; the embedded server starts and stops."""

from __future__ import annotations

import json

import httpx
import nats

from contracts import subjects
from daemon.app import Adapters, Daemon, embedded_url_file
from tests.busutil import payloads
from tests.daemon_fixtures import daemon_settings, running_daemon
from tests.fakes import make_world

IP = "192.168.1.31"
NAME = "tazlab-k8s-worker-7"


async def test_vm_created_travels_the_whole_chain_to_bridge_verified(nats_server, js):
    world = make_world()
    world.talos.add(IP, NAME)
    settings = daemon_settings(nats_server.url)
    adapters = Adapters(world.tailnet, world.talos, world.prober)
    async with running_daemon(nats_server, settings, adapters, clock=world.clock) as daemon:
        await js.publish(subjects.VM_CREATED, json.dumps({"name": NAME, "ip": IP, "vmid": 107}).encode())
        await daemon.runtime.idle(20)
        stream = settings.nats.stream
        verified = await payloads(js, stream, subjects.BRIDGE_VERIFIED)
        assert [v["name"] for v in verified] == [NAME]
        assert [p["name"] for p in await payloads(js, stream, subjects.TALOS_READY)] == [NAME]
        patched = await payloads(js, stream, subjects.BRIDGE_PATCHED)
        assert patched[0]["key_id"] == "k1FAKE"
        state = (await daemon.state.get(NAME)).state
        assert state.phase == "verified" and state.vmid == 107 and state.trace_parent
        async with httpx.AsyncClient(base_url=daemon.http_url) as http:
            assert (await http.get("/healthz")).json() == {"status": "alive"}
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["consumers_bound"] is True
            table = (await http.get("/v1/nodes")).json()["nodes"]
            assert [(n["name"], n["phase"]) for n in table] == [(NAME, "verified")]
            metrics = (await http.get("/metrics")).text
            assert "castle_bridge_events_handled_total{" in metrics and 'subject="bridge.patched"' in metrics


async def test_embedded_server_starts_with_the_daemon_and_stops_with_it(tmp_path):
    world = make_world()
    settings = daemon_settings(None, nats={"data_dir": str(tmp_path / "nats"), "embedded_port": 0})
    async with Daemon(
        settings, adapters=Adapters(world.tailnet, world.talos, world.prober), serve_http=False
    ) as d:
        assert d.embedded is not None and d.embedded.running
        url = embedded_url_file(settings).read_text().strip()
        assert url == d.embedded.url
        nc = await nats.connect(url)
        info = await nc.jetstream().stream_info(settings.nats.stream)
        assert set(info.config.subjects) == {"vm.>", "talos.>", "bridge.>", "vault.>"}
        await nc.close()
    assert not d.embedded.running
    assert not embedded_url_file(settings).exists()
    assert (tmp_path / "nats" / "jetstream").is_dir()  # the store stays for the next start
