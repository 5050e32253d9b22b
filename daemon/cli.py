"""The `castle-bridge` command line: one sub-command per module in daemon/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from daemon.config import ConfigError

# Each module exposes `register(subparsers)`, which adds its parser and sets `handler` to a callable
# taking the parsed arguments and returning the exit status.
COMMAND_MODULES = (
    "daemon.commands.run",
    "daemon.commands.demo",
    "daemon.commands.status",
    "daemon.commands.emit",
    "daemon.commands.plan",
    "daemon.commands.doctor",
    "daemon.commands.check_vault",
    "daemon.commands.contracts_export",
    "daemon.commands.sim",
)

# Secrets must never be passed as arguments: argv is world-readable in /proc.
_SECRET_FLAGS = ("--oauth-client-secret", "--webhook-token", "--client-secret", "--token", "--secret")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castle-bridge",
        description="Join freshly born Talos nodes to the tailnet, verify them, keep them healed.",
    )
    parser.add_argument("--config", type=_path, default=None, help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command not built yet
            raise
        module.register(sub)
    return parser


def _path(text: str) -> object:
    from pathlib import Path

    return Path(text)


def refuse_secret_arguments(argv: Sequence[str]) -> None:
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in _SECRET_FLAGS:
            raise ConfigError(
                f"refusing {flag} on the command line: process arguments are visible to every user. "
                "Use CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_SECRET(_FILE) or CASTLE_BRIDGE_HTTP__WEBHOOK_TOKEN(_FILE)"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        refuse_secret_arguments(args_list)
        args = build_parser().parse_args(args_list)
        status: int = args.handler(args)
        return status
    except ConfigError as exc:
        print(f"castle-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
