"""``capirelay.server``: the gateway's HTTP face (ingest, beacon, health, metrics, OpenAPI).

``create_app(settings)`` builds the Starlette app; ``serve(settings, host=, port=)``
runs it under uvicorn with graceful shutdown.  ``python -m capirelay.server
--config capirelay.toml`` starts it from the command line.
"""

from capirelay.server.app import create_app
from capirelay.server.run import serve

__all__ = ["create_app", "serve"]
