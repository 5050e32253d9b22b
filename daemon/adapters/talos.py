"""The Talos adapter: `TalosctlNodes` implements `contracts.talos.TalosNodes` by running talosctl.

Every call is `<talosctl> [--talosconfig F] -n IP -e IP <subcommand...>` run with
`asyncio.create_subprocess_exec` (never a shell), bounded by the configured timeout; a process that
overruns is killed. The AuthKey crosses into talosctl exactly once: as the YAML of the extension
document on stdin (`-p @/dev/stdin`), never in argv (visible in /proc), the environment or a file.
What the node hands back may contain the previously minted key: it is redacted while parsing and
every error text passes through `redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

import yaml

from contracts.errors import BadResponse, CastleError, NotFound, Permanent, Transient
from contracts.redact import redact
from contracts.talos import (
    EXTENSION_NAME,
    EXTENSION_SERVICE,
    ApplyResult,
    BridgePatch,
    ExtensionConfigState,
    MachineStatus,
    ServiceState,
)
from daemon.adapters import talosctl_output as output
from daemon.config import ENV_PREFIX, TalosSettings

log = logging.getLogger(__name__)

STDIN_PATCH = "@/dev/stdin"
TAILSCALE_LINK = "tailscale0"


class TalosctlNodes:
    """Talos nodes reached through the talosctl executable."""

    def __init__(self, settings: TalosSettings) -> None:
        self._talosctl = settings.talosctl
        self._talosconfig: Path | None = settings.talosconfig
        self._timeout = settings.command_timeout_seconds

    def __repr__(self) -> str:
        return f"TalosctlNodes(talosctl={self._talosctl!r}, talosconfig={self._talosconfig})"

    # -- reads ------------------------------------------------------------------------------------

    async def machine_status(self, ip: str) -> MachineStatus:
        command = "get machinestatus"
        resources = await self._get(ip, ["machinestatus", "-o", "json"], command)
        if not resources:
            raise BadResponse(f"talosctl {command} printed no machinestatus for {ip}")
        spec = output.spec_of(resources[0], command)
        try:
            return MachineStatus(
                stage=str(spec["stage"]), ready=bool(spec.get("status", {}).get("ready", False))
            )
        except (KeyError, TypeError, AttributeError):
            raise BadResponse(f"talosctl {command}: the machinestatus spec has no stage") from None

    async def version(self, ip: str) -> str:
        stdout, _ = await self._run(ip, ["version", "--json"], "version --json")
        tag = output.version_tag_from_json(stdout)
        if tag is None:
            # Older or newer clients may drop the hidden --json flag's shape; the text form is stable.
            stdout, _ = await self._run(ip, ["version"], "version")
            tag = output.version_tag_from_text(stdout)
        if tag is None:
            raise BadResponse(f"talosctl version printed no server tag for {ip}")
        return tag

    async def extension_config(self, ip: str) -> ExtensionConfigState | None:
        command = f"get extensionserviceconfigs {EXTENSION_NAME}"
        try:
            resources = await self._get(
                ip, ["extensionserviceconfigs", EXTENSION_NAME, "-o", "json"], command
            )
        except NotFound:
            return None
        if not resources:
            return None
        spec = output.spec_of(resources[0], command) or {}
        if not isinstance(spec, dict):
            raise BadResponse(f"talosctl {command}: the spec is not an object")
        return ExtensionConfigState(environment=output.redacted_environment(spec.get("environment"), command))

    async def service(self, ip: str) -> ServiceState:
        command = f"get services {EXTENSION_SERVICE}"
        try:
            resources = await self._get(ip, ["services", EXTENSION_SERVICE, "-o", "json"], command)
        except NotFound:
            # Talos keeps a service resource only while the service runs (Waiting/Failed: none).
            return ServiceState(id=EXTENSION_SERVICE, running=False)
        if not resources:
            return ServiceState(id=EXTENSION_SERVICE, running=False)
        spec = output.spec_of(resources[0], command)
        if not isinstance(spec, dict):
            raise BadResponse(f"talosctl {command}: the spec is not an object")
        return ServiceState(
            id=EXTENSION_SERVICE,
            running=bool(spec.get("running", False)),
            healthy=bool(spec.get("healthy", False)),
            unknown=bool(spec.get("unknown", True)),
        )

    async def tailscale_addresses(self, ip: str) -> tuple[str, ...]:
        command = "get addresses"
        addresses = []
        for resource in await self._get(ip, ["addresses", "-o", "json"], command):
            spec = output.spec_of(resource, command)
            if isinstance(spec, dict) and spec.get("linkName") == TAILSCALE_LINK and spec.get("address"):
                addresses.append(str(spec["address"]).split("/", 1)[0])
        return tuple(addresses)

    async def kubelet_node_ips(self, ip: str) -> tuple[str, ...]:
        command = "get nodeip kubelet"
        try:
            resources = await self._get(ip, ["nodeip", "kubelet", "-o", "json"], command)
        except NotFound:
            return ()  # the kubelet has not started yet
        found: list[str] = []
        for resource in resources:
            spec = output.spec_of(resource, command)
            values = spec.get("addresses") if isinstance(spec, dict) else None
            found += [str(a).split("/", 1)[0] for a in values or []]
        return tuple(found)

    async def node_ip_subnets(self, ip: str) -> tuple[str, ...] | None:
        command = "get machineconfig v1alpha1"
        resources = await self._get(ip, ["machineconfig", "v1alpha1", "-o", "json"], command)
        if not resources:
            raise BadResponse(f"talosctl {command} printed no machine config for {ip}")
        # The config holds the node's key: parse it here, keep only the subnets, never log it.
        spec = output.spec_of(resources[0], command)
        if not isinstance(spec, str):
            raise BadResponse(f"talosctl {command}: the spec is not the config text")
        return output.valid_subnets_from_config(spec)

    # -- the one write ----------------------------------------------------------------------------

    async def apply_patch(self, ip: str, patch: BridgePatch) -> ApplyResult:
        if patch.auth_key is None:
            raise Permanent(f"the patch for {patch.node} carries no key (a plan cannot be applied)")
        secret = patch.auth_key.get_secret_value()
        args = ["patch", "machineconfig", "--mode=no-reboot"]
        if patch.delete_existing:
            args += ["-p", json.dumps(patch.delete_document(), separators=(",", ":"))]
        for narrowing in patch.node_ip_documents:
            args += ["-p", json.dumps(narrowing, separators=(",", ":"))]
        args += ["-p", STDIN_PATCH]
        if any(secret in arg for arg in args):
            raise Permanent("refusing to run talosctl: the AuthKey would appear in its arguments")
        document = yaml.safe_dump(patch.extension_document(reveal=True), sort_keys=False).encode()
        stdout, stderr = await self._run(
            ip, args, "patch machineconfig", stdin=document, secret=secret, patching=True
        )
        changed, message = output.apply_summary(stdout, stderr, secret)
        return ApplyResult(changed=changed, message=message)

    # -- running talosctl -------------------------------------------------------------------------

    async def _get(self, ip: str, args: list[str], command: str) -> list[dict[str, object]]:
        stdout, _ = await self._run(ip, ["get", *args], command)
        return output.json_stream(stdout, command)

    def _argv(self, ip: str, args: list[str]) -> list[str]:
        argv = [self._talosctl]
        if self._talosconfig is not None:
            argv += ["--talosconfig", str(self._talosconfig)]
        return [*argv, "-n", ip, "-e", ip, *args]

    async def _run(
        self,
        ip: str,
        args: list[str],
        command: str,
        *,
        stdin: bytes | None = None,
        secret: str = "",
        patching: bool = False,
    ) -> tuple[str, str]:
        """Run talosctl; (stdout, stderr) on exit 0, else the typed error."""
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(ip, args),
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise Permanent(
                f"cannot run talosctl {self._talosctl!r}: {exc.strerror or exc}; install talosctl or point "
                f"{ENV_PREFIX}TALOS__TALOSCTL at it"
            ) from None
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin), timeout=self._timeout)
        except TimeoutError:
            await _kill(process)
            raise Transient(
                f"talosctl {command} on {ip} timed out after {self._timeout:g}s (killed)"
            ) from None
        except BaseException:
            await _kill(process)  # cancelled: leave no talosctl behind
            raise
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        code = process.returncode if process.returncode is not None else -1
        log.debug(
            "talosctl %s on %s: exit %s in %.0f ms", command, ip, code, (time.monotonic() - started) * 1000
        )
        if code != 0:
            error: CastleError = output.failure(command, code, stderr, patching=patching, secret=secret)
            raise error
        return stdout, redact(stderr, secret)


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(Exception):
            await process.wait()
