"""The `castle-bridge` command line: one sub-command per module in daemon/commands/."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from contracts.redact import redact
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

# Secrets must never be passed as arguments: argv is world-readable in /proc. Any flag whose name says
# it carries one is refused, however it is spelled, and so is any argument holding a Tailscale secret.
_SECRET_WORDS = ("secret", "token", "password", "authkey", "auth-key", "credential", "oauth")


class _Parser(argparse.ArgumentParser):
    """argparse, minus echoing what it did not understand: a mistyped secret flag's value stays unprinted."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments"):
            message = "unrecognized arguments (not shown, in case they hold a secret); see --help"
        message = re.sub(r"invalid choice: '.*?' \(", "invalid choice (", message)
        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


_USE_INSTEAD = (
    "process arguments are visible to every user. Use CASTLE_BRIDGE_TAILSCALE__OAUTH_CLIENT_SECRET(_FILE) "
    "or CASTLE_BRIDGE_HTTP__WEBHOOK_TOKEN(_FILE)"
)


def refuse_secret_arguments(argv: Sequence[str]) -> None:
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if arg.startswith("-") and any(word in flag.lower() for word in _SECRET_WORDS):
            raise ConfigError(f"refusing {flag[:60]} on the command line: {_USE_INSTEAD}")
        if "tskey-" in arg:
            raise ConfigError(f"refusing an argument that holds a Tailscale key or secret: {_USE_INSTEAD}")


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
