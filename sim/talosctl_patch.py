"""`talosctl patch machineconfig`, simulated: load the patches, merge them into the node's config, apply.

Like the real client, patches are read first (`@file`, `@/dev/stdin` or inline YAML/JSON), merged in
order into the node's current config, and the result is sent to the node, which validates it. All of
the command's messages go to stderr. What the node received is recorded in `TalosSim.applied` with the
key redacted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from contracts.redact import redact
from sim import talos_config
from sim import talos_resources as res
from sim.talosctl_cli import Invocation, Output, Target, UsageError

MODES = ("auto", "no-reboot", "reboot", "staged", "try")
_MODE_MESSAGES = {
    "auto": "Applied configuration without a reboot",
    "no-reboot": "Applied configuration without a reboot",
    "try": "Applied configuration without a reboot (in try mode)",
    "reboot": "Applied configuration with a reboot",
    "staged": "Staged configuration to be applied after a reboot",
}
STDIN = "@/dev/stdin"
_PANIC = (
    "panic: runtime error: invalid memory address or nil pointer dereference\n"
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x28 pc=0x1f3c2a4]\n\n"
    "goroutine 1 [running]:\n"
    "github.com/siderolabs/talos/pkg/machinery/config/configpatcher.StrategicMerge(...)\n"
    "\t/src/pkg/machinery/config/configpatcher/strategic.go:62 +0x2a4\n"
)


async def patch_machineconfig(inv: Invocation, target: Target, stdin: bytes, out: Output) -> int:
    if not inv.args or len(inv.args) > 2:
        raise UsageError(f"accepts between 1 and 2 arg(s), received {len(inv.args)}")
    mode = inv.value("mode", "auto")
    if mode not in MODES:
        options = ", ".join(sorted(MODES))
        raise UsageError(f'invalid argument "{mode}" for "-m, --mode" flag: possible options are: {options}')
    if (failure := target.dial_error(target.nodes[0])) is not None:
        out.err(failure + "\n")
        return 1
    try:
        rtype = res.resolve(inv.args[0])
    except res.ResolveError as exc:
        out.err(f"{exc}\n")
        return 1
    if rtype is not res.MACHINE_CONFIG:
        out.err("only machineconfig resource type is supported\n")
        return 1
    try:
        patches = _load_patches(inv, stdin)
    except talos_config.PatchLoadError as exc:
        out.err(f"{exc}\n")
        return 1
    for node_ip in target.nodes:
        code = await _patch_node(target, node_ip, patches, mode, dry_run="dry-run" in inv.flags, out=out)
        if code != 0:
            return code
    return 0


def _load_patches(inv: Invocation, stdin: bytes) -> list[dict[str, Any]]:
    sources = list(inv.values.get("patch", []))
    sources += [f"@{path}" for path in inv.values.get("patch-file", [])]
    if not sources:
        raise talos_config.PatchLoadError("either --patch or --patch-file should be defined")
    remaining = stdin
    documents: list[dict[str, Any]] = []
    for source in sources:
        if source == STDIN:
            text, remaining = remaining.decode(), b""  # stdin can be read once
        elif source.startswith("@"):
            try:
                text = Path(source[1:]).read_text()
            except OSError as exc:
                raise talos_config.PatchLoadError(
                    f"open {source[1:]}: {(exc.strerror or str(exc)).lower()}"
                ) from None
        else:
            text = source
        documents += talos_config.load_patch(text)
    return documents


async def _patch_node(
    target: Target, node_ip: str, patches: list[dict[str, Any]], mode: str, *, dry_run: bool, out: Output
) -> int:
    sim = target.sim
    if (failure := target.dial_error(node_ip)) is not None:
        out.err(failure + "\n")
        return 1
    node = sim.nodes[node_ip]
    async with sim.lock(node_ip):
        if sim.patch_delay > 0:
            await asyncio.sleep(sim.patch_delay)
        if node_ip not in sim.nodes:  # destroyed while the apply was in flight
            out.err((target.dial_error(node_ip) or "the node is gone") + "\n")
            return 1
        try:
            patched = talos_config.apply_patches(node.config, patches, node.minor)
        except talos_config.PatchPanic:
            sim.record(node_ip, mode, patches, "panic")
            out.err(_PANIC)
            return 2
        if patched == node.config:
            sim.record(node_ip, mode, patches, "skipped")
            out.err("Apply was skipped: no changes detected.\n")
            return 0
        out.err(f"patched {res.MACHINE_CONFIG.type}/v1alpha1 at the node {node_ip}\n")
        problem = node.reject_reason
        if problem is None:
            try:
                talos_config.validate(patched, node.minor, node.role)
            except talos_config.ConfigInvalid as exc:
                problem = str(exc)
        if problem is not None:
            sim.record(node_ip, mode, patches, "rejected")
            detail = redact(problem)
            out.err(
                "rpc error: code = InvalidArgument desc = configuration validation failed: "
                f"1 error occurred:\n\t* {detail}\n\n\n"
            )
            return 1
        if dry_run:
            out.err("Dry run summary:\n" + _MODE_MESSAGES[mode] + " (skipped in dry-run).\n")
            return 0
        sim.commit_config(node, patched, mode)
        sim.record(node_ip, mode, patches, "staged" if mode == "staged" else "applied")
        out.err(_MODE_MESSAGES[mode] + "\n")
    return 0
