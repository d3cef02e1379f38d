"""A TCP socket bound for a server to listen on (the gateway's workers, the emulator), and
why one cannot be: :func:`listen_refusal`, checked by ``capirelay serve`` and ``capirelay
demo`` before anything starts."""

from __future__ import annotations

import errno
import socket

__all__ = ["bind_listener", "cannot_listen", "listen_refusal"]

# What to do, by the reason the system gave for refusing the bind.
_FIXES = {
    errno.EADDRINUSE: "stop what uses it or pass --port",
    errno.EADDRNOTAVAIL: (
        "it is not an address of this machine: pass --host 127.0.0.1 (this machine only) "
        "or --host 0.0.0.0 (every interface)"
    ),
    errno.EACCES: "ports below 1024 need privileges: pass --port 1024 or above (e.g. 8080)",
}


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


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """One line: the address, the system's reason for refusing it, and the fix."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        fix = "pass --host with an IP address of this machine (127.0.0.1, or 0.0.0.0 for all)"
    else:
        fix = _FIXES.get(exc.errno or 0, "pass another --host or --port")
    return f"cannot listen on {where} ({reason}); {fix}"


def listen_refusal(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` (:func:`cannot_listen`), or ``None``
    when it can: a socket is bound there as the server will bind it, then closed."""
    try:
        with bind_listener(host, port):
            pass
    except OSError as exc:
        return cannot_listen(host, port, exc)
    return None
