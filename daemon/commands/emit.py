"""`castle-bridge emit SUBJECT --field=value ...` (or `--data JSON`): publish one event from a script.

The payload is validated against the subject's contract first, so a typo is an error here, not a dead
letter later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from contracts.events import EVENT_MODELS
from daemon.bus.codec import InvalidPayload, decode
from daemon.bus.publisher import Publisher
from daemon.commands.common import bus
from daemon.config import ConfigError, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "emit",
        help="publish an event (e.g. emit vm.created --name=tazlab-k8s-worker-1 --ip=192.168.1.21)",
        description="Publish one event. Fields as --field=value (values parsed as JSON when they can be, "
        "e.g. --vmid=301 --tags='[\"k8s\"]'), or the whole payload with --data.",
    )
    parser.add_argument("subject", choices=sorted(EVENT_MODELS), metavar="SUBJECT")
    parser.add_argument("--data", help="the payload as a JSON object")
    parser.add_argument("--msg-id", help="Nats-Msg-Id for de-duplication (default: a new uuid)")
    parser.add_argument("fields", nargs=argparse.REMAINDER, help="--field=value pairs")
    parser.set_defaults(handler=run)


def parse_fields(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read {item!r}: fields are --field=value")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    payload: dict[str, Any] = json.loads(args.data) if args.data else {}
    payload.update(parse_fields(args.fields))
    model = EVENT_MODELS[args.subject]
    try:
        event = decode(json.dumps(payload).encode(), {}, model)
    except InvalidPayload as exc:
        print(f"castle-bridge: not published: {exc.reason}")
        return 1

    async def publish() -> Any:
        async with bus(settings) as nc:
            return await Publisher(nc.jetstream()).publish(event, subject=args.subject, msg_id=args.msg_id)

    ack = asyncio.run(publish())
    print(
        json.dumps(
            {
                "subject": args.subject,
                "stream": ack.stream,
                "sequence": ack.seq,
                "duplicate": bool(ack.duplicate),
            }
        )
    )
    return 0
