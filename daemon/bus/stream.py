"""Ensuring the stream and the durable consumers exist with the settings castle-bridge relies on."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from contracts.subjects import STREAM_SUBJECTS


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    *,
    subjects: tuple[str, ...] = STREAM_SUBJECTS,
    duplicate_window: float = 600.0,
    max_age: float = 7 * 86400.0,
    replicas: int = 1,
) -> StreamConfig:
    """Create the stream, or bring an existing one's subjects and windows up to date."""
    config = StreamConfig(
        name=name,
        subjects=list(subjects),
        retention=RetentionPolicy.LIMITS,  # several consumers read every subject; history serves status/audit
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        max_age=max_age,
        num_replicas=replicas,
        max_msg_size=1024 * 1024,
    )
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
        return config
    current = info.config
    if (
        set(current.subjects or ()) != set(subjects)
        or current.duplicate_window != duplicate_window
        or current.max_age != max_age
    ):
        current.subjects = list(subjects)
        current.duplicate_window = duplicate_window
        current.max_age = max_age
        await js.update_stream(current)
    return current


def consumer_config(
    durable: str, subject: str, *, ack_wait: float, max_deliver: int, max_ack_pending: int
) -> ConsumerConfig:
    # The server allows one delivery more than the handler policy: that extra delivery is where the
    # runtime dead-letters a poison message that crashed the process on every earlier attempt.
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_deliver=max_deliver + 1,
        max_ack_pending=max_ack_pending,
    )
