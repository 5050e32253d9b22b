"""The talosctl subcommands the simulator answers: get, version, service and patch machineconfig."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sim import talos_resources as res
from sim.talosctl_cli import (
    GO_VERSION,
    SIM_CLIENT_VERSION,
    Invocation,
    Output,
    Target,
    UsageError,
    join_errors,
)
from sim.talosctl_patch import patch_machineconfig


async def dispatch(inv: Invocation, target: Target, stdin: bytes, out: Output) -> int:
    """Run the parsed command against the target nodes; returns the exit code."""
    if inv.command is None:
        out.out("A CLI for out-of-band management of Kubernetes nodes created by Talos (simulated)\n")
        return 0
    if inv.command == "version":
        return _version(inv, target, out)
    if not target.nodes:
        raise UsageError("failed to determine endpoints")
    if inv.command == "get":
        return _get(inv, target, out)
    if inv.command == "patch":
        return await patch_machineconfig(inv, target, stdin, out)
    return _service(inv, target, out)


def _get(inv: Invocation, target: Target, out: Output) -> int:
    if not 1 <= len(inv.args) <= 2:
        raise UsageError(f"accepts between 1 and 2 arg(s), received {len(inv.args)}")
    fmt = inv.value("output", "table")
    if fmt not in ("json", "yaml", "table"):
        raise UsageError(f'output format "{fmt}" is not supported')
    if "watch" in inv.flags:
        raise UsageError("--watch is not supported by the simulator")
    # talosctl resolves the type through the first node's API before anything else.
    if (failure := target.dial_error(target.nodes[0])) is not None:
        out.err(failure + "\n")
        return 1
    try:
        rtype = res.resolve(inv.args[0])
    except res.ResolveError as exc:
        out.err(f"{exc}\n")
        return 1
    namespace = inv.value("namespace", rtype.namespace)
    wanted = inv.args[1] if len(inv.args) == 2 else None
    rows: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    for node_ip in target.nodes:
        if (failure := target.dial_error(node_ip)) is not None:
            errors.append(_on_node(failure, node_ip, target.minor(node_ip), wanted))
            continue
        node = target.sim.nodes[node_ip]
        items = res.resources(target.sim, node, rtype) if namespace == rtype.namespace else []
        if wanted is not None:
            items = [r for r in items if r["metadata"]["id"] == wanted]
            if not items:
                errors.append(_on_node(res.not_found(rtype, namespace, wanted), node_ip, node.minor, wanted))
        rows += [(node_ip, r) for r in items]
    if fmt == "json":
        out.out("".join(res.as_json(n, r) for n, r in rows))
    elif fmt == "yaml":
        out.out("".join(res.as_yaml(n, r, first=i == 0) for i, (n, r) in enumerate(rows)))
    else:
        out.out(res.as_table(rows))
    if errors:
        out.err(join_errors(errors, target.minor(target.nodes[0])))
        return 1
    return 0


def _on_node(error: str, node_ip: str, minor: tuple[int, int], wanted: str | None) -> str:
    if minor >= (1, 14):
        verb = "getting" if wanted is not None else "listing"
        return f"error {verb} {'resource' if wanted else 'resources'} on node {node_ip}: {error}"
    return error


def _version(inv: Invocation, target: Target, out: Output) -> int:
    as_json = "json" in inv.flags
    if not as_json:
        out.out("Client:\n" + _version_block(SIM_CLIENT_VERSION, short="short" in inv.flags))
        if "client" in inv.flags:
            return 0
        out.out("Server:\n")
    if not target.nodes:
        raise UsageError("failed to determine endpoints")
    errors = []
    for node_ip in target.nodes:
        minor = target.minor(node_ip)
        if (failure := target.dial_error(node_ip)) is not None:
            if minor < (1, 14):
                out.err(f"error getting version: {failure}\n")
                return 1
            errors.append(f"error getting version from node {node_ip}: {failure}")
            continue
        tag = target.sim.nodes[node_ip].talos_version
        if as_json:
            message = {
                "metadata": {"hostname": node_ip},
                "version": {
                    "tag": tag,
                    "sha": _sha(tag),
                    "goVersion": GO_VERSION,
                    "os": "linux",
                    "arch": "amd64",
                },
                "platform": {"name": "metal", "mode": "metal"},
                "features": {"rbac": True},
            }
            out.out(json.dumps(message, separators=(",", ":")) + "\n")
        else:
            out.out(
                f"\tNODE:        {node_ip}\n" + _version_block(tag, short=False) + "\tEnabled:     RBAC\n"
            )
    if errors:
        out.err("\n".join(errors) + "\n")
        return 1
    return 0


def _version_block(tag: str, *, short: bool) -> str:
    if short:
        return f"Talos {tag}\n"
    return (
        f"\tTag:         {tag}\n\tSHA:         {_sha(tag)}\n\tBuilt:       \n"
        f"\tGo version:  {GO_VERSION}\n\tOS/Arch:     linux/amd64\n"
    )


def _sha(tag: str) -> str:
    return hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest()[:8]


def _service(inv: Invocation, target: Target, out: Output) -> int:
    if len(inv.args) > 2:
        raise UsageError(f"accepts at most 2 arg(s), received {len(inv.args)}")
    action = inv.args[1] if len(inv.args) == 2 else "status"
    if action not in ("status", "start", "stop", "restart"):
        out.err(f'unsupported service action: "{action}"\n')
        return 1
    for node_ip in target.nodes:
        if (failure := target.dial_error(node_ip)) is not None:
            out.err(f"error from node {node_ip}: {failure}\n")
            return 1
    if not inv.args:
        rows = [("NODE", "SERVICE", "STATE", "HEALTH", "LAST CHANGE", "LAST EVENT")]
        for node_ip in target.nodes:
            node = target.sim.nodes[node_ip]
            for resource in res.resources(target.sim, node, res.resolve("services")):
                rows.append(
                    (
                        node_ip,
                        resource["metadata"]["id"],
                        "Running",
                        "OK",
                        "1m0s ago",
                        "Health check successful",
                    )
                )
            if node.service.state != "Running":
                rows.append(
                    (node_ip, "ext-tailscale", node.service.state, "?", "1s ago", node.service.message)
                )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        out.out(
            "".join(
                "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
            )
        )
        return 0
    service_id = inv.args[0]
    if service_id != "ext-tailscale":
        out.err(f'service "{service_id}" is not registered on any nodes\n')
        return 1
    for node_ip in target.nodes:
        node = target.sim.nodes[node_ip]
        if action == "restart":
            target.sim.restart_service(node_ip)
            out.out(f"NODE   RESPONSE\n{node_ip}   Service {service_id!r} restarted\n")
            continue
        lines = [("NODE", node_ip), ("ID", service_id), ("STATE", node.service.state), ("HEALTH", "?")]
        for i, (stamp, state, message) in enumerate(reversed(node.service.events)):
            lines.append(("EVENTS" if i == 0 else "", f"[{state}]: {message} ({stamp:%H:%M:%S})"))
        width = max(len(k) for k, _ in lines) + 3
        out.out("".join(f"{k.ljust(width)}{v}\n" for k, v in lines))
    return 0
