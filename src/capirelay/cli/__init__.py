"""The ``capirelay`` command line (``capirelay = "capirelay.cli:main"``).

:mod:`capirelay.cli.app` builds the Typer app; each command group has its own
module here (``dlq``, ``doctor``, ``send``, ``trace``, ...).  Imports of the
library layers happen inside the commands so ``capirelay --help`` stays fast
and one broken layer does not take the whole CLI down.
"""

from capirelay.cli.app import app, main

__all__ = ["app", "main"]
