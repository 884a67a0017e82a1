"""Umbra: a decentralized confidential-compute network."""

__version__ = "0.1.0"
# Recorded in genesis and every block: a node with another runtime version refuses to replay.
RUNTIME_VERSION = 1
