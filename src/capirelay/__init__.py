"""capirelay: a self-hosted gateway and Python library for the Meta Conversions API."""

__version__ = "0.1.0"
