"""The grammars of :mod:`capirelay.browser_ids`: ``fbc``/``fbp`` values, cookie and header text."""

from __future__ import annotations

import re

from capirelay.meta_facts import BUILDER_APPENDIX_PATTERN, BUILDER_LEGACY_APPENDIX_TOKENS

# Legacy 2-char appendix tokens, one per builder language (PHP, Python, Java,
# Node, Ruby, client JS); any other 2-char 5th segment is not Meta's.
LEGACY_APPENDIX_TOKENS = BUILDER_LEGACY_APPENDIX_TOKENS

_APPENDIX = BUILDER_APPENDIX_PATTERN
# fbclid values are base64url-like (``IwAR...``, ``IwZXh0bgNhZW0...``); a dot
# would shift the segments, anything else is junk Meta answers with 2804001.
_CLICK_ID = r"[A-Za-z0-9_-]+"
# re.ASCII: \d is 0-9 only.  Unicode digits ("\uff11", Arabic-Indic) passed the grammar,
# then failed the cookie's octet check (a 500 on /v1/collect) or went to Meta as is.
FBC_RE = re.compile(rf"fb\.(\d{{1,3}})\.(\d{{1,16}})\.({_CLICK_ID})(?:\.({_APPENDIX}))?", re.ASCII)
FBP_RE = re.compile(rf"fb\.(\d{{1,3}})\.(\d{{1,16}})\.(\d{{1,20}})(?:\.({_APPENDIX}))?", re.ASCII)
_CLICK_ID_RE = re.compile(_CLICK_ID)
APPENDIX_RE = re.compile(_APPENDIX)
_IP_APPENDIX_RE = re.compile(rf"(.+)\.{_APPENDIX}")
# RFC 6265 cookie-octets minus nothing we need: no CTLs, whitespace, DQUOTE,
# comma, semicolon or backslash.  Anything else in a value we write is refused.
_COOKIE_OCTETS_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_COOKIE_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_HEADER_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_COOKIE_VALUE_RE = re.compile(r"[\x00-\x20\x7f;,\"\\]")
_UNSAFE_URL_RE = re.compile(r"[\x00-\x20\x7f]")
