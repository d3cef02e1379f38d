"""A web server that is not Graph, for tests of a ``graph_url`` that names the wrong server.

It answers every GET with a 404 HTML page, as any web server, portal or proxy page
would, and its ``Date`` header is an hour behind, so a check that trusted its clock
as Graph's would say so.  The socket is bound and listening before the serving
thread starts: connections made at once wait in the backlog, nothing needs waiting for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["serve_not_graph"]


class _NotGraph(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body><h1>404 Not Found</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return super().date_time_string(time.time() - 3600)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_not_graph() -> Iterator[str]:
    """Serve on 127.0.0.1:<ephemeral> in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotGraph)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
