"""``python -m capirelay.server [--config FILE] [--host H] [--port P]``."""

from capirelay.server.run import main

raise SystemExit(main())
