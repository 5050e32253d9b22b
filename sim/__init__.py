"""The simulated castle: Tailscale control plane, Talos nodes behind a talosctl-compatible executable, a TLS Vault stand-in."""
