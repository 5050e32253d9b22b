"""Which tailnet devices are ours, online, and stale."""

from __future__ import annotations

from datetime import datetime, timedelta

from contracts.policy import BridgePolicy
from contracts.tailnet import Device

# The API's lastSeen is only refreshed every few minutes for a connected device; when the newer
# connectedToControl field is absent, treat "seen within this window" as online.
ONLINE_WINDOW = timedelta(minutes=5)


def is_online(device: Device, now: datetime) -> bool:
    if device.connected_to_control is not None:
        return device.connected_to_control
    return device.last_seen is not None and now - device.last_seen <= ONLINE_WINDOW


def is_ours(device: Device, policy: BridgePolicy) -> bool:
    return set(policy.tags) <= set(device.tags)


def the_device(devices: list[Device], node: str, policy: BridgePolicy, now: datetime) -> Device | None:
    """The device that should be the node: ours, with the exact hostname; online ones first."""
    candidates = [d for d in devices if d.hostname == node and is_ours(d, policy)]
    candidates.sort(key=lambda d: (not is_online(d, now), d.magicdns_label != node))
    return candidates[0] if candidates else None
