"""The Tailscale API v2 wire format: parsing its JSON into the contract models, and building request bodies.

The API speaks camelCase and may omit optional fields (older clients, shared-in devices, fields the
`fields=default` view leaves out). Private pydantic models read it tolerantly; the contract models
(`AuthKey`, `KeyInfo`, `Device`) are what leaves this module. A body that does not fit raises `WireError`
with the failing field locations only, never the values: a create-key body carries the key itself.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from contracts.tailnet import AuthKey, Device, KeyInfo

DESCRIPTION_MAX = 50
_NOT_IN_DESCRIPTION = re.compile(r"[^A-Za-z0-9 -]+")


class WireError(ValueError):
    """The body does not have the expected shape; the text names fields, never values."""


def key_description(node: str) -> str:
    """`castle-bridge <node>` made acceptable to the API: letters, digits, hyphens, spaces; 50 at most."""
    text = _NOT_IN_DESCRIPTION.sub("-", f"castle-bridge {node}")
    return text[:DESCRIPTION_MAX].rstrip(" ")


def key_request(
    *, tags: tuple[str, ...], ephemeral: bool, expiry_seconds: int, description: str
) -> dict[str, Any]:
    """The body of `POST /api/v2/tailnet/{tailnet}/keys` for one single-use, pre-authorized node key."""
    return {
        "capabilities": {
            "devices": {
                "create": {
                    "reusable": False,
                    "ephemeral": ephemeral,
                    "preauthorized": True,
                    "tags": list(tags),
                }
            }
        },
        "expirySeconds": expiry_seconds,
        "description": description,
    }


def _time_or_none(value: object) -> object:
    # The API writes "never" as an empty string or Go's zero time; both mean "no time" to us.
    if value in ("", None) or (isinstance(value, str) and value.startswith("0001-01-01")):
        return None
    return value


W = TypeVar("W", bound="_Wire")
_Time = Annotated[datetime | None, BeforeValidator(_time_or_none)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)


class _Create(_Wire):
    reusable: bool = False
    ephemeral: bool = False
    preauthorized: bool = False
    tags: list[str] = Field(default_factory=list)


class _DeviceCaps(_Wire):
    create: _Create = Field(default_factory=_Create)


class _Capabilities(_Wire):
    devices: _DeviceCaps = Field(default_factory=_DeviceCaps)


class _Key(_Wire):
    id: str
    key: SecretStr | None = None
    created: _Time = None
    expires: _Time = None
    revoked: _Time = None
    invalid: bool = False
    description: str = ""
    capabilities: _Capabilities = Field(default_factory=_Capabilities)


class _Device(_Wire):
    id: str
    node_id: str = Field(alias="nodeId")
    name: str
    hostname: str
    addresses: list[str] = Field(default_factory=list)
    tags: list[str] | None = None
    authorized: bool = False
    last_seen: _Time = Field(default=None, alias="lastSeen")
    connected_to_control: bool | None = Field(default=None, alias="connectedToControl")
    os: str = ""
    client_version: str = Field(default="", alias="clientVersion")


class _DeviceList(_Wire):
    devices: list[_Device]


class _Token(_Wire):
    access_token: SecretStr
    expires_in: float = Field(gt=0)
    token_type: str = "Bearer"


def _validate(model: type[W], body: Any) -> W:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        places = sorted({".".join(str(p) for p in err["loc"]) or "<body>" for err in exc.errors()})
        raise WireError("unexpected JSON at " + ", ".join(places[:5])) from None


def parse_token(body: Any) -> tuple[SecretStr, float]:
    """The access token and its lifetime in seconds from the OAuth token response."""
    token = _validate(_Token, body)
    if not token.access_token.get_secret_value():
        raise WireError("unexpected JSON at access_token (empty)")
    return token.access_token, float(token.expires_in)


def parse_auth_key(body: Any, *, fallback_tags: tuple[str, ...]) -> AuthKey:
    """The freshly minted key from the create-key response (the only response that carries `key`)."""
    wire = _validate(_Key, body)
    if wire.key is None or wire.created is None or wire.expires is None:
        missing = [n for n in ("key", "created", "expires") if getattr(wire, n) is None]
        raise WireError("missing " + ", ".join(missing) + " in the create-key response")
    return AuthKey(
        key_id=wire.id,
        secret=wire.key,
        created=wire.created,
        expires=wire.expires,
        tags=tuple(wire.capabilities.devices.create.tags) or fallback_tags,
        description=wire.description,
    )


def parse_key_info(body: Any) -> KeyInfo:
    wire = _validate(_Key, body)
    create = wire.capabilities.devices.create
    return KeyInfo(
        key_id=wire.id,
        created=wire.created,
        expires=wire.expires,
        revoked=wire.revoked,
        invalid=wire.invalid,
        description=wire.description,
        tags=tuple(create.tags),
        reusable=create.reusable,
        ephemeral=create.ephemeral,
        preauthorized=create.preauthorized,
    )


def parse_devices(body: Any) -> list[Device]:
    return [
        Device(
            id=d.id,
            node_id=d.node_id,
            name=d.name,
            hostname=d.hostname,
            addresses=tuple(d.addresses),
            tags=tuple(d.tags or ()),
            authorized=d.authorized,
            last_seen=d.last_seen,
            connected_to_control=d.connected_to_control,
            os=d.os,
            client_version=d.client_version,
        )
        for d in _validate(_DeviceList, body).devices
    ]


def error_message(body: Any, fallback: str) -> str:
    """The API's `{"message": ...}`, or `fallback` when the body has none."""
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip():
        return str(body["message"]).strip()[:500]
    return fallback
