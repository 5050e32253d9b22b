"""The COSI resources a simulated node exposes to `talosctl get`, and talosctl's output shapes for them.

Types resolve the way talosctl resolves them (the type id or any alias, case-insensitive; `ms` matches
two types and is ambiguous). `-o json` prints one indented object per resource with keys sorted, as
Go's encoder prints the map talosctl builds; `-o yaml` prints `node:` then the resource, `---` between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import yaml

from sim import talos_config

if TYPE_CHECKING:
    from sim.talos import SimNode, TalosSim


@dataclass(frozen=True)
class ResourceType:
    type: str
    namespace: str
    aliases: tuple[str, ...]

    @property
    def display(self) -> str:
        """The singular name talosctl's table shows (the first alias, in the type's own capitals)."""
        plural = self.type.split(".", 1)[0]
        return plural[: len(self.aliases[0])]


TYPES: tuple[ResourceType, ...] = (
    ResourceType("MachineStatuses.runtime.talos.dev", "runtime", ("machinestatus", "machinestatuses", "ms")),
    ResourceType("MountStatuses.runtime.talos.dev", "runtime", ("mountstatus", "mountstatuses", "ms")),
    ResourceType(
        "ExtensionServiceConfigs.runtime.talos.dev",
        "runtime",
        ("extensionserviceconfig", "extensionserviceconfigs"),
    ),
    ResourceType("Services.v1alpha1.talos.dev", "runtime", ("service", "services", "svc")),
    ResourceType("AddressStatuses.net.talos.dev", "network", ("addressstatus", "address", "addresses")),
    ResourceType("LinkStatuses.net.talos.dev", "network", ("linkstatus", "link", "links")),
    ResourceType("NodeIPs.kubernetes.talos.dev", "k8s", ("nodeip", "nodeips")),
    ResourceType("MachineConfigs.config.talos.dev", "config", ("machineconfig", "machineconfigs", "mc")),
)
MACHINE_CONFIG = TYPES[-1]


class ResolveError(Exception):
    """A type that is ambiguous or not registered; the text is talosctl's."""


def resolve(name: str) -> ResourceType:
    wanted = name.lower()
    matched = [t for t in TYPES if t.type.lower() == wanted or wanted in t.aliases]
    if len(matched) == 1:
        return matched[0]
    if matched:
        ids = " ".join(t.type.lower() for t in matched)
        raise ResolveError(
            f'rpc error: code = InvalidArgument desc = resource type "{name}" is ambiguous: [{ids}]'
        )
    raise ResolveError(f'rpc error: code = NotFound desc = resource "{name}" is not registered')


def not_found(rtype: ResourceType, namespace: str, resource_id: str) -> str:
    resource = f"{rtype.type}({namespace}/{resource_id}@undefined)"
    return f"rpc error: code = NotFound desc = resource {resource} doesn't exist"


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _resource(
    rtype: ResourceType,
    rid: str,
    spec: Any,
    *,
    version: int,
    owner: str,
    created: datetime,
    updated: datetime,
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": rtype.namespace,
            "type": rtype.type,
            "id": rid,
            "version": version,
            "owner": owner,
            "phase": "running",
            "created": _stamp(created),
            "updated": _stamp(updated),
        },
        "spec": spec,
    }


