"""talosctl, emulated over the simulated nodes.

`run_talosctl` understands the invocations castle-bridge makes (`get`, `version`, `patch machineconfig`,
`service`) with talosctl's flags (global flags before or after the subcommand), its `-o json`/`-o yaml`
output shapes, its error texts (1.13 and 1.14 wordings differ) and its exit codes: every error exits 1,
a Go panic exits 2. Anything else is refused with exit 1 and a clear message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.talosctl_cli import Output, Target, UsageError, parse
from sim.talosctl_commands import dispatch

if TYPE_CHECKING:
    from sim.talos import TalosSim


async def run_talosctl(
    sim: TalosSim, argv: list[str], stdin: bytes, *, defaults: dict[str, list[str]] | None = None
) -> tuple[int, str, str]:
    """Run one talosctl invocation against the simulated nodes: (exit code, stdout, stderr).

    `defaults` carries the endpoints and nodes of the talosconfig context, used when the flags give none.
    The argv is recorded in `sim.invocations`; stdin never is.
    """
    sim.invocations.append(list(argv))
    await sim.refresh()
    output = Output()
    try:
        inv = parse(argv)
        defaults = defaults or {}
        endpoints = inv.listed("endpoints") or defaults.get("endpoints", [])
        nodes = inv.listed("nodes") or defaults.get("nodes", []) or endpoints[:1]
        target = Target(sim, endpoints[0] if endpoints else "", nodes)
        code = await dispatch(inv, target, stdin, output)
    except UsageError as exc:
        output.err(f"{exc}\n")
        code = 1
    return code, "".join(output.stdout), "".join(output.stderr)
