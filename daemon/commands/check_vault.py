"""`castle-bridge check-vault`: run the Vault reachability matrix once and say where it breaks.

Exit status 0 when the matrix passes, 1 when a deciding step fails (2, from the CLI, for bad
configuration). `--json` prints the report (every step, plus `ok`) for scripts; otherwise a table an
operator reads at a glance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx

from contracts.checks import first_failure
from contracts.reachability import VaultReport
from daemon.adapters.reachability import DevicesFn, VaultMeshProber
from daemon.config import Settings, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check-vault",
        help="check once that Vault answers over the tailnet at its MagicDNS name",
        description=(
            "Run the Vault reachability matrix once (dns, tailnet_ip, tcp, tls, http, contract) from this "
            "host, directly or through CASTLE_BRIDGE_MESH__SOCKS5_PROXY. Exit 0 when it passes, 1 otherwise."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    report = asyncio.run(check_vault(settings))
    print(render_json(report) if args.json else render_table(report))
    return 0 if report.ok else 1


async def check_vault(settings: Settings) -> VaultReport:
    """The matrix once, with the tailnet device list as the tailnet_ip fallback when credentials exist."""
    async with _device_lister(settings) as devices:
        prober = VaultMeshProber(settings.vault, settings.mesh, devices=devices)
        return await prober.vault()


@contextlib.asynccontextmanager
async def _device_lister(settings: Settings) -> AsyncIterator[DevicesFn | None]:
    tailscale = settings.tailscale
    if settings.vault.tailnet_ip or not tailscale.oauth_client_id or tailscale.oauth_client_secret is None:
        yield None  # nothing to look up, or no way to: the tailnet_ip step says which setting to add
        return
    # Imported here: `check-vault` must work on a host that only wants the Vault check.
    from daemon.adapters.tailscale import TailscaleClient

    async with httpx.AsyncClient(timeout=tailscale.request_timeout_seconds) as http:
        yield TailscaleClient(tailscale, http).list_devices


def render_json(report: VaultReport) -> str:
    return json.dumps({**report.model_dump(mode="json"), "ok": report.ok}, indent=2)


def render_table(report: VaultReport) -> str:
    rows = [("step", "result", "latency", "detail")]
    for check in report.checks:
        result = "ok" if check.ok else ("info" if check.informational else "FAIL")
        latency = "-" if check.latency_ms is None else f"{check.latency_ms:.1f} ms"
        rows.append((check.name, result, latency, check.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"Vault {report.url}"]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    failed = first_failure(report.checks)
    lines.append("PASS: Vault answers at its MagicDNS name" if failed is None else f"FAIL at {failed.name}")
    return "\n".join(lines)
