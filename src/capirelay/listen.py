"""A TCP socket bound for a server to listen on (the gateway's workers, the emulator)."""

from __future__ import annotations

import socket

__all__ = ["bind_listener"]


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, backlog: int | None = None
) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``SO_REUSEADDR``; ``SO_REUSEPORT`` too when
    ``reuse_port``), inheritable by the processes that will listen on it; the server
    calls ``listen``, unless ``backlog`` is given: then it listens already.  Closed
    again when the bind or the listen fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
