"""Typed outcomes and errors.

Handlers and adapters raise these; the runtime maps them to acknowledgements in one table
(daemon/bus/outcome.py): `Retry` and `Transient` -> nak with a delay, `Permanent` -> term + dead letter.
Messages must never carry a secret; adapters pass their texts through `contracts.redact` first.
"""

from __future__ import annotations


class CastleError(Exception):
    """Base of every error castle-bridge raises on purpose."""


class Retry(CastleError):
    """The work cannot be done yet; deliver the message again after `delay` seconds."""

    def __init__(self, reason: str, delay: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Permanent(CastleError):
    """The message can never be handled; it goes to the dead letter with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transient(CastleError):
    """An external system is unavailable right now (timeout, 429, 5xx, unreachable node)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class NotFound(CastleError):
    """The thing asked for does not exist (HTTP 404, a missing Talos resource)."""


class Conflict(CastleError):
    """A compare-and-set lost: someone else changed the record first."""


class AuthError(Permanent):
    """Credentials were refused (HTTP 401/403)."""


class TagNotPermitted(Permanent):
    """The OAuth client may not mint keys with these tags."""

    def __init__(self, tags: tuple[str, ...] | list[str], detail: str) -> None:
        joined = ", ".join(tags)
        super().__init__(
            f"the Tailscale API refused tags [{joined}]: {detail}. Fix: give the OAuth client these tags "
            "(admin console > Settings > OAuth clients) and make sure tagOwners in the ACL policy own them"
        )
        self.tags = tuple(tags)


class PatchRejected(Permanent):
    """Talos refused the machine-config patch (validation failed); retrying will not help."""


class BadResponse(Transient):
    """An external API answered with something that does not parse."""
