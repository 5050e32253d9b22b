"""Handlers: one module per reaction, pure logic over contracts and ports (no nats, httpx or subprocess)."""
