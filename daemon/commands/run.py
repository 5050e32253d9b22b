"""`castle-bridge run`: the daemon, until SIGTERM or SIGINT (then a graceful stop)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal

from daemon.app import Daemon
from daemon.config import ConfigError, Settings, load_settings
from daemon.logs import setup_logging
from daemon.observability import setup_telemetry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="run the daemon",
        description="Consume the castle's events and bridge every new Talos node to the tailnet. "
        "With no CASTLE_BRIDGE_NATS__URL, an embedded nats-server is started.",
    )
    parser.set_defaults(handler=run)


def preflight(settings: Settings) -> None:
    """Refuse to start on what would only fail later, naming the setting."""
    settings.require_tailscale_credentials()
    if shutil.which(settings.talos.talosctl) is None:
        raise ConfigError(
            f"CASTLE_BRIDGE_TALOS__TALOSCTL (talos.talosctl): {settings.talos.talosctl!r} is not an executable on PATH"
        )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    preflight(settings)
    setup_logging(settings.log.level, settings.log.format)
    telemetry = setup_telemetry()
    try:
        asyncio.run(serve(settings))
    finally:
        telemetry.shutdown()
    return 0


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Daemon(settings):
        await stop.wait()
