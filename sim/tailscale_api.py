"""The simulated Tailscale control plane over HTTP: the API v2 routes castle-bridge calls, plus `/sim/v1` controls.

`tailscale_app(sim)` serves `TailnetSim` on the same wire as `api.tailscale.com`: OAuth client credentials at
`/api/v2/oauth/token`, bearer tokens, keys and devices, errors as `{"message": ...}`. Injected faults
(`sim.faults`) apply to every `/api/v2/*` call. `/sim/v1/*` is the simulator's own surface for
out-of-process simulated nodes (join, connect/disconnect) and for tests (faults). No access log is kept:
request bodies carry keys and client secrets, and the sim must not print them anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from aiohttp import web

from sim.joining import JoinRefused
from sim.tailnet import ApiError, FaultPlan, TailnetSim

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SIM_KEY: web.AppKey[TailnetSim] = web.AppKey("tailnet_sim", TailnetSim)


def _message(status: int, message: str, retry_after: float | None = None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return web.json_response({"message": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _message(exc.status, exc.message, exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _message(exc.status, (exc.reason or "error").lower())


@web.middleware
async def _faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/v2/"):
        return await handler(request)
    sim = request.app[SIM_KEY]
    if sim.faults.latency:
        await asyncio.sleep(sim.faults.latency)
    fault = sim.draw_fault()
    if fault is not None:
        raise fault
    response = await handler(request)
    if response.status == 200 and sim.draw_garble():
        return web.Response(
            status=200, text="<html><body>upstream proxy error</body></html>", content_type="text/html"
        )
    return response


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":  # the API also takes the token as the Basic user name
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid JSON body") from None


async def _token(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    form = {k: str(v) for k, v in (await request.post()).items()}
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic ") and "client_id" not in form:
        # RFC 6749 lets the client authenticate with HTTP Basic instead of form fields.
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, "malformed Authorization header") from None
        form.update(client_id=user, client_secret=password)
    return web.json_response(sim.issue_token(form))


async def _create_key(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    grant = sim.authenticate(_bearer(request), "auth_keys", write=True)
    sim.check_tailnet(request.match_info["tailnet"])
    return web.json_response(sim.create_key(grant, await _json_body(request)))


async def _list_keys(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "auth_keys", write=False)
    sim.check_tailnet(request.match_info["tailnet"])
    return web.json_response(sim.list_keys())


async def _get_key(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "auth_keys", write=False)
    sim.check_tailnet(request.match_info["tailnet"])
    return web.json_response(sim.get_key(request.match_info["key_id"]))


async def _delete_key(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "auth_keys", write=True)
    sim.check_tailnet(request.match_info["tailnet"])
    sim.delete_key(request.match_info["key_id"])
    return web.Response(status=200)


async def _list_devices(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "devices:core", write=False)
    sim.check_tailnet(request.match_info["tailnet"])
    return web.json_response(sim.list_devices(all_fields=request.query.get("fields") == "all"))


async def _get_device(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "devices:core", write=False)
    device_id = request.match_info["device_id"]
    return web.json_response(sim.get_device(device_id, all_fields=request.query.get("fields") == "all"))


async def _delete_device(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    sim.authenticate(_bearer(request), "devices:core", write=True)
    sim.delete_device(request.match_info["device_id"])
    return web.Response(status=200)


async def _sim_join(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("authKey"), str)
        or not isinstance(body.get("hostname"), str)
    ):
        raise ApiError(400, 'body must be {"authKey": "...", "hostname": "..."}')
    try:
        joined = await request.app[SIM_KEY].join(body["authKey"], body["hostname"])
    except JoinRefused as exc:
        raise ApiError(400, exc.reason) from None
    return web.json_response(
        {"nodeId": joined.node_id, "name": joined.name, "addresses": list(joined.addresses)}
    )


async def _sim_connected(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("connected"), bool):
        raise ApiError(400, 'body must be {"connected": true|false}')
    sim = request.app[SIM_KEY]
    node_id = request.match_info["node_id"]
    sim.set_connected(node_id, body["connected"])
    return await _sim_device(request)


async def _sim_device(request: web.Request) -> web.Response:
    device = request.app[SIM_KEY].device(request.match_info["node_id"])
    if device is None:
        raise ApiError(404, "device not found")
    return web.json_response(device)


async def _sim_get_faults(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[SIM_KEY].faults))


async def _sim_put_faults(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        plan = FaultPlan.from_json(body if isinstance(body, dict) else {"<not an object>": body})
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"invalid fault plan: {exc}") from None
    request.app[SIM_KEY].faults = plan
    return web.json_response(asdict(plan))


def tailscale_app(sim: TailnetSim) -> web.Application:
    """The aiohttp application serving `sim` on the Tailscale API v2 wire."""
    app = web.Application(middlewares=[_errors, _faults])
    app[SIM_KEY] = sim
    app.router.add_post("/api/v2/oauth/token", _token)
    app.router.add_get("/api/v2/tailnet/{tailnet}/keys", _list_keys)
    app.router.add_post("/api/v2/tailnet/{tailnet}/keys", _create_key)
    app.router.add_get("/api/v2/tailnet/{tailnet}/keys/{key_id}", _get_key)
    app.router.add_delete("/api/v2/tailnet/{tailnet}/keys/{key_id}", _delete_key)
    app.router.add_get("/api/v2/tailnet/{tailnet}/devices", _list_devices)
    app.router.add_get("/api/v2/device/{device_id}", _get_device)
    app.router.add_delete("/api/v2/device/{device_id}", _delete_device)
    app.router.add_post("/sim/v1/join", _sim_join)
    app.router.add_get("/sim/v1/devices/{node_id}", _sim_device)
    app.router.add_put("/sim/v1/devices/{node_id}/connected", _sim_connected)
    app.router.add_get("/sim/v1/faults", _sim_get_faults)
    app.router.add_put("/sim/v1/faults", _sim_put_faults)
    return app


@asynccontextmanager
async def serve_tailnet(sim: TailnetSim, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `sim` on host:port (0 = any free port) and yield its base URL, e.g. http://127.0.0.1:41234."""
    runner = web.AppRunner(tailscale_app(sim), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()
