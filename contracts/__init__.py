"""The castle-bridge contracts: event models, subject names, the port Protocols and typed errors.

Everything here is shared by the handlers, the daemon and the simulator, so it imports nothing of ours.
"""
