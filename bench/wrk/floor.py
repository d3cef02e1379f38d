"""The benchmark's floor: what the framework alone costs on this machine.

A bare Starlette app on ONE uvicorn process, started with the same server options as
the gateway (``capirelay.server.run.UVICORN_OPTIONS``: uvloop, httptools, no access
log, no server header).  ``POST /v1/events`` and ``POST /v1/collect`` read the whole
body and answer 202 with a small JSON body, nothing else, so the wrk scripts that drive
capirelay drive it unchanged and every capirelay figure can be given as a ratio to it.

    .venv/bin/python bench/wrk/floor.py --port 18080
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capirelay.server.run import UVICORN_OPTIONS

_ANSWER = b'{"status":"queued"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(_ANSWER, status_code=202, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/events", accept, methods=["POST"]),
        Route("/v1/collect", accept, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description="The wrk benchmark's floor app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
