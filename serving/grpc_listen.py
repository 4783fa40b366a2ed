"""Binding a gRPC server to an address, with an error that names what could not be bound.

gRPC reports a failed bind either by returning 0 from ``add_*_port`` (older releases) or by
raising ``RuntimeError("Failed to bind ...")`` (1.85 here); a caller that checks only one lets
the other through as a traceback. The model server and the router both bind through here.
"""
from typing import Optional

import grpc


def listen(server: grpc.Server, address: str, what: str,
           credentials: Optional[grpc.ServerCredentials] = None) -> int:
    """Adds ``address`` to ``server`` (TLS with ``credentials``); the bound port, or OSError
    "cannot listen on <what>"."""
    try:
        bound = (server.add_insecure_port(address) if credentials is None
                 else server.add_secure_port(address, credentials))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {what}")
    return bound
