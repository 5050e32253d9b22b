"""The simulated Tailscale control plane: tailnet state and the rules the real one enforces.

`TailnetSim` answers the API calls castle-bridge makes (OAuth token, auth keys, devices) with the real
status codes and JSON shapes, and lets simulated Talos nodes join with a minted key (`sim.joining`).
It reproduces what operators suffer from: a second device with a taken hostname gets the MagicDNS name
`hostname-1`. The HTTP wire lives in `sim/tailscale_api.py`; this module is plain state, driven by an
injectable clock so tests never wait for real minutes. Secrets are never logged here.
"""

from __future__ import annotations

import ipaddress
import random
import re
import string
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sim.joining import JoinedDevice, JoinRefused
from sim.tailnet_records import (
    AccessToken,
    ApiError,
    AuthKeyRecord,
    DeviceRecord,
    FaultPlan,
    OAuthClient,
    random_text,
)

__all__ = ["ApiError", "FaultPlan", "TailnetSim"]

MAX_KEY_EXPIRY_SECONDS = 90 * 86400
DEFAULT_KEY_EXPIRY_SECONDS = 90 * 86400
_DESCRIPTION = re.compile(r"^[A-Za-z0-9 -]{0,50}$")
_TAG = re.compile(r"^tag:[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
_TAILNET_V4 = ipaddress.ip_network("100.64.0.0/10")
_RESERVED_V4 = {ipaddress.ip_address("100.100.100.100")}  # Quad100, the in-tailnet DNS resolver
_V6_PREFIX = "fd7a:115c:a1e0:ab12:4843:cd96"
_FORBIDDEN = "calling actor does not have enough permissions to perform this function"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _dns_label(hostname: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", hostname.strip().lower()).strip("-")[:63].rstrip("-")
    return label or "device"


class TailnetSim:
    """One tailnet: OAuth clients, tokens, auth keys and devices, plus test-facing records and faults."""

    def __init__(
        self,
        domain: str = "magellanic-gondola.ts.net",
        *,
        clock: Callable[[], datetime] = _utc_now,
        organization: str = "example.com",
        seed: int | None = None,
    ) -> None:
        self.domain = domain
        self.organization = organization
        self.clock = clock
        self.ephemeral_grace = 60.0
        self.token_lifetime = 3600
        self.tag_owners: dict[str, tuple[str, ...]] = {}  # tag -> tags that own it (ACL tagOwners)
        self._rng = random.Random(seed)
        self._clients: dict[str, OAuthClient] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._keys: dict[str, AuthKeyRecord] = {}
        self._key_ids_by_secret: dict[str, str] = {}
        self._devices: dict[str, DeviceRecord] = {}  # by nodeId, in join order
        self._faults = FaultPlan()
        self._fault_rng = random.Random()
        # Test-facing records, in the spirit of the k8s-operator's recording fakes.
        self.key_requests: list[dict[str, Any]] = []
        self.minted_keys: list[str] = []
        self.revoked_keys: list[str] = []
        self.deleted_devices: list[str] = []
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"TailnetSim(domain={self.domain!r}, devices={len(self._devices)}, keys={len(self._keys)})"

    # -- faults -------------------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._faults = plan
        self._fault_rng = random.Random(plan.seed)

    def draw_fault(self) -> ApiError | None:
        """The injected error for the next `/api/v2/*` call, if the dice say so."""
        plan = self._faults
        if plan.error_rate <= 0 or self._fault_rng.random() >= plan.error_rate:
            return None
        status = self._fault_rng.choice(plan.statuses)
        retry_after = plan.retry_after if status == 429 else None
        message = "rate limit exceeded" if status == 429 else "injected fault: service unavailable"
        return ApiError(status, message, retry_after=retry_after)

    def draw_garble(self) -> bool:
        plan = self._faults
        return plan.garble_rate > 0 and self._fault_rng.random() < plan.garble_rate

    # -- OAuth --------------------------------------------------------------------------------------

    def add_oauth_client(
        self,
        client_id: str,
        secret: str,
        tags: Iterable[str],
        scopes: Iterable[str] = ("auth_keys", "devices:core"),
    ) -> None:
        self._clients[client_id] = OAuthClient(client_id, secret, tuple(tags), tuple(scopes))

    def issue_token(self, form: dict[str, str]) -> dict[str, Any]:
        """The client-credentials grant of `POST /api/v2/oauth/token`."""
        self.token_requests += 1
        grant = form.get("grant_type", "client_credentials")
        if grant != "client_credentials":
            raise ApiError(400, f"unsupported grant_type {grant[:40]!r}")
        client = self._clients.get(form.get("client_id", ""))
        if client is None or form.get("client_secret") != client.secret:
            raise ApiError(401, "invalid client credentials")
        scopes = client.scopes
        if form.get("scope"):
            wanted = tuple(form["scope"].replace(",", " ").split())
            extra = [s for s in wanted if s not in client.scopes]
            if extra:
                raise ApiError(403, f'OAuth client cannot grant scopes "{" ".join(extra)}"')
            scopes = wanted
        key_id = self._new_key_id()
        value = f"tskey-api-{key_id}-{random_text(self._rng, 32)}"
        expires = self.clock() + timedelta(seconds=self.token_lifetime)
        self._tokens[value] = AccessToken(value, client, scopes, expires)
        return {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "scope": " ".join(scopes),
            "tags": " ".join(client.tags),
        }

    def key_secrets(self) -> list[str]:
        """Every AuthKey secret ever minted here (for tests that scan for leaks)."""
        return [record.secret for record in self._keys.values()]

    def token_values(self) -> list[str]:
        """Every live access token (for tests that prove tokens never leak; never print these)."""
        return list(self._tokens)

    def invalidate_tokens(self) -> None:
        """Forget every issued token, as if they all expired at once (the next call gets a 401)."""
        self._tokens.clear()

    def authenticate(self, token: str | None, scope: str, *, write: bool) -> AccessToken:
        """The token behind a request, checked for life and for `scope` (401 or 403 otherwise)."""
        grant = self._tokens.get(token or "")
        if grant is None or self.clock() >= grant.expires:
            raise ApiError(401, "API token invalid")
        accepted = {scope, "all"} if write else {scope, f"{scope}:read", "all", "all:read"}
        if not accepted & set(grant.scopes):
            raise ApiError(403, _FORBIDDEN)
        return grant

    def check_tailnet(self, tailnet: str) -> None:
        if tailnet not in ("-", self.organization):
            raise ApiError(404, "tailnet not found")

    # -- keys ---------------------------------------------------------------------------------------

    def create_key(self, grant: AccessToken, body: Any) -> dict[str, Any]:
        """`POST /api/v2/tailnet/{tailnet}/keys`: validate like the real API, then mint."""
        self.key_requests.append(body if isinstance(body, dict) else {"<invalid>": repr(body)[:200]})
        if not isinstance(body, dict) or not isinstance(body.get("capabilities"), dict):
            raise ApiError(400, "capabilities are required")
        devices = body["capabilities"].get("devices") or {}
        create = (devices.get("create") or {}) if isinstance(devices, dict) else {}
        if not isinstance(create, dict):
            raise ApiError(400, "capabilities.devices.create must be an object")
        tags = create.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "capabilities.devices.create.tags must be a list of strings")
        self._check_tags(grant.client, tags)
        description = body.get("description", "")
        if not isinstance(description, str) or not _DESCRIPTION.fullmatch(description):
            raise ApiError(
                400, "description must be at most 50 characters of letters, digits, hyphens and spaces"
            )
        expiry = body.get("expirySeconds", DEFAULT_KEY_EXPIRY_SECONDS)
        numeric = isinstance(expiry, int | float) and not isinstance(expiry, bool)
        if not numeric or not 0 < expiry <= MAX_KEY_EXPIRY_SECONDS:
            raise ApiError(400, f"expirySeconds must be between 1 and {MAX_KEY_EXPIRY_SECONDS} seconds")
        now = self.clock()
        key_id = self._new_key_id()
        record = AuthKeyRecord(
            id=key_id,
            secret=f"tskey-auth-{key_id}-{random_text(self._rng, 32)}",
            created=now,
            expires=now + timedelta(seconds=float(expiry)),
            description=description,
            reusable=bool(create.get("reusable", False)),
            ephemeral=bool(create.get("ephemeral", False)),
            preauthorized=bool(create.get("preauthorized", False)),
            tags=tuple(tags),
        )
        self._keys[key_id] = record
        self._key_ids_by_secret[record.secret] = key_id
        self.minted_keys.append(key_id)
        return record.to_json(now, with_secret=True)

    def _check_tags(self, client: OAuthClient, tags: list[str]) -> None:
        # Keys owned by the tailnet (minted through OAuth) must carry exactly the client's tags, or tags
        # those tags own; a subset of the client's tags is refused like any other tag.
        owned = all(set(self.tag_owners.get(t, ())) & set(client.tags) for t in tags)
        exact = set(tags) == set(client.tags)
        if not tags or not all(_TAG.fullmatch(t) for t in tags) or not (exact or owned):
            raise ApiError(400, f"requested tags [{' '.join(tags)}] are invalid or not permitted")

    def get_key(self, key_id: str) -> dict[str, Any]:
        record = self._keys.get(key_id)
        if record is None:
            raise ApiError(404, "key not found")
        return record.to_json(self.clock())

    def list_keys(self) -> dict[str, Any]:
        now = self.clock()
        active = [k for k in self._keys.values() if k.revoked is None and now < k.expires]
        return {"keys": [{"id": k.id, "description": k.description} for k in active]}

    def delete_key(self, key_id: str) -> None:
        record = self._keys.get(key_id)
        if record is None:
            raise ApiError(404, "key not found")
        if record.revoked is None:
            record.revoked = self.clock()
            self.revoked_keys.append(key_id)

    def key_secret_id(self, secret: str) -> str | None:
        """The id of the key with this secret (for tests that check what a node was given)."""
        return self._key_ids_by_secret.get(secret)

    # -- devices ------------------------------------------------------------------------------------

    def list_devices(self, *, all_fields: bool = True) -> dict[str, Any]:
        self._reap_ephemeral()
        now = self.clock()
        return {"devices": [d.to_json(now, all_fields=all_fields) for d in self._devices.values()]}

    def get_device(self, device_id: str, *, all_fields: bool = True) -> dict[str, Any]:
        record = self._find_device(device_id)
        if record is None:
            raise ApiError(404, "device not found")
        return record.to_json(self.clock(), all_fields=all_fields)

    def delete_device(self, device_id: str) -> None:
        record = self._find_device(device_id)
        if record is None:
            raise ApiError(404, "device not found")
        del self._devices[record.node_id]
        self.deleted_devices.append(record.node_id)

    def delete_device_by_hand(self, node_id: str) -> bool:
        """An operator removes the device in the admin console (not recorded in `deleted_devices`)."""
        return self._devices.pop(node_id, None) is not None

    def _find_device(self, device_id: str) -> DeviceRecord | None:
        self._reap_ephemeral()
        found = self._devices.get(device_id)
        return found or next((d for d in self._devices.values() if d.id == device_id), None)

    def _reap_ephemeral(self) -> None:
        # Ephemeral devices go once they have been offline for the grace period; done lazily on read.
        horizon = self.clock() - timedelta(seconds=self.ephemeral_grace)
        for node_id, record in list(self._devices.items()):
            gone_at = record.disconnected_at
            if record.ephemeral and not record.connected and gone_at is not None and gone_at <= horizon:
                del self._devices[node_id]

    # -- joining (sim.joining.TailnetJoiner) ---------------------------------------------------------

    async def join(self, auth_key: str, hostname: str) -> JoinedDevice:
        """A node's tailscaled registers with `auth_key`; raises JoinRefused like the control plane."""
        key_id = self._key_ids_by_secret.get(auth_key)
        record = self._keys.get(key_id or "")
        if record is None:
            raise JoinRefused("invalid key: unable to validate API key")
        now = self.clock()
        why = record.refusal(now)
        if why is not None:
            raise JoinRefused(f"invalid key: API key {record.id} not valid ({why})")
        if not hostname.strip():
            raise JoinRefused("hostname is required")
        self._reap_ephemeral()
        record.uses += 1
        device = DeviceRecord(
            id=str(self._rng.randrange(10**14, 10**17)),
            node_id=f"n{random_text(self._rng, 10)}CNTRL",
            hostname=hostname,
            name=f"{self._free_label(_dns_label(hostname))}.{self.domain}",
            addresses=self._new_addresses(),
            tags=record.tags,
            authorized=record.preauthorized,
            ephemeral=record.ephemeral,
            created=now,
            last_seen=now,
            key_id=record.id,
            machine_key=f"mkey:{random_text(self._rng, 64, string.hexdigits[:16])}",
            node_key=f"nodekey:{random_text(self._rng, 64, string.hexdigits[:16])}",
        )
        self._devices[device.node_id] = device
        return JoinedDevice(node_id=device.node_id, name=device.name, addresses=device.addresses)

    def set_connected(self, node_id: str, connected: bool) -> None:
        """tailscaled went up or down; a device deleted meanwhile stays deleted (nothing to update)."""
        record = self._devices.get(node_id)
        if record is None:
            return
        now = self.clock()
        if record.connected and not connected:
            record.disconnected_at = now
        record.connected = connected
        record.last_seen = now
        if connected:
            record.disconnected_at = None

    def device(self, node_id: str) -> dict[str, Any] | None:
        self._reap_ephemeral()
        record = self._devices.get(node_id)
        return None if record is None else record.to_json(self.clock())

    def _free_label(self, label: str) -> str:
        # Any existing device, online or not, keeps its name: the newcomer becomes label-1, -2, ...
        taken = {d.name.split(".", 1)[0] for d in self._devices.values()}
        candidate, n = label, 0
        while candidate in taken:
            n += 1
            candidate = f"{label}-{n}"
        return candidate

    def _new_addresses(self) -> tuple[str, str]:
        taken = {d.addresses[0] for d in self._devices.values()}
        base = int(_TAILNET_V4.network_address)
        while True:
            v4 = ipaddress.ip_address(base + self._rng.randrange(1, _TAILNET_V4.num_addresses - 1))
            if v4 not in _RESERVED_V4 and str(v4) not in taken:
                break
        # Like the real control plane, the IPv6 address ends with the IPv4 address's 32 bits.
        low = int(v4)
        v6 = ipaddress.ip_address(f"{_V6_PREFIX}:{low >> 16:x}:{low & 0xFFFF:x}")
        return str(v4), str(v6)

    def _new_key_id(self) -> str:
        return f"k{random_text(self._rng, 10)}CNTRL"
