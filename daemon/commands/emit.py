"""`castle-bridge emit SUBJECT --field=value ...` (or `--data JSON`): publish one event from a script.

The payload is validated against the subject's contract first, so a typo is an error here, not a dead
letter later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError

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


# The fields are a REMAINDER, so the command's own options written after SUBJECT land among them;
# left there, --msg-id would silently become a payload field and the de-duplication id a random one.
_OWN_OPTIONS = {"--data": "data", "--msg-id": "msg_id"}


def take_own_options(args: argparse.Namespace) -> list[str]:
    """Move `--data`/`--msg-id` (as `--opt=value` or `--opt value`) out of the fields into `args`."""
    fields: list[str] = []
    items = iter(args.fields)
    for item in items:
        flag, sep, value = item.partition("=")
        if flag not in _OWN_OPTIONS:
            fields.append(item)
            continue
        if not sep:
            value = next(items, "")
            if not value:
                raise ConfigError(f"{flag} needs a value")
        setattr(args, _OWN_OPTIONS[flag], value)
    return fields


def payload_of(args: argparse.Namespace) -> dict[str, Any]:
    fields = take_own_options(args)
    payload: dict[str, Any] = {}
    if args.data:
        try:
            payload = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ConfigError(f"--data must be a JSON object, got {type(payload).__name__}")
    payload.update(parse_fields(fields))
    return payload


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    payload = payload_of(args)
    model = EVENT_MODELS[args.subject]
    try:
        event = decode(json.dumps(payload).encode(), {}, model)
    except InvalidPayload as exc:
        print(f"castle-bridge: not published: {exc.reason}", file=sys.stderr)
        return 1

    async def publish() -> Any:
        async with bus(settings) as nc:
            return await Publisher(nc.jetstream()).publish(event, subject=args.subject, msg_id=args.msg_id)

    try:
        ack = asyncio.run(publish())
    except NoStreamResponseError:
        print(
            f"castle-bridge: not published: no stream captures {args.subject} "
            f"(the daemon creates {settings.nats.stream} when it starts: run `castle-bridge run` once)",
            file=sys.stderr,
        )
        return 1
    except (NatsError, TimeoutError) as exc:
        print(f"castle-bridge: not published: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
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
