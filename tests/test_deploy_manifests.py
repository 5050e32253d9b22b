"""deploy/ checked in CI: the Kubernetes manifests against the Kubernetes JSON Schemas (kubernetes-validate
ships them, strict mode: an unknown field fails), the ExternalSecrets against a schema of the fields we use
(no ExternalSecret CRD schema is to be had offline from the package registries), and what must agree with
the daemon: probe paths and ports, setting names, secret file paths, the TOML, the image, the systemd
unit. The hookscript runs against a live daemon in test_deploy_hookscript.py.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from daemon.config import ENV_PREFIX, HttpSettings, Settings, load_settings
from daemon.http_api import build_app

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBE = DEPLOY / "kubernetes"
CORE_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}

# The fields of external-secrets.io ExternalSecret that these manifests use, closed to anything else.
EXTERNAL_SECRET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"enum": ["external-secrets.io/v1", "external-secrets.io/v1beta1"]},
        "kind": {"const": "ExternalSecret"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretStoreRef", "target", "data"],
            "properties": {
                "refreshInterval": {"type": "string", "pattern": r"^([0-9]+(ns|us|ms|s|m|h))+$"},
                "secretStoreRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "kind"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "kind": {"enum": ["SecretStore", "ClusterSecretStore"]},
                    },
                },
                "target": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "creationPolicy": {"enum": ["Owner", "Orphan", "Merge", "None"]},
                        "deletionPolicy": {"enum": ["Delete", "Merge", "Retain"]},
                    },
                },
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretKey", "remoteRef"],
                        "properties": {
                            "secretKey": {"type": "string", "pattern": r"^[-._a-zA-Z0-9]+$"},
                            "remoteRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["key"],
                                "properties": {
                                    "key": {"type": "string", "minLength": 1},
                                    "property": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(KUBE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def the(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def setting_names() -> set[str]:
    """Every CASTLE_BRIDGE_<SECTION>__<FIELD> that daemon/config.py reads."""
    return {
        f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
        for section, info in Settings.model_fields.items()
        for name in info.annotation.model_fields  # type: ignore[union-attr]
    }


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    [found] = the("Deployment")
    return found


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [found] = deployment["spec"]["template"]["spec"]["containers"]
    return found


@pytest.fixture
def configured(tmp_path: Path) -> Settings:
    """The ConfigMap's config.toml through the daemon's own validation."""
    [config_map] = the("ConfigMap")
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    return load_settings(path)


# -- schemas ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_document_validates_against_its_schema(name: str, doc: dict[str, Any]):
    if doc["kind"] in CORE_KINDS:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    elif doc["kind"] == "ExternalSecret":
        jsonschema.validate(doc, EXTERNAL_SECRET_SCHEMA)
    elif doc["kind"] == "Kustomization":
        listed = set(doc["resources"])
        assert listed == {p.name for p in KUBE.glob("*.yaml")} - {name}, "every manifest is applied"
    else:
        pytest.fail(f"{name}: no check for kind {doc['kind']}")
    if doc["kind"] not in ("Namespace", "Kustomization"):
        assert doc["metadata"]["namespace"] == "castle-bridge"


def test_a_typo_in_a_manifest_is_caught(deployment: dict[str, Any]):
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    [secret] = the("ExternalSecret")[:1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**secret, "spec": {**secret["spec"], "secretStoreRf": {}}}, EXTERNAL_SECRET_SCHEMA
        )


# -- what must agree with the daemon -----------------------------------------------------------------------


def test_probes_hit_the_daemons_health_routes_on_its_listener(
    container: dict[str, Any], configured: Settings
):
    routes = {
        (r.method, r.resource.canonical)
        for r in build_app(SimpleNamespace(settings=configured)).router.routes()
    }  # type: ignore[arg-type]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert configured.http.host == "0.0.0.0" and ports["http"] == configured.http.port
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {k: p["path"] for k, p in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe in probes.values():
        assert ("GET", probe["path"]) in routes and probe["port"] in ("http", configured.http.port)
    [service] = the("Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert ("POST", "/v1/hooks/proxmox") in routes


def test_selectors_match_the_pods(deployment: dict[str, Any]):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [service] = the("Service")
    [budget] = the("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_variable_is_a_setting_and_no_secret_is_a_value(container: dict[str, Any]):
    names = setting_names()
    ours = [e for e in container["env"] if e["name"].startswith(ENV_PREFIX)]
    assert ours and {e["name"] for e in ours} <= names
    for secret_setting in (f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET", f"{ENV_PREFIX}HTTP__WEBHOOK_TOKEN"):
        assert secret_setting not in {e["name"] for e in ours}, "secrets come as *_FILE"
        assert secret_setting + "_FILE" in {e["name"] for e in ours}


def _secret_volumes(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        v["name"]: v["secret"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
    }


def _produced_keys() -> dict[str, set[str]]:
    """Secret name -> keys, as the ExternalSecrets produce them."""
    return {
        es["spec"]["target"]["name"]: {d["secretKey"] for d in es["spec"]["data"]}
        for es in the("ExternalSecret")
    }


def test_secret_file_paths_agree_between_external_secret_mounts_and_settings(
    deployment: dict[str, Any], container: dict[str, Any]
):
    volumes, produced = _secret_volumes(deployment), _produced_keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    files = [
        e for e in container["env"] if e["name"].endswith("_FILE") or e["name"].endswith("__TALOSCONFIG")
    ]
    assert {e["name"].removeprefix(ENV_PREFIX) for e in files} == {
        "TAILSCALE__OAUTH_CLIENT_SECRET_FILE",
        "HTTP__WEBHOOK_TOKEN_FILE",
        "TALOS__TALOSCONFIG",
    }
    for env in files:
        path = PurePosixPath(env["value"])
        volume = volumes[mounts[str(path.parent)]]
        [item] = [i for i in volume["items"] if i["path"] == path.name]
        assert item["key"] in produced[volume["secretName"]], (
            f"{env['name']}: no ExternalSecret makes {item['key']}"
        )
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in produced[ref["name"]]
    for volume in volumes.values():
        assert volume["defaultMode"] & 0o007 == 0, "secret files are not world-readable"


def test_the_config_file_is_mounted_where_the_arguments_say(
    deployment: dict[str, Any], container: dict[str, Any]
):
    args = container["args"]
    assert args[-1] == "run" and args[args.index("--config") + 1] == "/etc/castle-bridge/config.toml"
    config = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/castle-bridge")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == config["name"])
    assert volume["configMap"]["items"] == [{"key": "config.toml", "path": "config.toml"}]


def test_the_pod_runs_non_root_read_only_and_bounded(deployment: dict[str, Any], container: dict[str, Any]):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == _image_uid()
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    # The daemon's own stop is bounded at 30 s; the kubelet must wait at least that long.
    assert pod["terminationGracePeriodSeconds"] > 30


def test_replicas_need_a_shared_nats(deployment: dict[str, Any], configured: Settings):
    assert deployment["spec"]["replicas"] > 1
    assert configured.nats.servers, "embedded mode is single-replica only"
    assert configured.nats.stream_replicas == 3


# -- the image ---------------------------------------------------------------------------------------------


def _containerfile() -> str:
    return (DEPLOY / "Containerfile").read_text()


def _image_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)(?::\d+)?\s*$", _containerfile(), re.MULTILINE)
    assert users, "the image names a numeric non-root USER"
    return int(users[-1])


def test_the_image_is_slim_non_root_and_runs_the_daemon():
    text = _containerfile()
    assert re.findall(r"^FROM \S*python:\$\{PYTHON_VERSION\}-slim", text, re.MULTILINE)
    assert "ARG PYTHON_VERSION=3.11" in text
    assert _image_uid() != 0
    assert re.search(r"^RUN pip install \. ", text, re.MULTILINE)
    assert 'ENTRYPOINT ["castle-bridge"]' in text and 'CMD ["run"]' in text
    default = HttpSettings()
    assert f"EXPOSE {default.port}" in text
    [check] = re.findall(r"^HEALTHCHECK .*\n\s+CMD (.*)$", text, re.MULTILINE)
    assert f"http://127.0.0.1:{default.port}/healthz" in check
    # talosctl from the release, verified against the release's checksums before it is installed.
    assert "releases/download/${TALOS_VERSION}/talosctl-linux-${TARGETARCH}" in text
    assert "releases/download/${TALOS_VERSION}/sha256sum.txt" in text and "sha256sum -c" in text


# -- systemd ---------------------------------------------------------------------------------------------


def unit_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) for every line; keys repeat in units (Environment=, LoadCredential=)."""
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        yield section, key, value


