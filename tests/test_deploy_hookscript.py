"""deploy/proxmox/castle-bridge-hook.sh run as Proxmox would run it (`<vmid> <phase>`, a `qm` that
prints the VM's config) against a live daemon's webhook: what it announces, what it refuses, and that the
token never reaches a process argument list.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from contracts import subjects
from daemon.app import Adapters
from daemon.natsserver import NatsServer
from tests.busutil import stream_messages
from tests.daemon_fixtures import WEBHOOK_TOKEN, daemon_settings, running_daemon
from tests.fakes import make_world

HOOK = Path(__file__).resolve().parents[1] / "deploy" / "proxmox" / "castle-bridge-hook.sh"


@pytest.fixture
def hook_env(tmp_path: Path) -> dict[str, str]:
    """A fake `qm` and a curl that records its arguments before running the real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    curl = shutil.which("curl")
    assert curl, "curl is part of every Proxmox host and of this machine"
    (bin_dir / "qm").write_text(f'#!/bin/sh\ncat "{tmp_path}/qm-$2.conf"\n')
    (bin_dir / "curl").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{tmp_path}/curl-argv"\nexec {curl} "$@"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    token = tmp_path / "webhook-token"
    token.write_text(WEBHOOK_TOKEN + "\n")
    token.chmod(0o600)
    (tmp_path / "nodes").write_text("142 192.168.1.42 worker\n")
    (tmp_path / "qm-141.conf").write_text(
        "boot: order=scsi0\nipconfig0: ip=192.168.1.41/24,gw=192.168.1.1\nname: TazLab-K8s-CP-4\n"
        "tags: controlplane;talos\n"
    )
    (tmp_path / "qm-142.conf").write_text("name: tazlab-k8s-worker-42\n")
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CASTLE_BRIDGE_HOOK_ENV": str(tmp_path / "no-hook.env"),
        "CASTLE_BRIDGE_HOOK_TOKEN_FILE": str(token),
        "CASTLE_BRIDGE_HOOK_NODES": str(tmp_path / "nodes"),
        "ARGV_LOG": str(tmp_path / "curl-argv"),
    }


async def run_hook(env: dict[str, str], *argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash", str(HOOK), *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0 and out == b"", err  # a hook never fails the VM operation
    return err.decode()


async def test_the_hookscript_announces_starts_and_destroys_without_the_token_in_argv(
    nats_server: NatsServer, hook_env: dict[str, str]
):
    world = make_world()
    settings = daemon_settings(nats_server.url)
    async with running_daemon(
        nats_server, settings, Adapters(world.tailnet, world.talos, world.prober)
    ) as daemon:
        env = {**hook_env, "CASTLE_BRIDGE_HOOK_URL": f"{daemon.http_url}/v1/hooks/proxmox"}

        logs = [await run_hook(env, "141", phase) for phase in ("pre-start", "post-start", "post-stop")]
        logs.append(await run_hook(env, "142", "post-start"))  # IP and role from the map file
        logs.append(await run_hook(env, "141", "pre-destroy"))
        Path(env["CASTLE_BRIDGE_HOOK_TOKEN_FILE"]).chmod(0o640)
        logs.append(await run_hook(env, "141", "post-start"))

        assert daemon.js is not None
        created = await stream_messages(daemon.js, settings.nats.stream, subjects.VM_CREATED)
        destroyed = await stream_messages(daemon.js, settings.nats.stream, subjects.VM_DESTROYED)
    assert logs[0] == logs[2] == ""  # phases it does not act on: nothing sent, nothing said
    assert "accepted (HTTP 202)" in logs[1] and "accepted (HTTP 202)" in logs[3] and "accepted" in logs[4]
    assert "chmod 600" in logs[5]
    bodies = [json.loads(m.data) for m in created]
    assert bodies == [
        {
            "name": "tazlab-k8s-cp-4",
            "ip": "192.168.1.41",
            "vmid": 141,
            "role": "controlplane",
            "proxmox_node": bodies[0]["proxmox_node"],
            "tags": ["controlplane", "talos"],
        },
        {
            "name": "tazlab-k8s-worker-42",
            "ip": "192.168.1.42",
            "vmid": 142,
            "role": "worker",
            "proxmox_node": bodies[0]["proxmox_node"],
            "tags": [],
        },
    ]
    assert created[0].headers["Nats-Msg-Id"].startswith("hook:vm.created:pve-")
    assert [json.loads(m.data) for m in destroyed] == [{"name": "tazlab-k8s-cp-4", "vmid": 141}]
    argv = Path(hook_env["ARGV_LOG"]).read_text()
    assert "Idempotency-Key: pve-" in argv and "--config" in argv
    assert WEBHOOK_TOKEN not in argv and WEBHOOK_TOKEN not in "".join(logs)


def test_the_hookscript_is_executable_bash_that_parses():
    assert os.access(HOOK, os.X_OK) and HOOK.read_text().startswith("#!/bin/bash\n")
    assert subprocess.run(["bash", "-n", str(HOOK)], capture_output=True, check=False).returncode == 0
