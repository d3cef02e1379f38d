"""``python -m capirelay``: the same command line as the ``capirelay`` script."""

from capirelay.cli import main

main()
