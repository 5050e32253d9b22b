"""Constrained scalar types shared by the event models and the ports."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^tag:[a-z0-9]([a-z0-9-]*[a-z0-9])?$", re.IGNORECASE)


def _normalise_label(value: object) -> object:
    # Hostnames are case-insensitive; Talos and MagicDNS both use the lower-case form.
    return value.strip().lower() if isinstance(value, str) else value


def _check_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    return value


def _canonical_ipv4(value: str) -> str | None:
    """`value` when it already is an IPv4 address in canonical form, else None: the common case, checked
    in C (ipaddress takes several microseconds, and every event carries an address)."""
    try:
        packed = socket.inet_pton(socket.AF_INET, value)
    except OSError:
        return None
    # inet_pton reads "010.1.1.1" as 10.1.1.1, which ipaddress refuses: only an exact round trip counts.
    return value if socket.inet_ntop(socket.AF_INET, packed) == value else None


def _check_ip(value: object) -> str:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if not isinstance(value, str):
        raise ValueError("must be an IP address string")
    if (canonical := _canonical_ipv4(value)) is not None:
        return canonical
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value[:64]!r} is not an IP address") from None


def _check_tag(value: str) -> str:
    if not _TAG.fullmatch(value):
        raise ValueError(f"{value[:64]!r} is not a Tailscale tag (expected 'tag:<name>')")
    return value.lower()


NodeName = Annotated[
    str,
    BeforeValidator(_normalise_label),
    AfterValidator(_check_label),
    Field(
        min_length=1,
        max_length=63,
        description="Node hostname, a DNS label (e.g. tazlab-k8s-worker-1)",
        examples=["tazlab-k8s-worker-1"],
    ),
]
"""A node's hostname: one DNS label, lower-cased."""

IPAddress = Annotated[
    str,
    BeforeValidator(_check_ip),
    PlainSerializer(str),
    Field(description="An IPv4 or IPv6 address", json_schema_extra={"format": "ip"}),
]
"""An IP address kept in its canonical text form (events are JSON, so strings travel best)."""

Tag = Annotated[str, AfterValidator(_check_tag), Field(description="A Tailscale ACL tag, 'tag:<name>'")]

Role = Literal["controlplane", "worker"]
