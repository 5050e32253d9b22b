"""`castle-bridge doctor`: a pre-flight with one pass/fail line per thing the daemon depends on.

NATS reachable and the stream present; the Tailscale OAuth client gets a token; it may mint keys with the
configured tags (proven by minting one, described "castle-bridge doctor", and revoking it at once);
talosctl runs and the talosconfig is readable; the Vault reachability matrix passes. Each check is
bounded in time, so a dead dependency is a failed line, not a hang. Exit 0 when every line passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from nats.js.errors import NotFoundError

from contracts.checks import CheckResult, first_failure
from daemon.commands.check_vault import check_vault
from daemon.commands.common import bus, shown_url, table
from daemon.config import ENV_PREFIX, ConfigError, Settings, load_settings

CHECK_TIMEOUT_SECONDS = 30.0
# The key is minted "for" this name, so the API records it as `castle-bridge doctor`.
DOCTOR_KEY_NODE = "doctor"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "doctor",
        help="pre-flight: NATS and stream, OAuth token, tag permission, talosctl and talosconfig, Vault",
        description="Check everything the daemon needs, one pass/fail line each. Proves the tag permission "
        "by minting one key (description 'castle-bridge doctor') and revoking it at once. Exit 0 when all pass.",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=run)


class Failed(Exception):
    """A check did not pass; the text says what to fix."""


async def _timed(name: str, step: Callable[[], Awaitable[str]]) -> CheckResult:
    started = time.monotonic()
    try:
        detail, ok = await asyncio.wait_for(step(), CHECK_TIMEOUT_SECONDS), True
    except TimeoutError:
        detail, ok = f"no answer within {CHECK_TIMEOUT_SECONDS:g}s", False
    except (Failed, ConfigError) as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # every other failure is still one line, with its type for the operator
        detail, ok = f"{type(exc).__name__}: {exc}", False
    latency = (time.monotonic() - started) * 1000
    return CheckResult(name=name, ok=ok, detail=detail, latency_ms=round(latency, 1))


async def check_nats(settings: Settings) -> list[CheckResult]:
    """Two lines: the server answers, and the stream the daemon consumes exists."""
    stream = settings.nats.stream
    results: list[CheckResult] = []

    async def reach_and_look() -> str:
        async with bus(settings) as nc:
            server = nc.connected_url
            url = shown_url(f"{server.scheme}://{server.netloc}") if server else "NATS"
            results.append(CheckResult(name="nats", ok=True, detail=f"connected to {url}"))
            try:
                info = await nc.jetstream().stream_info(stream)
            except NotFoundError:
                raise Failed(
                    f"stream {stream} does not exist: `castle-bridge run` creates it on start "
                    f"(or check {ENV_PREFIX}NATS__STREAM)"
                ) from None
            subjects = ", ".join(info.config.subjects or [])
            return f"stream {stream} captures {subjects}; {info.state.messages} message(s)"

    outcome = await _timed("stream", reach_and_look)
    if not results:  # the connection itself failed
        results.append(outcome.model_copy(update={"name": "nats"}))
        outcome = CheckResult(name="stream", ok=False, detail="not checked: NATS is not reachable")
    return [*results, outcome]


async def check_tailscale(settings: Settings) -> list[CheckResult]:
    """OAuth token, then one key minted with our tags and revoked at once."""
    s = settings.tailscale
    if not s.oauth_client_id or s.oauth_client_secret is None:
        missing = (
            f"no OAuth credentials: set {ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_ID and "
            f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET(_FILE)"
        )
        return [
            CheckResult(name="oauth", ok=False, detail=missing),
            CheckResult(name="tags", ok=False, detail="not checked: no OAuth credentials"),
        ]
    from daemon.adapters.tailscale import TailscaleClient

    async with httpx.AsyncClient(timeout=s.request_timeout_seconds) as http:
        client = TailscaleClient(s, http)

        async def token() -> str:
            await client.token_ok()
            return f"OAuth client {s.oauth_client_id} got an access token from {s.api_url}"

        async def mint_and_revoke() -> str:
            key = await client.create_auth_key(DOCTOR_KEY_NODE)
            try:
                await client.revoke_key(key.key_id)
            except Exception as exc:
                raise Failed(
                    f"minted key {key.key_id} with tags {', '.join(key.tags)} but could not revoke it ({exc}); "
                    "revoke it in the admin console (Settings > Keys)"
                ) from None
            return f"minted key {key.key_id} with tags {', '.join(key.tags)} and revoked it"

        oauth = await _timed("oauth", token)
        if not oauth.ok:
            return [oauth, CheckResult(name="tags", ok=False, detail="not checked: no access token")]
        return [oauth, await _timed("tags", mint_and_revoke)]


def _talosconfig_path(settings: Settings) -> tuple[Path, str]:
    if settings.talos.talosconfig is not None:
        return settings.talos.talosconfig, f"{ENV_PREFIX}TALOS__TALOSCONFIG"
    if os.environ.get("TALOSCONFIG"):  # talosctl's own default, which the daemon then relies on
        return Path(os.environ["TALOSCONFIG"]), "TALOSCONFIG"
    return Path.home() / ".talos" / "config", "talosctl's default"


async def check_talos(settings: Settings) -> list[CheckResult]:
    talosctl = settings.talos.talosctl
    found = shutil.which(talosctl)
    if found is None:
        where = CheckResult(
            name="talosctl",
            ok=False,
            detail=f"{talosctl!r} is not an executable on PATH: install talosctl or set {ENV_PREFIX}TALOS__TALOSCTL",
        )
    else:
        where = CheckResult(name="talosctl", ok=True, detail=f"{found}")
    path, source = _talosconfig_path(settings)
    try:
        with path.open("rb") as config:
            readable = bool(config.read(1))
    except OSError as exc:
        detail = f"{path} ({source}) is not readable: {exc.strerror}"
        return [where, CheckResult(name="talosconfig", ok=False, detail=detail)]
    if not readable:
        return [where, CheckResult(name="talosconfig", ok=False, detail=f"{path} ({source}) is empty")]
    return [where, CheckResult(name="talosconfig", ok=True, detail=f"{path} ({source}) is readable")]


async def check_vault_line(settings: Settings) -> CheckResult:
    async def matrix() -> str:
        report = await check_vault(settings)
        failed = first_failure(report.checks)
        if failed is not None:
            raise Failed(f"{report.url}: fails at {failed.name}: {failed.detail}")
        http = next((c.detail for c in report.checks if c.name == "http"), "")
        return f"{report.url} answers over the tailnet ({http})"

    return await _timed("vault", matrix)


async def diagnose(settings: Settings) -> list[CheckResult]:
    """Every check, in the order an operator fixes them; independent ones run side by side."""
    nats, tailscale, talos, vault = await asyncio.gather(
        check_nats(settings), check_tailscale(settings), check_talos(settings), check_vault_line(settings)
    )
    return [*nats, *tailscale, *talos, vault]


def render(checks: list[CheckResult]) -> str:
    rows = [(c.name, "ok" if c.ok else "FAIL", c.detail) for c in checks]
    failed = [c.name for c in checks if not c.ok]
    verdict = "all checks pass" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}"
    return table(("CHECK", "RESULT", "DETAIL"), rows) + "\n" + verdict


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    checks = asyncio.run(diagnose(settings))
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.model_dump(mode="json") for c in checks]}, indent=2))
    else:
        print(render(checks))
    return 0 if ok else 1
