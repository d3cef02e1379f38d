"""``python -m capirelay.emulator [options]``: same as ``capirelay emulator``."""

import sys

from capirelay.cli import main

main(["emulator", *sys.argv[1:]])
