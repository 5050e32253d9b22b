"""`castle-bridge contracts export DIR`: JSON Schemas per subject and an AsyncAPI 3.0 document."""

from __future__ import annotations

import argparse
from pathlib import Path

from contracts.export import write_contracts


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("contracts", help="the event contracts")
    inner = parser.add_subparsers(dest="contracts_command", metavar="ACTION", required=True)
    export = inner.add_parser("export", help="write a JSON Schema per subject and an AsyncAPI document")
    export.add_argument("directory", type=Path, help="where to write (created if missing)")
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    written = write_contracts(args.directory)
    for path in written:
        print(path)
    return 0
