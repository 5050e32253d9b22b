"""End-to-end harness: the simulated castle, a daemon with production adapters talking to it over the
same wire as to the real systems, the session's nats-server, and helpers to watch outcomes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext

from contracts import subjects
from contracts.events import VmCreated
from contracts.policy import Clock
from daemon.app import Daemon
from daemon.bus.publisher import Publisher
from daemon.config import Settings, load_settings
from daemon.logs import JsonFormatter
from daemon.natsserver import NatsServer
from sim.castle import SimCastle
from tests.busutil import eventually, payloads
from tests.daemon_fixtures import WEBHOOK_TOKEN, remove_bus_objects

FAST = {
    "bridge": {"verify_poll_seconds": 0.2, "verify_deadline_seconds": 20, "confirm_seconds": 0.3},
    "talos": {"ready_poll_seconds": 0.2, "command_timeout_seconds": 10},
}


def castle_settings(castle: SimCastle, nats_url: str | None, **extra: dict[str, Any]) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    sections: dict[str, dict[str, Any]] = castle.settings()
    for name, values in {**FAST}.items():
        sections.setdefault(name, {}).update(values)
    sections["nats"] = {
        "url": nats_url,
        "stream": f"CASTLE_{suffix}",
        "kv_bucket": f"nodes-{suffix}",
        "ack_wait_seconds": 5,
    }
    sections["http"] = {"listen": "127.0.0.1:0", "webhook_token": WEBHOOK_TOKEN}
    sections["scheduler"] = {"enabled": False}
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return load_settings(None, **sections)


@dataclass
class LogCapture:
    """Every log record of the run, formatted as the daemon would ship it."""

    stream: io.StringIO = field(default_factory=io.StringIO)
    handler: logging.Handler | None = None

    def __enter__(self) -> LogCapture:
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(self.handler)
        self._level = root.level
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)  # type: ignore[arg-type]
        root.setLevel(self._level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@dataclass
class Castle:
    """A running simulated castle plus its daemon(s)."""

    sim: SimCastle
    settings: Settings
    server: NatsServer
    js: JetStreamContext
    daemon: Daemon | None = None

    @property
    def stream(self) -> str:
        return self.settings.nats.stream

    def born(
        self, name: str, *, role: str = "worker", talos_version: str = "v1.13.9", boot_delay: float = 0.1
    ) -> str:
        return self.sim.add_node(name, role=role, talos_version=talos_version, boot_delay=boot_delay).ip

    async def publish_created(
        self, name: str, ip: str, role: str = "worker", msg_id: str | None = None
    ) -> None:
        await Publisher(self.js).publish(VmCreated(name=name, ip=ip, role=role), msg_id=msg_id)

    async def outcomes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for subject in (subjects.BRIDGE_VERIFIED, subjects.BRIDGE_FAILED):
            for body in await payloads(self.js, self.stream, subject):
                out.setdefault(
                    body["name"], "verified" if subject == subjects.BRIDGE_VERIFIED else body["reason"]
                )
        return out

    async def wait_outcomes(self, names: list[str], within: float = 40.0) -> dict[str, str]:
        async def all_done() -> bool:
            return set(names) <= set(await self.outcomes())

        await eventually(all_done, within=within, every=0.2)
        return await self.outcomes()

    def bridge_keys(self) -> list[str]:
        """Ids of the keys the daemon minted (the castle mints some for its own infra devices)."""
        tailnet = self.sim.tailnet
        return [
            k for k in tailnet.minted_keys if tailnet.get_key(k)["description"].startswith("castle-bridge")
        ]

    async def events(self, subject: str) -> list[dict[str, Any]]:
        return await payloads(self.js, self.stream, subject)


@contextlib.asynccontextmanager
async def simulated_castle(
    server: NatsServer,
    workdir: Path,
    *,
    start_daemon: bool = True,
    clock: Clock | None = None,
    **extra: dict[str, Any],
) -> AsyncIterator[Castle]:
    async with SimCastle(workdir) as sim:
        settings = castle_settings(sim, server.url, **extra)
        nc = await nats.connect(server.url)
        harness = Castle(sim, settings, server, nc.jetstream())
        try:
            if start_daemon:
                async with Daemon(settings, clock=clock) as daemon:
                    harness.daemon = daemon
                    yield harness
            else:
                yield harness
        finally:
            await nc.close()
            await remove_bus_objects(server, settings)


def scan_for(secrets: list[str], *texts: str) -> list[str]:
    """The secrets (shortened) found in any of the texts."""
    found = []
    for secret in secrets:
        if any(secret in t for t in texts):
            found.append(secret[:14] + "...")
    return found


async def bus_text(js: JetStreamContext, stream: str) -> str:
    from tests.busutil import stream_messages

    parts = []
    for msg in await stream_messages(js, stream):
        parts.append(msg.subject + json.dumps(dict(msg.headers or {})) + msg.data.decode("utf-8", "replace"))
    return "\n".join(parts)
