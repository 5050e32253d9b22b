"""Subject names on the bus. Other castle services already use these; never rename one."""

from __future__ import annotations

VM_CREATED = "vm.created"
VM_DESTROYED = "vm.destroyed"
TALOS_READY = "talos.ready"
BRIDGE_PATCHED = "bridge.patched"
BRIDGE_VERIFIED = "bridge.verified"
BRIDGE_FAILED = "bridge.failed"
BRIDGE_DRIFT = "bridge.drift"
VAULT_REACHABILITY = "vault.reachability"
BRIDGE_DEADLETTER = "bridge.deadletter"

# Scheduler ticks. They live inside the stream's subject space so that JetStream de-duplicates them
# across replicas (Nats-Msg-Id = <job>:<period start>) and a handler consumes them like any event.
VAULT_CHECK_TICK = "vault.check.tick"
BRIDGE_AUDIT_TICK = "bridge.audit.tick"

STREAM_SUBJECTS: tuple[str, ...] = ("vm.>", "talos.>", "bridge.>", "vault.>")
"""What the one JetStream stream captures."""

EVENT_SOURCE = "castle-bridge"
"""CloudEvents `source` of everything castle-bridge publishes."""
