"""Structured logs: one JSON object per line, and redaction as a last line of defence.

The gateway's log lines are meant for machines (Loki, CloudWatch, ``jq``) as
much as for people: :class:`JsonFormatter` writes ``ts``, ``level``,
``logger``, ``message`` and every ``extra=`` field (``pixel``, ``count``,
``result``, ``latency_ms``, ``fbtrace_id``...) as one orjson-encoded line.

Code in capirelay never logs a token or a raw identifier on purpose; the
:class:`RedactionFilter` exists for the line nobody reviewed (a third-party
library's message, an exception text echoing a request).  It masks anything
shaped like a Meta access token (``EAA...``), ``access_token=``/``input_token=``
parameters, e-mail addresses, formatted phone numbers and IP addresses (but
loopback and unspecified ones) in the message, in string ``extra`` fields and
in exception text.  Bare digit runs are left alone on purpose: pixel ids and
timestamps are digit runs too.

``configure_logging(level, json=...)`` installs one stderr handler on the root
logger with the filter attached, for ``capirelay serve --log-format json|text``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson

from capirelay.graph.versions import ApiVersionWarning

__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "TextFormatter",
    "configure_logging",
    "redact_text",
]

# The attribute, and the one value of it, that mark a record whose message its producer
# already redacted (the access line, one per request): the filter passes it as it is.  A
# value from anywhere else (``extra={REDACTED: True}``) is no mark.  Not an ``extra``
# field of the line.
REDACTED = "capirelay_redacted"
PREREDACTED: Final = object()

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
# uvicorn's ``color_message`` is the message again with ANSI colours: noise in a JSON line.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", REDACTED}
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_TOKEN = re.compile(r"\bEAA[A-Za-z0-9]{16,}")
_TOKEN_PARAM = re.compile(r"(?i)\b(access_token|input_token|appsecret_proof)=[^&\s\"']+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A leading "+" (E.164 style) or a formatted NANP number; plain digit runs are ids.
_PHONE = re.compile(r"(?<![\w.])\+\d[\d ().-]{6,}\d\b|(?<![\w.])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def _mask_ip(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text  # a clock time like 04:03:07 or a version, not an address
    # The server's own bind address ("running on 127.0.0.1:8080") identifies nobody.
    if address.is_loopback or address.is_unspecified:
        return text
    return "[ip]"


def redact_text(text: str) -> str:
    """``text`` with token-, e-mail-, phone- and IP-shaped runs masked."""
    text = _TOKEN.sub("[token]", text)
    text = _TOKEN_PARAM.sub(lambda m: f"{m.group(1)}=[token]", text)
    text = _EMAIL.sub("[email]", text)
    text = _IPV6_CANDIDATE.sub(_mask_ip, text)
    text = _IPV4.sub(_mask_ip, text)
    return _PHONE.sub("[phone]", text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class RedactionFilter(logging.Filter):
    """Rewrite each record's message and string extras with :func:`redact_text`.

    The message is rendered once (``msg % args``) and stored back, so every
    handler and formatter downstream sees only the masked text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(REDACTED) is PREREDACTED:
            return True
        record.msg = redact_text(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS:
                setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    attrs = vars(record)
    if attrs.keys() <= _RECORD_ATTRS:  # most lines: one set operation, in C
        return {}
    return {k: v for k, v in attrs.items() if k not in _RECORD_ATTRS}


class _SecondCache:
    """A timestamp's text up to the second, remembered for the second it names: a busy
    gateway writes hundreds of lines a second, and formatting the same second again
    (``strftime`` or ``datetime``) was a fifth of a line's cost."""

    __slots__ = ("_render", "_second", "_text")

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second: int | None = None
        self._text = ""

    def __call__(self, second: int) -> str:
        if second != self._second:
            self._text, self._second = self._render(second), second
        return self._text


def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds").removesuffix("+00:00")


def _whole_and_micros(created: float) -> tuple[int, int]:
    """``created``'s second and microseconds, rounded as ``datetime.fromtimestamp`` does
    (half to even, a carry into the next second)."""
    second = math.floor(created)
    micros = round((created - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    return second, micros


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts level logger message`` + ``extra`` fields (+ ``exc``)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = _SecondCache(_iso_second)

    def format(self, record: logging.LogRecord) -> str:
        second, micros = _whole_and_micros(record.created)
        entry: dict[str, Any] = {
            "ts": f"{self._second(second)}.{micros // 1000:03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic one-line text format, with ``extra`` fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)
        self._second = _SecondCache(
            lambda second: time.strftime(self.default_time_format, self.converter(second))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        # logging's default_time_format and default_msec_format, its own msecs
        return f"{self._second(math.floor(record.created))},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One record, one line: a message carrying a line break (text quoted from Meta's
        # answers, a value someone sent) would otherwise start what reads as a record of
        # its own.  A traceback still follows on lines of its own, as logging writes it.
        return _one_line(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _one_line(" ".join(f"{k}={v}" for k, v in _extras(record).items()))
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # extras end the record's first line
        return f"{head} [{extras}]{newline}{rest}"


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text


def configure_logging(
    level: str | int = "info", json: bool = False, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Route every logger through one redacting handler on ``stream`` (stderr); returns it.

    Replaces the root logger's handlers, so calling it twice does not double lines.
    """
    # What no capirelay line shows, left out of every record (the "Optimization" section
    # of the logging documentation): the thread's and the process's names and ids.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactionFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn's loggers keep their own handlers unless told to propagate.  Its access
    # line is off: the gateway writes its own (capirelay.access, without the client's
    # address), and uvicorn writes one whenever the access logger has a handler, which
    # propagation to the root would give it (under --workers, where this runs in each
    # worker after uvicorn set its loggers up, every request was logged twice).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = name != "uvicorn.access"
    # Python warnings become log records (py.warnings) in the same format, instead of raw
    # text on stderr between JSON lines; the API version's own warning is not repeated
    # (capirelay.graph logs it as a line of its own).
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=ApiVersionWarning)
    return handler


@contextlib.contextmanager
def logging_configured(
    level: str | int = "info", json: bool = False, *, stream: IO[str] | None = None
) -> Iterator[logging.Handler]:
    """:func:`configure_logging` for as long as the block runs, then put everything back.

    The process (or command) that installs a handler closes it: a handler left on
    the root logger after its stream is gone (a test runner's captured stderr, a
    closed pipe) turns every later log call into a "--- Logging error ---".
    """
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    saved_uvicorn = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    # The warning filters and showwarning as they were (configure_logging changes both).
    with warnings.catch_warnings():
        handler = configure_logging(level, json, stream=stream)
        try:
            yield handler
        finally:
            logging.captureWarnings(False)
            root.handlers[:] = saved_root[0]
            root.setLevel(saved_root[1])
            for name, (handlers, propagate) in saved_uvicorn.items():
                logger = logging.getLogger(name)
                logger.handlers[:] = handlers
                logger.propagate = propagate
            logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved_flags
            handler.close()
