"""The simulator's HTTP side for talosctl: the shim executable forwards each invocation here.

`POST /sim/talos/v1/exec` takes `{"argv": [...], "stdin": "<base64>"}` (plus the talosconfig context's
`endpoints` and `nodes` as defaults, when the shim found them) and answers
`{"exit_code", "stdout", "stderr"}`. stdin is decoded in memory, handed to the emulation and dropped:
it may carry an AuthKey, so it is never logged or stored.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from sim.talos import TalosSim
from sim.talosctl import run_talosctl

EXEC_PATH = "/sim/talos/v1/exec"
_SIM_KEY: web.AppKey[TalosSim] = web.AppKey("talos_sim", TalosSim)


def talos_app(sim: TalosSim) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[_SIM_KEY] = sim
    app.router.add_post(EXEC_PATH, _exec)
    return app


async def _exec(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _bad("the body is not JSON")
    if not isinstance(body, dict):
        return _bad("the body must be a JSON object")
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return _bad("argv must be a list of strings")
    try:
        stdin = base64.b64decode(body.get("stdin") or "", validate=True)
    except (binascii.Error, TypeError):
        return _bad("stdin must be base64")
    defaults = {
        name: [str(v) for v in body.get(name) or [] if isinstance(v, str)] for name in ("endpoints", "nodes")
    }
    code, stdout, stderr = await run_talosctl(request.app[_SIM_KEY], argv, stdin, defaults=defaults)
    return web.json_response({"exit_code": code, "stdout": stdout, "stderr": stderr})


def _bad(reason: str) -> web.Response:
    return web.json_response({"message": reason}, status=400)


@asynccontextmanager
async def serve_talos(sim: TalosSim, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the exec endpoint; yields the base URL (with the port actually bound)."""
    runner = web.AppRunner(talos_app(sim), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = _bound_port(site) or port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


def _bound_port(site: web.TCPSite) -> int | None:
    server: Any = site._server  # aiohttp exposes the bound sockets only through the server object
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else None


def write_talosconfig(path: Path, simulator_url: str, *, context: str = "castle-sim") -> Path:
    """A talosconfig as `talosctl gen config` writes it, plus `simulator: <url>` for the shim.

    The ca/crt/key are random placeholders: the simulator does no mTLS. No endpoints or nodes are
    set, so every command must name its node, as castle-bridge does (`-n IP -e IP`).
    """
    config = {
        "context": context,
        "contexts": {
            context: {
                "endpoints": [],
                "nodes": [],
                "ca": _placeholder_pem(),
                "crt": _placeholder_pem(),
                "key": _placeholder_pem(),
                "simulator": simulator_url,
            }
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _placeholder_pem() -> str:
    return base64.b64encode(b"-----BEGIN SIMULATED-----\n" + secrets.token_bytes(24)).decode()
