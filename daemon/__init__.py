"""The castle-bridge daemon: runtime, adapters, configuration, HTTP surface and CLI."""
