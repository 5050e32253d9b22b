"""The daemon: the bus, the state, the adapters, the handlers, the scheduler and the HTTP surface,
started in order and stopped in reverse with one AsyncExitStack.

`run`, `demo`, the end-to-end tests and the benchmarks all start this same object; they differ only in
the adapters they pass (production ones talk to the real APIs, or to the simulated castle over the same
wire).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts.policy import Clock
from contracts.reachability import ReachabilityProber
from contracts.subjects import BRIDGE_AUDIT_TICK, VAULT_CHECK_TICK
from contracts.tailnet import TailnetAPI
from contracts.talos import TalosNodes
from daemon.bus.connection import ConnectionState, connect
from daemon.bus.publisher import Publisher
from daemon.bus.runtime import Runtime
from daemon.bus.stream import ensure_stream
from daemon.clock import SystemClock
from daemon.config import Settings
from daemon.natsserver import NatsServer
from daemon.routes import build_routes
from daemon.scheduler import Job, TickScheduler
from daemon.state import KvStateStore
from daemon.traced import Traced
from handlers.deps import Deps

log = logging.getLogger("castle_bridge.daemon")

URL_FILE = "url"  # in the embedded server's data dir: how `status` and `emit` find it


@dataclass(frozen=True)
class Adapters:
    tailnet: TailnetAPI
    talos: TalosNodes
    prober: ReachabilityProber


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def embedded_url_file(settings: Settings) -> Path:
    return settings.nats.data_dir / URL_FILE


class Daemon:
    """One castle-bridge replica. `async with Daemon(settings) as d:` runs it until the block ends."""

    def __init__(
        self,
        settings: Settings,
        *,
        adapters: Adapters | None = None,
        clock: Clock | None = None,
        replica: str | None = None,
        serve_http: bool = True,
        schedule: bool | None = None,
        consumer_prefix: str = "castle-bridge",
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.replica = replica or replica_id()
        self.connection = ConnectionState()
        self._given_adapters = adapters
        self._serve_http = serve_http
        self._schedule = settings.scheduler.enabled if schedule is None else schedule
        self._prefix = consumer_prefix
        self._stack = AsyncExitStack()
        self.embedded: NatsServer | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.publisher: Publisher | None = None
        self.state: KvStateStore | None = None
        self.runtime: Runtime | None = None
        self.scheduler: TickScheduler | None = None
        self.deps: Deps | None = None
        self.http_url: str | None = None

    async def __aenter__(self) -> Daemon:
        try:
            await self.start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        servers = s.nats.servers or [self._start_embedded()]
        self.nc = await connect(servers, s.nats, name=f"castle-bridge {self.replica}", state=self.connection)
        self._stack.push_async_callback(self._close_nats)
        self.js = self.nc.jetstream()
        longest_tick = max(s.scheduler.vault_interval_seconds, s.scheduler.audit_interval_seconds)
        await ensure_stream(
            self.js,
            s.nats.stream,
            duplicate_window=max(s.nats.duplicate_window_seconds, longest_tick),
            max_age=s.nats.max_age_days * 86400,
            replicas=s.nats.stream_replicas,
        )
        self.state = await KvStateStore.open(self.js, s.nats.kv_bucket, replicas=s.nats.stream_replicas)
        self.publisher = Publisher(self.js, source=f"castle-bridge/{self.replica}")
        adapters = self._given_adapters or await self._production_adapters()
        self.deps = Deps(
            tailnet=Traced(adapters.tailnet, "tailscale"),
            talos=Traced(adapters.talos, "talos"),
            prober=Traced(adapters.prober, "reachability"),
            state=self.state,
            clock=self.clock,
            policy=s.policy(),
            replica=self.replica,
        )
        self.runtime = Runtime(
            self.nc, self.publisher, s.nats.stream, build_routes(s, self.state, self._prefix), self.deps
        )
        await self.runtime.start()
        self._stack.push_async_callback(self.runtime.stop, 30.0)
        if self._schedule:
            self.scheduler = TickScheduler(
                self.publisher,
                [
                    Job("check-vault", VAULT_CHECK_TICK, s.scheduler.vault_interval_seconds),
                    Job("audit-bridges", BRIDGE_AUDIT_TICK, s.scheduler.audit_interval_seconds),
                ],
                self.clock,
            )
            self.scheduler.start()
            self._stack.push_async_callback(self.scheduler.stop)
        if self._serve_http:
            from daemon.http_api import serve_http

            self.http_url = await self._stack.enter_async_context(serve_http(self))
        log.info(
            "castle-bridge running",
            extra={
                "replica": self.replica,
                "nats": ",".join(servers),
                "stream": s.nats.stream,
                "http": self.http_url,
            },
        )

    def _start_embedded(self) -> str:
        s = self.settings.nats
        port = s.embedded_port or -1
        self.embedded = NatsServer(s.data_dir.resolve(), port=port).start()
        self._stack.callback(self._stop_embedded)
        # Written aside and renamed into place: `status`, `emit` (and tests) read it as soon as it exists,
        # and a plain write could be seen empty.
        url_file = embedded_url_file(self.settings)
        staged = url_file.with_name(f".{URL_FILE}.{os.getpid()}")
        staged.write_text(self.embedded.url + "\n")
        staged.replace(url_file)
        log.info("embedded nats-server started", extra={"url": self.embedded.url, "store": str(s.data_dir)})
        return self.embedded.url

    def _stop_embedded(self) -> None:
        with contextlib.suppress(OSError):
            embedded_url_file(self.settings).unlink()
        if self.embedded is not None:
            self.embedded.stop()

    async def _close_nats(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            self.connection.closing = True
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _production_adapters(self) -> Adapters:
        from daemon.adapters.reachability import VaultMeshProber
        from daemon.adapters.tailscale import TailscaleClient
        from daemon.adapters.talos import TalosctlNodes

        s = self.settings
        http = await self._stack.enter_async_context(
            httpx.AsyncClient(timeout=s.tailscale.request_timeout_seconds)
        )
        tailnet = TailscaleClient(s.tailscale, http)
        return Adapters(
            tailnet=tailnet,
            talos=TalosctlNodes(s.talos),
            prober=VaultMeshProber(s.vault, s.mesh, devices=tailnet.list_devices),
        )

    async def stop(self) -> None:
        """The SIGTERM path: stop ticking and fetching, finish in-flight work, drain, close."""
        await self._stack.aclose()

    @property
    def ready(self) -> dict[str, Any]:
        return {
            "nats_connected": bool(self.nc and self.nc.is_connected),
            "consumers_bound": bool(self.runtime and self.runtime.bound),
        }
