"""`castle-bridge run` as an operator runs it: refusals naming the setting, and the real process on its
embedded nats-server bridging a simulated node, then stopping cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nats
import pytest

from contracts import subjects
from contracts.events import VmCreated
from daemon.bus.publisher import Publisher
from daemon.cli import main
from daemon.natsserver import free_port
from sim.castle import SimCastle
from tests.busutil import eventually, payloads

CASTLE_BRIDGE = str(Path(sys.executable).parent / "castle-bridge")


def env_of(sections: dict[str, dict[str, object]]) -> dict[str, str]:
    """Settings sections as CASTLE_BRIDGE_* variables (lists as JSON), the way a deployment sets them."""
    out = {}
    for section, values in sections.items():
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[f"CASTLE_BRIDGE_{section.upper()}__{key.upper()}"] = text
    return out


def test_run_refuses_to_start_without_oauth_credentials_and_says_which(monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith("CASTLE_BRIDGE_"):
            monkeypatch.delenv(name)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert (
        "CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_ID" in err
        and "CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_SECRET" in err
    )


def test_run_refuses_a_missing_talosctl(monkeypatch, capsys):
    monkeypatch.setenv("CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_ID", "k1CNTRL")
    monkeypatch.setenv("CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_SECRET", "tskey-client-x")
    monkeypatch.setenv("CASTLE_BRIDGE_TALOS__TALOSCTL", "/nonexistent/talosctl")
    assert main(["run"]) == 2
    assert "CASTLE_BRIDGE_TALOS__TALOSCTL" in capsys.readouterr().err


@pytest.mark.timeout(90)
async def test_run_on_its_embedded_server_bridges_a_node_and_stops_on_sigterm(tmp_path):
    async with SimCastle(tmp_path / "castle") as castle:
        node = castle.add_node("tazlab-k8s-worker-1", boot_delay=0.2)
        data_dir = tmp_path / "nats"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CASTLE_BRIDGE_")},
            **env_of(castle.settings()),
            "CASTLE_BRIDGE_NATS__DATA_DIR": str(data_dir),
            "CASTLE_BRIDGE_NATS__EMBEDDED_PORT": "0",
            "CASTLE_BRIDGE_HTTP__LISTEN": f"127.0.0.1:{free_port()}",
            "CASTLE_BRIDGE_BRIDGE__VERIFY_POLL_SECONDS": "0.3",
            "CASTLE_BRIDGE_TALOS__READY_POLL_SECONDS": "0.3",
            "CASTLE_BRIDGE_LOG__FORMAT": "json",
        }
        proc = await asyncio.create_subprocess_exec(
            CASTLE_BRIDGE, "run", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        url_file = data_dir / "url"
        try:
            await eventually(url_file.is_file, within=20)
            nc = await nats.connect(url_file.read_text().strip())
            js = nc.jetstream()
            await Publisher(js).publish(VmCreated(name=node.name, ip=node.ip))

            async def verified() -> bool:
                return bool(await payloads(js, "CASTLE", subjects.BRIDGE_VERIFIED))

            await eventually(verified, within=40, every=0.3)
            [event] = await payloads(js, "CASTLE", subjects.BRIDGE_VERIFIED)
            assert event["magicdns_name"] == "tazlab-k8s-worker-1.magellanic-gondola.ts.net"
            await nc.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert not url_file.exists()  # the embedded server went with the daemon
        lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
        assert any(r["message"] == "embedded nats-server started" for r in lines)
        assert any(r["message"] == "event handled" and r.get("subject") == "bridge.patched" for r in lines)
        assert castle.client_secret not in stderr.decode()
        for key in castle.tailnet.key_secrets():
            assert key not in stderr.decode()
