"""talosctl's command line as the simulator reads it: flags, arguments, where to connect, how errors print.

Global flags work before or after the subcommand, as with cobra's persistent flags; value flags take
`--flag value`, `--flag=value` or, for shorthands, `-nVALUE`; unknown flags are refused with cobra's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.talos import TalosSim

SIM_CLIENT_VERSION = "v1.13.9"
GO_VERSION = "go1.24.6"

_GLOBAL_VALUES = {
    "--talosconfig": "talosconfig",
    "--context": "context",
    "-n": "nodes",
    "--nodes": "nodes",
    "-e": "endpoints",
    "--endpoints": "endpoints",
    "--cluster": "cluster",
}
_COMMAND_VALUES = {
    "get": {"-o": "output", "--output": "output", "--namespace": "namespace"},
    "version": {},
    "patch": {
        "-p": "patch",
        "--patch": "patch",
        "--patch-file": "patch-file",
        "-m": "mode",
        "--mode": "mode",
        "--namespace": "namespace",
        "--timeout": "timeout",
    },
    "service": {},
}
_COMMAND_BOOLS = {
    "get": {"-w": "watch", "--watch": "watch", "-i": "insecure", "--insecure": "insecure"},
    "version": {
        "--json": "json",
        "--short": "short",
        "--client": "client",
        "-i": "insecure",
        "--insecure": "insecure",
    },
    "patch": {"--dry-run": "dry-run"},
    "service": {},
}
_COMMAND_ALIASES = {"services": "service"}


class UsageError(Exception):
    """Bad flags or arguments; talosctl prints the error and exits 1."""


@dataclass
class Invocation:
    command: str | None = None
    args: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, [default])[-1]

    def listed(self, name: str) -> list[str]:
        return [part.strip() for v in self.values.get(name, []) for part in v.split(",") if part.strip()]


@dataclass
class Output:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def out(self, text: str) -> None:
        self.stdout.append(text)

    def err(self, text: str) -> None:
        self.stderr.append(text)


def parse(argv: list[str]) -> Invocation:
    inv = Invocation()
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            inv.args += argv[i:]
            break
        if not token.startswith("-") or token == "-":
            if inv.command is None:
                inv.command = _COMMAND_ALIASES.get(token, token)
                if inv.command not in _COMMAND_VALUES:
                    known = ", ".join(sorted(_COMMAND_VALUES))
                    raise UsageError(
                        f'unknown command "{token}" for "talosctl" (the simulator implements {known})'
                    )
            else:
                inv.args.append(token)
            continue
        if token.startswith("--"):
            name, eq, inline = token.partition("=")
            has_inline = bool(eq)
        else:
            name, inline = token[:2], token[2:].removeprefix("=")
            has_inline = len(token) > 2
        values = {**_GLOBAL_VALUES, **_COMMAND_VALUES.get(inv.command or "", {})}
        bools = _COMMAND_BOOLS.get(inv.command or "", {})
        if name in values:
            if not has_inline:
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: {name}")
                inline = argv[i]
                i += 1
            inv.values.setdefault(values[name], []).append(inline)
        elif name in bools and (not has_inline or inline in ("true", "false")):
            if inline != "false":
                inv.flags.add(bools[name])
        elif token.startswith("--"):
            raise UsageError(f"unknown flag: {name}")
        else:
            raise UsageError(f"unknown shorthand flag: {name[1]!r} in {token}")
    return inv


@dataclass
class Target:
    """Where talosctl connects (the endpoint) and which nodes it asks through it."""

    sim: TalosSim
    endpoint: str
    nodes: list[str]

    def minor(self, node: str) -> tuple[int, int]:
        known = self.sim.nodes.get(node) or self.sim.nodes.get(self.endpoint)
        return known.minor if known is not None else (1, 13)

    def dial_error(self, node: str) -> str | None:
        for host in dict.fromkeys([self.endpoint or node, node]):
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if not self.sim.reachable(host):
                return (
                    'rpc error: code = Unavailable desc = connection error: desc = "transport: Error while '
                    f'dialing: dial tcp {host}:{self.sim.apid_port}: connect: connection refused"'
                )
        return None


def join_errors(errors: list[str], minor: tuple[int, int]) -> str:
    """How talosctl prints collected errors: 1.13 uses go-multierror, 1.14 errors.Join."""
    if minor >= (1, 14):
        return "\n".join(errors) + "\n"
    count = f"{len(errors)} error occurred" if len(errors) == 1 else f"{len(errors)} errors occurred"
    return count + ":\n" + "".join(f"\t* {e}\n" for e in errors) + "\n\n"
