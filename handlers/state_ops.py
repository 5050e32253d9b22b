"""Compare-and-set updates of node state, shared by every handler."""

from __future__ import annotations

from collections.abc import Callable

from contracts.errors import Conflict, Transient
from contracts.state import NodeState, StateStore

Change = Callable[[NodeState | None], NodeState | None]


async def mutate_state(store: StateStore, name: str, change: Change, attempts: int = 8) -> NodeState | None:
    """Apply `change` to the current entry and write it compare-and-set, re-reading on conflict.

    `change` gets the current state (None when there is none) and returns the new one, or None to leave
    the entry as it is. It may raise (e.g. `Retry` when another replica holds the patch claim).
    """
    for _ in range(attempts):
        current = await store.get(name)
        new = change(current.state if current else None)
        if new is None:
            return current.state if current else None
        try:
            if current is None:
                await store.create(new)
            else:
                await store.update(new, current.revision)
            return new
        except Conflict:
            continue
    raise Transient(f"state of {name} kept changing under {attempts} compare-and-set attempts")


def with_error(state: NodeState, error: str | None, **updates: object) -> NodeState:
    return state.model_copy(update={"last_error": error, **updates})
