"""Event sources beyond ``POST /v1/events``: the browser snippet, consent/LDU policy, webhooks.

Each source is one small module beside this file; the HTTP routes import
what they serve from here, and the ingest pipeline stays source-agnostic.
"""
