"""A free TCP port for a server about to start: the ingress's proxy, a local stack, a test's server."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on now; the operating system picks it."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
