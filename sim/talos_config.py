"""Machine configuration of a simulated Talos node: initial documents, strategic merge and validation.

The merge follows Talos's configpatcher as the bridge meets it: documents are matched by (apiVersion,
kind, name), maps merge recursively, lists are APPENDED (so a re-patched ExtensionServiceConfig keeps its
old variables), `$patch: delete` removes a document or a section, and a patch without `kind` merges into
the v1alpha1 document. Deleting a document that is not there panics on Talos <= 1.13, as the real
client does.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
from typing import Any

import yaml

V1ALPHA1 = ("v1alpha1", "v1alpha1", "")  # the key of the legacy document, which has no kind
KUBELET_IMAGE = "ghcr.io/siderolabs/kubelet:v1.33.3"
CONTROL_PLANE_ENDPOINT = "https://192.168.1.100:6443"

_ENV_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Kinds the simulator knows, per the schemas it was checked against (1.14 added the k8s documents).
_KINDS_ALWAYS = {"ExtensionServiceConfig", "HostnameConfig", "ResolverConfig", "TimeSyncConfig", "LinkConfig"}
_KINDS_SINCE_1_14 = {"KubeNodeConfig", "KubeletConfig", "KubeClusterConfig"}
_KUBE_NODE_FIELDS = {
    "apiVersion",
    "kind",
    "skipNodeRegistration",
    "registerWithFQDN",
    "nodeIP",
    "labels",
    "annotations",
    "taints",
}
_V1ALPHA1_MACHINE_1_14 = {
    "type",
    "token",
    "ca",
    "acceptedCAs",
    "certSANs",
    "features",
    "logging",
    "seccompProfiles",
}


class PatchLoadError(Exception):
    """A patch could not be read or applied on the client side (talosctl exits 1 before applying)."""


class PatchPanic(Exception):
    """The Talos <= 1.13 client panics deleting a document that does not exist (exit 2)."""


class ConfigInvalid(Exception):
    """The patched configuration fails Talos validation (the node refuses it)."""


def version_minor(version: str) -> tuple[int, int]:
    match = re.match(r"^v?(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"{version!r} is not a Talos version")
    return int(match.group(1)), int(match.group(2))


def doc_key(doc: dict[str, Any]) -> tuple[str, str, str]:
    if "kind" not in doc:
        return V1ALPHA1
    return (str(doc.get("apiVersion", "")), str(doc["kind"]), str(doc.get("name", "")))


def find(docs: list[dict[str, Any]], kind: str, name: str = "") -> dict[str, Any] | None:
    return next((d for d in docs if doc_key(d)[1:] == (kind, name)), None)


def initial_config(name: str, ip: str, role: str, talos_version: str) -> list[dict[str, Any]]:
    """A realistic minimal config as `talosctl gen config` leaves it, with fresh secrets."""
    ca = {"crt": _fake_pem(), "key": ""}
    machine: dict[str, Any] = {
        "type": role,
        "token": secrets.token_hex(3) + "." + secrets.token_hex(8),
        "ca": ca,
        "certSANs": [ip],
        "features": {"diskQuotaSupport": True},
    }
    v1: dict[str, Any] = {"version": "v1alpha1", "debug": False, "machine": machine}
    cluster: dict[str, Any] = {"token": secrets.token_hex(3) + "." + secrets.token_hex(8)}
    hostname = {"apiVersion": "v1alpha1", "kind": "HostnameConfig", "hostname": name}
    if version_minor(talos_version) >= (1, 14):
        if role == "controlplane":
            cluster["etcd"] = {"ca": {"crt": _fake_pem(), "key": ""}}
        v1["cluster"] = cluster
        kubelet = {"apiVersion": "v1alpha1", "kind": "KubeletConfig", "image": KUBELET_IMAGE}
        kube_cluster = {
            "apiVersion": "v1alpha1",
            "kind": "KubeClusterConfig",
            "clusterName": "tazlab",
            "endpoint": CONTROL_PLANE_ENDPOINT,
        }
        return [v1, hostname, kubelet, kube_cluster]
    machine["kubelet"] = {"image": KUBELET_IMAGE, "defaultRuntimeSeccompProfileEnabled": True}
    machine["install"] = {
        "disk": "/dev/sda",
        "image": f"ghcr.io/siderolabs/installer:{talos_version}",
        "wipe": False,
    }
    machine["features"]["kubePrism"] = {"enabled": True, "port": 7445}
    cluster.update(
        {
            "id": secrets.token_urlsafe(32),
            "secret": secrets.token_urlsafe(32),
            "controlPlane": {"endpoint": CONTROL_PLANE_ENDPOINT},
            "clusterName": "tazlab",
            "network": {
                "dnsDomain": "cluster.local",
                "podSubnets": ["10.244.0.0/16"],
                "serviceSubnets": ["10.96.0.0/12"],
            },
            "ca": {"crt": _fake_pem(), "key": ""},
            "discovery": {"enabled": True},
        }
    )
    if role == "controlplane":
        cluster["etcd"] = {"ca": {"crt": _fake_pem(), "key": ""}}
    v1["cluster"] = cluster
    return [v1, hostname]


def _fake_pem() -> str:
    return "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t" + secrets.token_urlsafe(24)


def load_patch(text: str) -> list[dict[str, Any]]:
    """Parse one `-p` value (inline YAML/JSON or file content) as strategic-merge documents."""
    try:
        loaded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise PatchLoadError(f"failed to load patch: {_yaml_problem(exc)}") from None
    if len(loaded) == 1 and isinstance(loaded[0], list):
        raise PatchLoadError(
            "JSON6902 patches are not supported by the simulator; use a strategic merge patch"
        )
    for doc in loaded:
        if not isinstance(doc, dict):
            raise PatchLoadError("failed to load patch: a patch document must be a mapping")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # The YAML error text quotes the offending line, which may hold a secret: keep the position only.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "invalid YAML"
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def apply_patches(
    docs: list[dict[str, Any]], patches: list[dict[str, Any]], minor: tuple[int, int]
) -> list[dict[str, Any]]:
    """Apply strategic-merge patch documents in order; returns a new document list."""
    result = copy.deepcopy(docs)
    for patch in patches:
        patch = copy.deepcopy(patch)
        key = doc_key(patch)
        index = next((i for i, d in enumerate(result) if doc_key(d) == key), None)
        if patch.get("$patch") == "delete":
            if index is None:
                if minor <= (1, 13):
                    raise PatchPanic(f"{key[1]} {key[2]}".strip())
                continue  # 1.14 skips deleting a document that is not there
            del result[index]
            continue
        if index is None:
            if key == V1ALPHA1:
                patch.setdefault("version", "v1alpha1")
            result.append(_strip_directives(patch))
        else:
            _merge(result[index], patch, kind=key[1])
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge(left: dict[str, Any], right: dict[str, Any], *, kind: str) -> None:
    for key, value in right.items():
        if isinstance(value, dict) and value.get("$patch") == "delete":
            left.pop(key, None)
        elif kind == "ExtensionServiceConfig" and key == "configFiles" and isinstance(value, list):
            _merge_config_files(left.setdefault(key, []), value)
        elif isinstance(value, dict) and isinstance(left.get(key), dict):
            _merge(left[key], value, kind="")
        elif isinstance(value, list) and isinstance(left.get(key), list):
            left[key] = left[key] + _strip_directives(value)
        elif value is not None and (value != "" or key not in left):
            left[key] = _strip_directives(value)


def _merge_config_files(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> None:
    # Talos merges extension config files by mount path rather than appending duplicates.
    for item in right:
        existing = next((f for f in left if f.get("mountPath") == item.get("mountPath")), None)
        if existing is None:
            left.append(dict(item))
        else:
            existing.update(item)


def validate(docs: list[dict[str, Any]], minor: tuple[int, int], role: str) -> None:
    """What Talos refuses on apply; raises ConfigInvalid naming the first problem."""
    problems: list[str] = []
    for doc in docs:
        key = doc_key(doc)
        if key == V1ALPHA1:
            problems += _v1alpha1_problems(doc, minor, role)
            continue
        kind = key[1]
        if kind not in _KINDS_ALWAYS and not (minor >= (1, 14) and kind in _KINDS_SINCE_1_14):
            problems.append(f"unknown config document {key[0]}/{kind}")
        elif kind == "ExtensionServiceConfig":
            problems += _extension_problems(doc)
        elif kind == "KubeNodeConfig":
            unknown = sorted(set(doc) - _KUBE_NODE_FIELDS)
            if unknown:
                problems.append(f"unknown keys found during decoding: KubeNodeConfig {', '.join(unknown)}")
            problems += _subnet_problems(doc.get("nodeIP", {}).get("validSubnets", []), "nodeIP.validSubnets")
    if problems:
        raise ConfigInvalid(problems[0] if len(problems) == 1 else "; ".join(problems))


def _v1alpha1_problems(doc: dict[str, Any], minor: tuple[int, int], role: str) -> list[str]:
    machine = doc.get("machine", {})
    problems = []
    if machine.get("type") != role:
        problems.append(f"machine type can't be changed from {role!r} to {machine.get('type')!r}")
    if minor >= (1, 14):
        unknown = sorted(set(machine) - _V1ALPHA1_MACHINE_1_14)
        if unknown:
            problems.append(
                "unknown keys found during decoding: machine: "
                + ", ".join(unknown)
                + " (Talos 1.14 moved kubelet settings to the KubeletConfig/KubeNodeConfig documents)"
            )
    kubelet = machine.get("kubelet", {})
    problems += _subnet_problems(kubelet.get("nodeIP", {}).get("validSubnets", []), "machine.kubelet.nodeIP")
    etcd = doc.get("cluster", {}).get("etcd", {})
    problems += _subnet_problems(etcd.get("advertisedSubnets", []), "cluster.etcd.advertisedSubnets")
    return problems


def _extension_problems(doc: dict[str, Any]) -> list[str]:
    name = str(doc.get("name", ""))
    if not name:
        return ["name is required"]
    if not _SERVICE_NAME.fullmatch(name):
        return [f"name {name!r} is invalid"]
    environment = doc.get("environment") or []
    if not environment and not doc.get("configFiles"):
        return [f"no config files, environment or selinux settings found for extension {name!r}"]
    problems = []
    for entry in environment:
        if not isinstance(entry, str) or not _ENV_ENTRY.match(entry):
            # Show the variable name only: the value may be a key.
            shown = entry.partition("=")[0][:40] if isinstance(entry, str) else type(entry).__name__
            problems.append(f"invalid environment entry {shown!r} for extension {name!r}: expected KEY=VALUE")
    return problems


def _subnet_problems(subnets: Any, where: str) -> list[str]:
    if not isinstance(subnets, list):
        return [f"{where} must be a list of subnets"]
    problems = []
    for subnet in subnets:
        try:
            ipaddress.ip_network(str(subnet).removeprefix("!"), strict=False)
        except ValueError:
            problems.append(f"{where}: invalid subnet {subnet!r}")
    return problems


def valid_subnets(docs: list[dict[str, Any]], minor: tuple[int, int]) -> list[str]:
    """The kubelet nodeIP.validSubnets in effect for this version (empty = unset)."""
    if minor >= (1, 14):
        node = find(docs, "KubeNodeConfig")
        return list((node or {}).get("nodeIP", {}).get("validSubnets", []))
    v1 = next((d for d in docs if doc_key(d) == V1ALPHA1), {})
    return list(v1.get("machine", {}).get("kubelet", {}).get("nodeIP", {}).get("validSubnets", []))


def render(docs: list[dict[str, Any]]) -> str:
    """The config as Talos stores it: YAML documents separated by `---`."""
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)
