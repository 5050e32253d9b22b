"""The daemon's HTTP surface: /healthz, /readyz, /metrics, /v1/nodes and the Proxmox webhook."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.observability import setup_telemetry
from daemon.webhook import handle_proxmox_hook

if TYPE_CHECKING:
    from daemon.app import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    body: dict[str, Any] = dict(daemon.ready)
    vault = await _vault_status(daemon)
    body["vault"] = vault
    body["ready"] = body["nats_connected"] and body["consumers_bound"]
    return web.json_response(body, status=200 if body["ready"] else 503)


async def _vault_status(daemon: Daemon) -> dict[str, Any] | None:
    if daemon.state is None or not (daemon.nc and daemon.nc.is_connected):
        return None
    with contextlib.suppress(Exception):
        status = await daemon.state.get_vault_status()
        if status is not None:
            return status.model_dump(mode="json", exclude={"checks"})
    return None


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(setup_telemetry().registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def nodes(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.state is None or not (daemon.nc and daemon.nc.is_connected):
        return web.json_response({"error": "NATS is unavailable; node state cannot be read"}, status=503)
    states = await daemon.state.list()
    return web.json_response({"nodes": [s.model_dump(mode="json", exclude={"last_checks"}) for s in states]})


def build_app(daemon: Daemon) -> web.Application:
    # The body-size limit is enforced by the webhook itself (413 with a reason); aiohttp's own limit
    # stays above it so the webhook sees oversize requests instead of a bare error page.
    app = web.Application(client_max_size=daemon.settings.http.max_body_bytes * 2)
    app[DAEMON] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/nodes", nodes)
    app.router.add_post("/v1/hooks/proxmox", handle_proxmox_hook)
    return app


@contextlib.asynccontextmanager
async def serve_http(daemon: Daemon) -> AsyncIterator[str]:
    """Serve on settings.http.listen (port 0 picks a free one); yields the base URL."""
    http = daemon.settings.http
    runner = web.AppRunner(build_app(daemon), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, http.host, http.port)
    await site.start()
    server: Any = site._server  # aiohttp exposes the bound sockets only through its server object
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else http.port
    host = http.host if ":" not in http.host else f"[{http.host}]"
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
