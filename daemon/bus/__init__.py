"""The event runtime on NATS JetStream: stream, codec, publishing, consumers and the outcome policy."""
