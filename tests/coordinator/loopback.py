"""The in-memory transport for tests: participants call the real servicer directly, identified by a CN.

It lives in ``fedprune.inprocess`` (``fedprune simulate`` runs over it); these are the names the
coordinator tests use. An aborted call raises a ``grpc.RpcError`` with the status the servicer chose,
exactly what a participant would see over the network. No socket, no TLS: what this proves is the run
logic and the error mapping, never the transport.
"""

from __future__ import annotations

from fedprune.inprocess import InProcessClient, InProcessServer
from fedprune.inprocess import InProcessContext as FakeContext
from fedprune.inprocess import InProcessRpcError as LoopbackRpcError

Loopback = InProcessServer


class LoopbackClient(InProcessClient):
    """``InProcessClient`` under the name the tests use, with its server as ``loopback``."""

    @property
    def loopback(self) -> InProcessServer:
        return self.server


__all__ = ["FakeContext", "Loopback", "LoopbackClient", "LoopbackRpcError"]
