"""Export of the contracts: a JSON Schema per subject and an AsyncAPI 3.0 document of the channels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts import subjects
from contracts.events import EVENT_MODELS

PUBLISHED_BY_US = {
    subjects.TALOS_READY,
    subjects.BRIDGE_PATCHED,
    subjects.BRIDGE_VERIFIED,
    subjects.BRIDGE_FAILED,
    subjects.BRIDGE_DRIFT,
    subjects.VAULT_REACHABILITY,
    subjects.BRIDGE_DEADLETTER,
    subjects.VAULT_CHECK_TICK,
    subjects.BRIDGE_AUDIT_TICK,
}
CONSUMED_BY_US = {
    subjects.VM_CREATED,
    subjects.VM_DESTROYED,
    subjects.TALOS_READY,
    subjects.BRIDGE_PATCHED,
    subjects.BRIDGE_DRIFT,
    subjects.VAULT_CHECK_TICK,
    subjects.BRIDGE_AUDIT_TICK,
}


def schema_file(subject: str) -> str:
    return f"{subject}.schema.json"


def json_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for subject, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="serialization" if subject in PUBLISHED_BY_US else "validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://castle-bridge.dev/schemas/{schema_file(subject)}"
        schema["x-subject"] = subject
        out[subject] = schema
    return out


def _key(subject: str) -> str:
    return subject.replace(".", "_")


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for subject, model in EVENT_MODELS.items():
        key = _key(subject)
        messages[key] = {
            "name": model.__name__,
            "title": subject,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"./{schema_file(subject)}"},
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "JetStream de-duplication id"},
                    "ce-specversion": {"type": "string", "const": "1.0"},
                    "ce-id": {"type": "string"},
                    "ce-type": {"type": "string", "const": f"io.castle.{subject}"},
                    "ce-source": {"type": "string"},
                    "ce-time": {"type": "string", "format": "date-time"},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
            },
        }
        channels[key] = {
            "address": subject,
            "messages": {model.__name__: {"$ref": f"#/components/messages/{key}"}},
        }
        if subject in PUBLISHED_BY_US:
            operations[f"publish_{key}"] = {"action": "send", "channel": {"$ref": f"#/channels/{key}"}}
        if subject in CONSUMED_BY_US:
            operations[f"consume_{key}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{key}"}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "castle-bridge events",
            "version": "1.0.0",
            "description": "Events of the Ephemeral Castle's tailnet bridge, on one JetStream stream "
            f"capturing {', '.join(subjects.STREAM_SUBJECTS)}. Consumers accept plain JSON bodies and "
            "structured-mode CloudEvents; publishers set CloudEvents binary-mode headers.",
        },
        "defaultContentType": "application/json",
        "servers": {"castle": {"host": "localhost:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def write_contracts(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for subject, schema in json_schemas().items():
        path = directory / schema_file(subject)
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = directory / "asyncapi.json"
    path.write_text(json.dumps(asyncapi(), indent=2) + "\n")
    written.append(path)
    return written
