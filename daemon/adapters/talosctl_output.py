"""Reading what talosctl prints: `-o json` streams, `version` output, the machine config, and failures.

`talosctl get -o json` prints a stream of indented objects, not an array, so it is decoded object by
object. Failures are classified from the gRPC status in talosctl's stderr, the only signal it gives:
Unavailable/DeadlineExceeded are transient, NotFound is a missing resource, a refused config is a
PatchRejected. Every text that leaves this module passes through `redact` first, with the key when
there is one, because talosctl may echo the node's config (and so its key) back.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from contracts.errors import BadResponse, CastleError, NotFound, PatchRejected, Transient
from contracts.redact import redact
from contracts.talos import AUTHKEY_VAR

_TRANSIENT = re.compile(
    r"code = (Unavailable|DeadlineExceeded|ResourceExhausted|Aborted)|connection refused"
    r"|context deadline exceeded|i/o timeout|no route to host|connection reset|broken pipe",
)
_NOT_FOUND = re.compile(r"code = NotFound desc = resource \S+ doesn't exist")
_REJECTED = re.compile(
    r"code = (InvalidArgument|FailedPrecondition)|validation failed|unknown keys found"
    r"|failed to (load|apply) patch|^panic: |either --patch or --patch-file|JSON6902",
    re.MULTILINE,
)
_SKIPPED = "Apply was skipped: no changes detected."
_MAX_SHOWN = 600


def shown(text: str, *secrets: str) -> str:
    """talosctl output made safe and short enough for an exception text."""
    clean = redact(text.strip(), *secrets)
    return clean if len(clean) <= _MAX_SHOWN else clean[:_MAX_SHOWN] + " ..."


def failure(command: str, code: int, stderr: str, *, patching: bool, secret: str = "") -> CastleError:
    """The typed error for a talosctl that exited non-zero."""
    detail = shown(stderr, secret) or f"exit code {code} and no message"
    where = f"talosctl {command} failed (exit {code}): {detail}"
    if _TRANSIENT.search(stderr):
        return Transient(where)
    if _NOT_FOUND.search(stderr):
        return NotFound(where)
    if patching and (code == 2 or _REJECTED.search(stderr)):
        return PatchRejected(where)
    return Transient(where)


def json_stream(stdout: str, command: str) -> list[dict[str, Any]]:
    """Decode talosctl's stream of JSON objects; BadResponse when it is anything else."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(stdout) and stdout[position].isspace():
            position += 1
        if position >= len(stdout):
            return objects
        try:
            value, position = decoder.raw_decode(stdout, position)
        except json.JSONDecodeError as exc:
            # Never quote the output: it may be a config holding the node's key.
            raise BadResponse(
                f"talosctl {command} printed something that is not JSON ({exc.msg} at {exc.pos})"
            ) from None
        if not isinstance(value, dict):
            raise BadResponse(f"talosctl {command} printed a JSON {type(value).__name__}, expected objects")
        objects.append(value)


def spec_of(resource: dict[str, Any], command: str) -> Any:
    if "spec" not in resource:
        raise BadResponse(f"talosctl {command} printed a resource without a spec")
    return resource["spec"]


def redacted_environment(entries: Any, command: str) -> tuple[str, ...]:
    """The extension environment with the key's value replaced at once, so it never travels further."""
    if entries is None:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise BadResponse(f"talosctl {command}: spec.environment is not a list of strings")
    prefix = f"{AUTHKEY_VAR}="
    return tuple(f"{prefix}<redacted>" if e.startswith(prefix) else redact(e) for e in entries)


def version_tag_from_json(stdout: str) -> str | None:
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            tag = json.loads(line).get("version", {}).get("tag")
        except (ValueError, AttributeError):
            return None
        if isinstance(tag, str) and tag:
            return tag
    return None


def version_tag_from_text(stdout: str) -> str | None:
    """The `Tag:` of the Server block of `talosctl version` (the Client block has one too)."""
    _, _, server = stdout.partition("Server:")
    match = re.search(r"^\s*Tag:\s*(\S+)", server, re.MULTILINE)
    return match.group(1) if match else None


def valid_subnets_from_config(config_yaml: str) -> tuple[str, ...] | None:
    """kubelet nodeIP.validSubnets from the machine config (KubeNodeConfig first, then v1alpha1)."""
    try:
        documents = [d for d in yaml.safe_load_all(config_yaml) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" near line {mark.line + 1}" if mark is not None else ""
        raise BadResponse(f"the node's machine config is not valid YAML{where}") from None
    for document in documents:
        if document.get("kind") == "KubeNodeConfig":
            subnets = (document.get("nodeIP") or {}).get("validSubnets")
            if subnets:
                return tuple(str(s) for s in subnets)
    for document in documents:
        if "kind" not in document:
            kubelet = (document.get("machine") or {}).get("kubelet") or {}
            subnets = (kubelet.get("nodeIP") or {}).get("validSubnets")
            if subnets:
                return tuple(str(s) for s in subnets)
    return None


def apply_summary(stdout: str, stderr: str, secret: str) -> tuple[bool, str]:
    """(changed, message) of a successful `talosctl patch`; everything it says goes to stderr."""
    text = f"{stdout}\n{stderr}"
    changed = _SKIPPED not in text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return changed, shown(" / ".join(lines), secret)
