"""Telling a server status apart from a stored message while fetching, which nats-py gets wrong.

nats-py's pull `fetch` reads any message with a `Status` header as a status from the server (404 no
messages, 408 request timeout, 100 heartbeat, ...): it silently drops it, and for any other value raises
from `fetch`, discarding the messages already fetched in that batch. A publisher's own `Status` header
(a header injection, or an unlucky header name) therefore made a stored event invisible to the daemon:
never handled, never dead-lettered, and it took valid neighbours down with it until they were exhausted.

A message a consumer delivers always carries its ack subject (`$JS.ACK.<stream>...`) as reply; a status
from the server never does. `install()` makes nats-py apply that test before looking at `Status`.
"""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

_ACK_PREFIX = "$JS.ACK."
_library_status_of = JetStreamContext.is_status_msg  # the class's own (bound) classmethod


def is_stored(msg: Msg) -> bool:
    """A message a consumer delivered from the stream (it has an ack subject), whatever its headers."""
    return (msg.reply or "").startswith(_ACK_PREFIX)


def _status_of(cls: Any, msg: Msg | None) -> str | None:
    if msg is not None and is_stored(msg):
        return None  # a stored message, whatever headers its publisher gave it
    status: str | None = _library_status_of(msg)
    return status


def install() -> None:
    """Idempotent; `daemon.bus.connection.connect` calls it before the daemon fetches anything (the
    state listing still uses nats-py's fetch; the runtime's own pull applies `is_stored` itself)."""
    if getattr(JetStreamContext.is_status_msg, "__func__", None) is not _status_of:
        JetStreamContext.is_status_msg = classmethod(_status_of)  # type: ignore[method-assign,assignment]