def test_the_systemd_unit_is_hardened_and_hands_secrets_over_as_credentials(tmp_path: Path):
    entries = list(unit_entries(DEPLOY / "systemd" / "castle-bridge.service"))
    service = {k: v for s, k, v in entries if s == "Service"}
    assert service["DynamicUser"] == "yes" or service.get("User") not in (None, "", "root")
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "ProtectHome": "yes"}.items():
        assert service[key] == value
    assert service["CapabilityBoundingSet"] == ""
    assert service["ExecStart"].endswith(" --config /etc/castle-bridge/config.toml run")
    environment = dict(v.partition("=")[::2] for s, k, v in entries if k == "Environment")
    assert set(environment) <= setting_names() | {"HOME"}
    credentials = dict(v.partition(":")[::2] for s, k, v in entries if k == "LoadCredential")
    files = {n: v for n, v in environment.items() if n.endswith("_FILE") or n.endswith("__TALOSCONFIG")}
    assert len(files) == 3
    for value in files.values():
        assert value.startswith("%d/") and value.removeprefix("%d/") in credentials
    assert all(source.startswith("/etc/castle-bridge/credentials/") for source in credentials.values())
    # The example files beside it: valid settings, and no secret value in the environment file.
    config = tmp_path / "config.toml"
    config.write_text((DEPLOY / "systemd" / "config.toml.example").read_text())
    assert load_settings(config).http.port == HttpSettings().port
    example = (DEPLOY / "systemd" / "castle-bridge.env.example").read_text()
    variables = set(re.findall(r"^#?\s*(CASTLE_BRIDGE_\w+)=", example, re.MULTILINE))
    assert variables and variables <= setting_names()
    assert not variables & {f"{ENV_PREFIX}TAILSCALE__OAUTH_CLIENT_SECRET", f"{ENV_PREFIX}HTTP__WEBHOOK_TOKEN"}
    assert tomllib.loads(config.read_text())  # plain TOML, as the daemon reads it
