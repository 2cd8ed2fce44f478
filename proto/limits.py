"""The protocol's size limits, shared by the conversions and the transport (no gRPC needed to read them)."""

from __future__ import annotations

MiB = 1 << 20
MAX_CHUNK_PAYLOAD_BYTES = 4 * MiB
"""Largest masked-input or block-mask payload in one message (the protocol's "chunks of at most 4 MiB")."""

__all__ = ["MAX_CHUNK_PAYLOAD_BYTES", "MiB"]
