"""Rendering of what lands on a Talos node: the tailscale ExtensionServiceConfig and the node-IP narrowing.

Pure functions over the contracts: no I/O, no clock. The handlers (patch, heal, plan, audit) call them so
that every path renders the same documents, and the digest stays stable across re-mints because the key
is left out of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from contracts.errors import Permanent
from contracts.policy import BridgePolicy, lab_networks
from contracts.talos import AUTHKEY_VAR, BridgePatch, patch_digest

if TYPE_CHECKING:  # the key type comes with the contracts; render itself never touches the value
    from pydantic import SecretStr

# `$patch: delete` of a whole document arrived in Talos 1.8; 1.14 is the newest schema we checked.
OLDEST_SUPPORTED = (1, 8)
NEWEST_SUPPORTED = (1, 14)
# From 1.14 on, kubelet node-IP selection lives in the KubeNodeConfig document, not in v1alpha1.
KUBE_NODE_CONFIG_SINCE = (1, 14)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ROLES = ("controlplane", "worker")
STATE_DIR = "/var/lib/tailscale"


def _supported_range() -> str:
    return f"v{OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]} to v{NEWEST_SUPPORTED[0]}.{NEWEST_SUPPORTED[1]}"


def talos_minor(version: str) -> tuple[int, int]:
    """(major, minor) of a Talos version tag such as v1.13.9 or 1.14.0-rc.1; refuses unknown versions."""
    match = _VERSION.fullmatch(version.strip())
    if match is None:
        raise Permanent(
            f"{version[:40]!r} is not a Talos version tag (expected e.g. v1.13.9); "
            f"castle-bridge supports Talos {_supported_range()}"
        )
    minor = (int(match.group(1)), int(match.group(2)))
    if not OLDEST_SUPPORTED <= minor <= NEWEST_SUPPORTED:
        raise Permanent(
            f"Talos {version} is not supported: castle-bridge renders patches for Talos {_supported_range()} "
            "(older releases cannot delete a config document with `$patch: delete`; newer ones have a "
            "config schema this release has not been checked against)"
        )
    return minor


def desired_environment(node: str, tags: tuple[str, ...]) -> tuple[str, ...]:
    """The extension environment after TS_AUTHKEY, in the fixed order the digest relies on."""
    return (
        f"TS_HOSTNAME={node}",
        f"TS_EXTRA_ARGS=--advertise-tags={','.join(tags)} --accept-routes=false",
        f"TS_STATE_DIR={STATE_DIR}",
        "TS_AUTH_ONCE=true",
    )


def node_ip_documents(
    role: str, talos_version: str, lab_subnets: tuple[str, ...]
) -> tuple[dict[str, Any], ...]:
    """Patch documents that keep kubelet (and etcd on control planes) on the lab subnets."""
    minor = talos_minor(talos_version)
    _check_role(role)
    subnets = [str(net) for net in _checked_subnets(lab_subnets)]
    etcd = {"cluster": {"etcd": {"advertisedSubnets": list(subnets)}}}
    if minor >= KUBE_NODE_CONFIG_SINCE:
        # 1.14 dropped machine.kubelet from v1alpha1; etcd settings stayed there (cluster.etcd).
        kube_node: dict[str, Any] = {
            "apiVersion": "v1alpha1",
            "kind": "KubeNodeConfig",
            "nodeIP": {"validSubnets": list(subnets)},
        }
        return (kube_node, etcd) if role == "controlplane" else (kube_node,)
    legacy: dict[str, Any] = {"machine": {"kubelet": {"nodeIP": {"validSubnets": list(subnets)}}}}
    if role == "controlplane":
        legacy.update(etcd)
    return (legacy,)


def render_patch(
    *,
    node: str,
    ip: str,
    role: str,
    talos_version: str,
    policy: BridgePolicy,
    auth_key: SecretStr | None,
    extension_exists: bool,
    narrow_node_ip: bool,
) -> BridgePatch:
    """Everything one `talosctl patch machineconfig` applies to a node; refuses what cannot be right."""
    if not _DNS_LABEL.fullmatch(node):
        raise Permanent(
            f"node name {node[:70]!r} is not a DNS label (1-63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'); Tailscale and MagicDNS need one"
        )
    _check_role(role)
    _check_in_lab(ip, policy)
    if not policy.tags:
        raise Permanent("at least one Tailscale tag is required to advertise on the node")
    environment = desired_environment(node, policy.tags)
    documents = node_ip_documents(role, talos_version, policy.lab_subnets)
    return BridgePatch(
        node=node,
        talos_version=talos_version,
        environment=environment,
        auth_key=auth_key,
        delete_existing=extension_exists,
        node_ip_documents=documents if narrow_node_ip else (),
        # Always over the desired narrowing, so a heal that leaves node IP alone keeps the digest.
        digest=patch_digest(environment, documents),
    )


def environment_differences(desired: tuple[str, ...], actual: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two environments; the key's value is never compared or shown."""
    want = _by_key(desired)
    have = _by_key(actual)
    findings = [
        f"malformed environment entry {entry[:60]!r} (expected KEY=value)"
        for entry in actual
        if "=" not in entry
    ]
    keys = list(dict.fromkeys([*want, *have]))
    for key in keys:
        values = have.get(key, [])
        if key == AUTHKEY_VAR:
            # Only the count matters: more than one key entry means a patch forgot the delete step.
            if len(values) > 1:
                findings.append(f"{key} is duplicated ({len(values)} entries)")
            continue
        if key not in want:
            findings.append(
                f"unexpected {key}={values[0]!r}"
                if len(values) == 1
                else f"unexpected {key} ({len(values)} entries)"
            )
            continue
        wanted = want[key][0]
        if not values:
            findings.append(f"missing {key} (want {wanted!r})")
        elif len(values) > 1:
            shown = ", ".join(repr(v) for v in values)
            findings.append(f"{key} is duplicated ({len(values)} entries: {shown}); want one, {wanted!r}")
        elif values[0] != wanted:
            findings.append(f"{key} differs: node has {values[0]!r}, want {wanted!r}")
    return findings


def _by_key(environment: tuple[str, ...]) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in environment:
        key, sep, value = entry.partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out


def _check_role(role: str) -> None:
    if role not in _ROLES:
        raise Permanent(f"role {role[:40]!r} is not one of {', '.join(_ROLES)}")


def _check_in_lab(ip: str, policy: BridgePolicy) -> None:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise Permanent(f"{ip[:64]!r} is not an IP address") from None
    nets = _checked_subnets(policy.lab_subnets)
    if not any(address in net for net in nets):
        raise Permanent(
            f"node IP {address} is outside the lab subnets ({', '.join(policy.lab_subnets)}); "
            "refusing to patch a node the bridge does not manage"
        )


def _checked_subnets(
    lab_subnets: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # The policy refuses these at start-up too; a second guard keeps node identity off the tailnet even
    # if a policy was built without validation.
    try:
        return lab_networks(lab_subnets)
    except ValueError as exc:
        raise Permanent(f"lab subnets: {exc}") from None