def resources(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    """Every resource of `rtype` the node has right now."""
    build = _BUILDERS.get(rtype.type)
    return build(sim, node, rtype) if build else []


def _machine_status(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    stage = sim.stage(node)
    ready = stage == "running"
    unmet = [] if ready else [{"name": "time", "reason": "time is not in sync"}]
    spec = {"stage": stage, "status": {"ready": ready, "unmetConditions": unmet}}
    return [
        _resource(
            rtype,
            "machine",
            spec,
            version=3 if ready else 2,
            owner="runtime.MachineStatusController",
            created=node.created,
            updated=node.config_updated,
        )
    ]


def _extension_configs(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    out = []
    for doc in node.config:
        if talos_config.doc_key(doc)[1] != "ExtensionServiceConfig":
            continue
        spec: dict[str, Any] = {}
        if doc.get("configFiles"):
            spec["files"] = [
                {"content": f.get("content", ""), "mountPath": f.get("mountPath", "")}
                for f in doc["configFiles"]
            ]
        if doc.get("environment"):
            spec["environment"] = list(doc["environment"])
        out.append(
            _resource(
                rtype,
                str(doc.get("name", "")),
                spec,
                version=node.config_version,
                owner="runtime.ExtensionServiceConfigController",
                created=node.created,
                updated=node.config_updated,
            )
        )
    return out


def _services(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    builtin = ["apid", "containerd", "cri", "kubelet", "machined", "udevd"]
    if node.role == "controlplane":
        builtin += ["etcd", "trustd"]
    specs = {name: {"running": True, "healthy": True, "unknown": False} for name in sorted(builtin)}
    if node.service.state == "Running":
        # Extension services have no health check: Talos reports their health as unknown.
        specs["ext-tailscale"] = {"running": True, "healthy": False, "unknown": True}
    return [
        _resource(
            rtype,
            name,
            spec,
            version=node.service.version if name == "ext-tailscale" else 2,
            owner="",
            created=node.created,
            updated=node.service.events[-1][0]
            if name == "ext-tailscale" and node.service.events
            else node.created,
        )
        for name, spec in sorted(specs.items())
    ]


def _link_table(node: SimNode) -> list[tuple[int, str, str, str, str]]:
    """(index, link, address/prefix, family, scope) of every address the node has."""
    table = [(1, "lo", "127.0.0.1/8", "inet4", "host"), (2, "eth0", f"{node.ip}/24", "inet4", "global")]
    if (ts := node.tailscale_address()) is not None:
        table.append((5, "tailscale0", f"{ts}/32", "inet4", "global"))
    return table


def _addresses(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    out = []
    for index, link, prefix, family, scope in _link_table(node):
        spec = {
            "address": prefix,
            "local": prefix.split("/")[0],
            "linkIndex": index,
            "linkName": link,
            "family": family,
            "scope": scope,
            "flags": "permanent",
            "priority": 1024,
        }
        out.append(
            _resource(
                rtype,
                f"{link}/{prefix}",
                spec,
                version=1,
                owner="network.AddressStatusController",
                created=node.created,
                updated=node.created,
            )
        )
    return out


def _links(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    out = []
    for index, link, _, _, _ in _link_table(node):
        kind = {"lo": "", "eth0": "", "tailscale0": "tun"}[link]
        spec = {
            "index": index,
            "type": "loopback" if link == "lo" else ("none" if link == "tailscale0" else "ether"),
            "kind": kind,
            "mtu": 65536 if link == "lo" else (1280 if link == "tailscale0" else 1500),
            "operationalState": "unknown" if link != "eth0" else "up",
            "linkState": True,
        }
        out.append(
            _resource(
                rtype,
                link,
                spec,
                version=1,
                owner="network.LinkStatusController",
                created=node.created,
                updated=node.created,
            )
        )
    return out


def _node_ip(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    if sim.stage(node) != "running":
        return []  # the kubelet has not started yet
    return [
        _resource(
            rtype,
            "kubelet",
            {"addresses": [node.kubelet_node_ip()]},
            version=node.nodeip_version,
            owner="k8s.NodeIPController",
            created=node.created,
            updated=node.config_updated,
        )
    ]


def _machine_config(sim: TalosSim, node: SimNode, rtype: ResourceType) -> list[dict[str, Any]]:
    return [
        _resource(
            rtype,
            "v1alpha1",
            talos_config.render(node.config),
            version=node.config_version,
            owner="",
            created=node.created,
            updated=node.config_updated,
        )
    ]


_BUILDERS = {
    "MachineStatuses.runtime.talos.dev": _machine_status,
    "ExtensionServiceConfigs.runtime.talos.dev": _extension_configs,
    "Services.v1alpha1.talos.dev": _services,
    "AddressStatuses.net.talos.dev": _addresses,
    "LinkStatuses.net.talos.dev": _links,
    "NodeIPs.kubernetes.talos.dev": _node_ip,
    "MachineConfigs.config.talos.dev": _machine_config,
}


# -- output shapes ----------------------------------------------------------------------------


def as_json(node_ip: str, resource: dict[str, Any]) -> str:
    data = {**resource, "node": node_ip}
    text = json.dumps(data, indent=4, sort_keys=True, ensure_ascii=False)
    # Go's encoder escapes HTML characters by default.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


class _GoYamlDumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoYamlDumper.add_representer(str, _str_representer)


def as_yaml(node_ip: str, resource: dict[str, Any], *, first: bool) -> str:
    head = "" if first else "---\n"
    body = yaml.dump(resource, Dumper=_GoYamlDumper, sort_keys=False, default_flow_style=False)
    return f"{head}node: {node_ip}\n{body}"


def as_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    header = ("NODE", "NAMESPACE", "TYPE", "ID", "VERSION")
    lines = [header] + [
        (
            node_ip,
            r["metadata"]["namespace"],
            resolve(r["metadata"]["type"]).display,
            r["metadata"]["id"],
            str(r["metadata"]["version"]),
        )
        for node_ip, r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in lines
    )
