"""Records of the simulated tailnet: OAuth clients, tokens, auth keys, devices, fault plans, and their JSON.

Kept apart from the rules in `sim/tailnet.py` so each file reads in one sitting. The JSON shapes follow the
Tailscale API v2 (camelCase, RFC 3339 times); secrets are excluded from every repr so that a record printed
in a test failure or a log line never shows a key, a client secret or a token.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"  # what the API shows for "never" (e.g. expiry of a tagged device)
CLIENT_VERSION = "1.82.5-t7a1f5e8a2-g3c9b1d4e0"
_ALNUM = string.ascii_letters + string.digits


class ApiError(Exception):
    """A refusal the simulated API answers with `{"message": ...}` and this HTTP status."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_text(rng: random.Random, length: int, alphabet: str = _ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class FaultPlan:
    """Faults injected into every `/api/v2/*` call: errors at a rate, latency, and garbled 200 bodies.

    `garble_rate` (an addition to the brief's fields) replaces successful JSON bodies with text that is not
    JSON, the way a misbehaving proxy would, so the client's `BadResponse` path is testable over real HTTP.
    """

    error_rate: float = 0.0
    statuses: tuple[int, ...] = (429, 500, 502, 503)
    retry_after: float | None = None
    latency: float = 0.0
    seed: int | None = None
    garble_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "garble_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not self.statuses or any(not 400 <= s <= 599 for s in self.statuses):
            raise ValueError("statuses must be a non-empty list of HTTP error codes (400-599)")
        if self.latency < 0 or (self.retry_after is not None and self.retry_after < 0):
            raise ValueError("latency and retry_after must not be negative")
        object.__setattr__(self, "statuses", tuple(int(s) for s in self.statuses))

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FaultPlan:
        known = {"error_rate", "statuses", "retry_after", "latency", "seed", "garble_rate"}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(body)
        if "statuses" in values:
            values["statuses"] = tuple(values["statuses"])
        return cls(**values)


@dataclass
class OAuthClient:
    client_id: str
    secret: str = field(repr=False)
    tags: tuple[str, ...]
    scopes: tuple[str, ...]


@dataclass
class AccessToken:
    value: str = field(repr=False)
    client: OAuthClient
    scopes: tuple[str, ...]
    expires: datetime


@dataclass
class AuthKeyRecord:
    id: str
    secret: str = field(repr=False)
    created: datetime
    expires: datetime
    description: str
    reusable: bool
    ephemeral: bool
    preauthorized: bool
    tags: tuple[str, ...]
    revoked: datetime | None = None
    uses: int = 0

    def refusal(self, now: datetime) -> str | None:
        """Why a join with this key is refused now, or None when it is usable."""
        if self.revoked is not None:
            return "revoked"
        if now >= self.expires:
            return "expired"
        if self.uses and not self.reusable:
            return "already used"
        return None

    def to_json(self, now: datetime, *, with_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "keyType": "auth"}
        if with_secret:
            body["key"] = self.secret
        body["created"] = rfc3339(self.created)
        body["expires"] = rfc3339(self.expires)
        if self.revoked is not None:
            body["revoked"] = rfc3339(self.revoked)
        body["capabilities"] = {
            "devices": {
                "create": {
                    "reusable": self.reusable,
                    "ephemeral": self.ephemeral,
                    "preauthorized": self.preauthorized,
                    "tags": list(self.tags),
                }
            }
        }
        body["description"] = self.description
        # A consumed single-use key can never register another device, so it reads as invalid too.
        body["invalid"] = self.refusal(now) is not None
        return body


@dataclass
class DeviceRecord:
    id: str
    node_id: str
    hostname: str
    name: str
    addresses: tuple[str, ...]
    tags: tuple[str, ...]
    authorized: bool
    ephemeral: bool
    created: datetime
    last_seen: datetime
    key_id: str
    connected: bool = True
    disconnected_at: datetime | None = None
    machine_key: str = ""
    node_key: str = ""

    def to_json(self, now: datetime, *, all_fields: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "addresses": list(self.addresses),
            "id": self.id,
            "nodeId": self.node_id,
            "user": "tagged-devices" if self.tags else "operator@example.com",
            "name": self.name,
            "hostname": self.hostname,
            "clientVersion": CLIENT_VERSION,
            "updateAvailable": False,
            "os": "linux",
            "created": rfc3339(self.created),
            "connectedToControl": self.connected,
            "lastSeen": rfc3339(now if self.connected else self.last_seen),
            # Tagged devices have key expiry disabled by default, and the API shows the zero time.
            "keyExpiryDisabled": bool(self.tags),
            "expires": ZERO_TIME,
            "authorized": self.authorized,
            "isExternal": False,
            "machineKey": self.machine_key,
            "nodeKey": self.node_key,
            "blocksIncomingConnections": False,
            "tags": list(self.tags),
            "tailnetLockError": "",
            "tailnetLockKey": "",
        }
        if all_fields:
            body["enabledRoutes"] = []
            body["advertisedRoutes"] = []
            body["clientConnectivity"] = {
                "endpoints": [],
                "mappingVariesByDestIP": False,
                "latency": {},
                "clientSupports": {
                    "hairPinning": False,
                    "ipv6": False,
                    "pcp": False,
                    "pmp": False,
                    "udp": True,
                    "upnp": False,
                },
            }
        return body
