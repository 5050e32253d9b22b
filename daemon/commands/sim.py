"""`castle-bridge sim`: run the simulated castle on its own, for trying the daemon by hand.

It prints the CASTLE_BRIDGE_* settings a daemon in another shell needs. The simulated OAuth client's
secret is never printed: it is taken from CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_SECRET in this
environment, so the same variable serves both shells.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
from pathlib import Path

from daemon.config import ENV_PREFIX, ConfigError
from sim.castle import SimCastle

SECRET_ENV = f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sim", help="run the simulated castle (tailnet, Talos nodes, Vault) on its own")
    parser.add_argument("--nodes", type=int, default=3, help="simulated VMs to create (default 3)")
    parser.add_argument("--talos-version", default="v1.13.9")
    parser.set_defaults(handler=run)


def exports(castle: SimCastle) -> list[str]:
    lines = []
    for section, values in castle.settings().items():
        for key, value in values.items():
            if key == "oauth_client_secret":
                continue
            text = json.dumps(value) if isinstance(value, list) else str(value)
            lines.append(f"export {ENV_PREFIX}{section.upper()}__{key.upper()}='{text}'")
    return lines


def run(args: argparse.Namespace) -> int:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise ConfigError(
            f"{SECRET_ENV} must be set: the simulated OAuth client uses it, and so will the daemon"
        )
    with tempfile.TemporaryDirectory(prefix="castle-sim-") as tmp:
        asyncio.run(serve(Path(tmp), secret, args.nodes, args.talos_version))
    return 0


async def serve(workdir: Path, secret: str, count: int, talos_version: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimCastle(workdir, client_secret=secret) as castle:
        print("# the simulated castle is up; in another shell (with the same OAuth secret variable):")
        print("\n".join(exports(castle)))
        print("castle-bridge run")
        print("\n# then announce the VMs:")
        for i in range(1, count + 1):
            node = castle.add_node(f"tazlab-k8s-worker-{i}", talos_version=talos_version)
            print(f"castle-bridge emit vm.created --name={node.name} --ip={node.ip}")
        print("\n# Ctrl-C stops the castle", flush=True)
        await stop.wait()
