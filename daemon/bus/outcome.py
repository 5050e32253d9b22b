"""The one table that turns a handler's outcome into an acknowledgement.

returned                  -> ack
Retry(delay)              -> nak(delay)
Transient / other error   -> nak(backoff)        (a bug must not lose the message either)
Permanent / invalid body  -> term + dead letter
any retry on the last allowed delivery -> term + dead letter ("gave up after N deliveries")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.errors import Permanent, Retry, Transient
from contracts.redact import redact
from daemon.bus.codec import InvalidPayload

Action = Literal["ack", "nak", "term"]


@dataclass(frozen=True)
class Outcome:
    action: Action
    label: str  # metric/log label: ok, retry, transient, error, permanent, invalid, exhausted
    delay: float | None = None
    reason: str | None = None

    @property
    def dead_letter(self) -> bool:
        return self.action == "term"


def backoff(deliveries: int, base: float = 1.0, cap: float = 60.0) -> float:
    return float(min(cap, base * 2 ** max(0, deliveries - 1)))


def decide(exc: BaseException | None, deliveries: int, max_deliver: int) -> Outcome:
    if exc is None:
        return Outcome("ack", "ok")
    if isinstance(exc, InvalidPayload):
        return Outcome("term", "invalid", reason=exc.reason)
    if isinstance(exc, Permanent):
        return Outcome("term", "permanent", reason=redact(exc.reason))
    if isinstance(exc, Retry):
        label, delay, reason = "retry", exc.delay, exc.reason
    elif isinstance(exc, Transient):
        label, delay, reason = "transient", exc.retry_after or backoff(deliveries), exc.reason
    else:
        label, delay, reason = "error", backoff(deliveries), f"{type(exc).__name__}: {exc}"
    reason = redact(reason)
    if deliveries >= max_deliver:
        return Outcome("term", "exhausted", reason=f"gave up after {deliveries} deliveries: {reason}")
    return Outcome("nak", label, delay=delay, reason=reason)
