"""Configuration mistakes as one line each: ``FILE:LINE:COL: what is wrong``.

:func:`capirelay.config.load_settings` turns a TOML syntax error or a
validation error into these lines, so every command that reads the config
(``serve``, ``doctor``, ``dlq``, ``migrate`` ...) says the same thing, names
the real file and points at the line to edit.  An unknown key gets the
closest valid one as a suggestion (``did you mean `default_country`?``).
Values are never echoed: a misplaced token must not end up in a terminal log.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from capirelay.sources._toml_lines import KeyLines

__all__ = [
    "field_suggestion",
    "is_secret_setting",
    "literal_secret_warning",
    "locate",
    "syntax_error_line",
    "validation_error_lines",
    "variable_holding",
]

_SETTING_LINE = re.compile(r"^\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*): (.+)$")

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_END_OF_DOCUMENT = re.compile(r"\s*\(at end of document\)\s*$")


def syntax_error_line(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """``FILE:LINE:COL: TOML syntax error: ...`` from tomllib's message."""
    message = str(exc)
    if match := _POSITION.search(message):
        reason = message[: match.start()]
        return f"{path}:{match.group(1)}:{match.group(2)}: TOML syntax error: {_lower(reason)}"
    if match := _END_OF_DOCUMENT.search(message):
        reason = message[: match.start()]
        lines = _read(path).splitlines() or [""]
        return f"{path}:{len(lines)}:{len(lines[-1]) + 1}: TOML syntax error: {_lower(reason)}"
    return f"{path}:1:1: TOML syntax error: {_lower(message)}"


def validation_error_lines(
    path: Path | None, exc: ValidationError, root: type[BaseModel]
) -> list[str]:
    """One ``FILE:LINE:COL: ...`` line per error (``settings: ...`` when not from the file)."""
    text = _read(path) if path is not None else ""
    keys = KeyLines(text) if text else None
    lines = text.splitlines()
    out = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [part for part in error["loc"] if isinstance(part, str | int)]
        loc = _settings_path(loc, error["type"])
        dotted = ".".join(str(part) for part in loc)
        # A CAPIRELAY_* variable overrides the file: when the value came from one, that
        # variable is where it is wrong (the file's line may be valid) and what to fix.
        variable = variable_holding(loc)
        if error["type"] == "extra_forbidden" and _in_a_secret(root, loc):
            what = _unknown_secret_key(dotted, loc, variable)
        elif error["type"] == "extra_forbidden":
            what = f"unknown key `{dotted}`"
            suggestion = field_suggestion(root, loc)
            if suggestion:
                what += f"; did you mean `{suggestion}`?"
        elif error["type"] == "model_type" and _model_at(root, loc) is _secret_model():
            what = f"{dotted}: {_not_a_secret(loc, variable)}"
        else:
            what = f"{dotted}: {_lower(error['msg'])}"
        where = f"environment variable {variable}" if variable else _where(path, keys, lines, loc)
        out.append(f"{where}: {what}")
    return out


def locate(path: Path | None, message: str) -> str:
    """``setting.path: problem`` lines of ``message`` as ``FILE:LINE:COL: ...`` lines.

    For mistakes found after the settings loaded (webhook presets, mapping files):
    a header line such as ``invalid webhook configuration:`` is dropped, lines that
    name no setting are kept as they are.
    """
    text = _read(path) if path is not None else ""
    if not text:
        return message
    keys = KeyLines(text)
    lines = text.splitlines()
    out = []
    for line in message.splitlines():
        match = _SETTING_LINE.match(line)
        if match is None:
            if not line.rstrip().endswith(":"):
                out.append(line.strip())
            continue
        loc = match.group(1).split(".")
        out.append(f"{_where(path, keys, lines, loc)}: {line.strip()}")
    return "\n".join(out)


def field_suggestion(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """The valid key closest to ``loc``'s last part in the model it was written in."""
    if not loc:
        return None
    model = _model_at(root, loc[:-1])
    if model is None:
        return None
    names = [name for name in model.model_fields if not name.startswith("_")]
    matches = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _secret_model() -> type[BaseModel]:
    from capirelay.config import Secret

    return Secret


def _in_a_secret(root: type[BaseModel], loc: Sequence[str | int]) -> bool:
    return len(loc) >= 2 and _model_at(root, loc[:-1]) is _secret_model()


def _secret_forms(setting: str) -> tuple[str, str]:
    """How ``setting`` reads its secret from a file and from an environment variable."""
    return (
        f'`{setting} = {{ file = "..." }}` (a path, relative to the config file\'s directory)',
        f'`{setting} = {{ env = "..." }}` (the name of an environment variable)',
    )


def literal_secret_warning(secret: Sequence[str | int], variable: str | None = None) -> str:
    """The warning for the secret at ``secret`` (``("webhooks", "shop", "secret")``) given
    as a literal: the setting, where the literal is, and the forms that keep the secret
    itself out of there, spelt as its errors spell them.  Never the value.

    ``variable``: the ``CAPIRELAY_*`` variable whose JSON holds the literal
    (``CAPIRELAY_PIXELS='{"1234567890": {"access_token": "EAA..."}}'``); None: the file."""
    setting = ".".join(str(part) for part in secret)
    if variable is None:
        as_file, as_env = _secret_forms(str(secret[-1]))
        return (
            f"{setting} is a literal in the config file; write {as_env} or {as_file} in its "
            "place, so the secret stays out of the file"
        )
    own = _own_variable(secret)
    siblings = (
        ""
        if variable.upper() == own
        else f", or take it out of that JSON and set {own}__FILE (a path) or {own}__ENV"
    )
    return (
        f"{setting} is a literal inside the JSON of the environment variable {variable}; "
        f'{_set_secret(variable, secret)} {{"env": "..."}} (the name of another variable) or '
        f'{{"file": "..."}} (a path) in place of the literal{siblings}, so the secret '
        f"itself is not in {variable}"
    )


def is_secret_setting(root: type[BaseModel], place: Sequence[str | int]) -> bool:
    """Whether ``place`` (``("pixels", "42", "access_token")``) is a secret-typed setting."""
    return bool(place) and _model_at(root, place) is _secret_model()


def _own_variable(secret: Sequence[str | int]) -> str:
    """The variable named for the setting at ``secret`` (``CAPIRELAY_PIXELS__1__ACCESS_TOKEN``)."""
    return "CAPIRELAY_" + "__".join(str(part) for part in secret).upper()


def _set_secret(variable: str, secret: Sequence[str | int]) -> str:
    """How to give the secret at ``secret`` a new value where ``variable`` holds it: the
    secret's own variable is set; a table's variable above it (``CAPIRELAY_PIXELS``) has
    the secret's key set inside its JSON, not the whole variable replaced."""
    depth = len(variable.split("_", 1)[1].split("__"))
    if variable.upper() == _own_variable(secret) or depth >= len(secret):
        return f"set {variable} to"
    inside = ".".join(str(part) for part in secret[depth:])
    return f'in the JSON of {variable}, set "{inside}" to'


def _env_forms(variable: str, secret: Sequence[str | int]) -> str:
    """How the variable ``variable`` gives a secret: its text, or a JSON table."""
    own = variable.upper() == _own_variable(secret)
    return (
        f"{_set_secret(variable, secret)} the secret itself"
        + (", without quotes (read from the variable at each use)," if own else "")
        + ' or to {"file": "..."} or {"env": "..."}, or unset it to use the config file\'s '
        "setting"
    )


def _not_a_secret(loc: Sequence[str | int], variable: str | None = None) -> str:
    """A secret given as a number, a boolean, a list (``key = 123456``): what to write.
    From ``variable`` (JSON ``null``, a list): what to set it to instead."""
    if variable is not None:
        return (
            f"a secret is text, and the variable holds JSON that is not: "
            f"{_env_forms(variable, loc)}"
        )
    as_file, as_env = _secret_forms(str(loc[-1]))
    return (
        f"a secret is text: write {as_file} or {as_env}, or quote it in the file "
        "(a literal, warned about)"
    )


def _unknown_secret_key(dotted: str, loc: Sequence[str | int], variable: str | None = None) -> str:
    """An unknown key inside a secret's table (``access_token = { path = "..." }``): which
    of ``file`` or ``env`` it meant, written out for this setting (as JSON for the
    ``variable`` the table came from).  Only the key is named, never its value."""
    secret = loc[:-1]
    own = _own_variable(secret)
    if variable is not None and variable.upper().startswith(own + "__"):
        # The variable names the wrong key itself (CAPIRELAY_..._ACCESS_TOKEN__PATH).
        as_file = f"set {own}__FILE (a path) instead of {variable}"
        as_env = f"set {own}__ENV (the name of another variable) instead of {variable}"
        either = f"set {own}__FILE (a path) or {own}__ENV instead of {variable}"
    elif variable is not None:
        target = _set_secret(variable, secret)
        as_file = f'{target} {{"file": "..."}} (a path)'
        as_env = f'{target} {{"env": "..."}} (the name of another variable)'
        either = (
            f'{target} {{"file": "..."}} (a path) or {{"env": "..."}} '
            "(the name of another variable)"
        )
    else:
        as_file, as_env = _secret_forms(str(loc[-2]))
        either = f"a secret is read with {as_file} or {as_env}"
        as_file, as_env = f"write {as_file}", f"write {as_env}"
    wrong = str(loc[-1]).lower()
    if "file" in wrong or "path" in wrong:
        return f"unknown key `{dotted}`; did you mean `file`? {_capital(as_file)}"
    if "env" in wrong or "var" in wrong:
        return f"unknown key `{dotted}`; did you mean `env`? {_capital(as_env)}"
    return f"unknown key `{dotted}`; {either}"


def variable_holding(loc: Sequence[str | int]) -> str | None:
    """The ``CAPIRELAY_*`` variable the value at ``loc`` came from, if any: the one named
    for ``loc`` (``CAPIRELAY_WEBHOOKS__SHOP__SECRET``), else one named for a table above
    it whose JSON holds the rest of ``loc`` (``CAPIRELAY_WEBHOOKS__SHOP='{"secret": ...}'``).
    Variables override the config file, so such a value is the one that was read."""
    if not loc:
        return None
    variables = {name.lower(): name for name in os.environ}
    for depth in range(len(loc), 0, -1):
        wanted = "capirelay_" + "__".join(str(part) for part in loc[:depth]).lower()
        variable = variables.get(wanted)
        if variable is None:
            continue
        if depth == len(loc) or _json_holds(os.environ[variable], loc[depth:]):
            return variable
        return None  # the nearest table's variable does not hold it: the file does
    return None


def _json_holds(text: str, rest: Sequence[str | int]) -> bool:
    try:
        value: Any = json.loads(text)
    except ValueError:
        return False
    for part in rest:
        if not isinstance(value, dict):
            return False
        keys = {str(key).lower(): key for key in value}
        if str(part).lower() not in keys:
            return False
        value = value[keys[str(part).lower()]]
    return True


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _settings_path(loc: list[str | int], kind: str) -> list[str | int]:
    # Union/tagged members add pseudo-parts such as "function-before[...]"; drop them.
    return [part for part in loc if not (isinstance(part, str) and "[" in part)] or loc


def _model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    current: Any = root
    expect_key = False
    for part in path:
        if expect_key:
            expect_key = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current, expect_key = _unwrap(field.annotation)
    if expect_key:
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The model inside ``X | None`` or ``dict[str, X]``; True when a dict key comes next."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else (None, False)
    if origin is dict:
        return typing.get_args(annotation)[1], True
    return annotation, False


def _where(
    path: Path | None, keys: KeyLines | None, lines: list[str], loc: Sequence[str | int]
) -> str:
    if path is None or keys is None:
        return "settings"
    number = keys.exact_line(loc)
    if number is None:
        number = keys.line_of(loc)
        if number is None:
            return f"{path} (or a CAPIRELAY_* environment variable)"
    text = lines[number - 1] if number <= len(lines) else ""
    column = _column(text, loc)
    return f"{path}:{number}:{column}"


def _column(text: str, loc: Sequence[str | int]) -> int:
    for part in reversed(loc):
        if isinstance(part, str):
            found = text.find(part)
            if found >= 0:
                return found + 1
    return len(text) - len(text.lstrip()) + 1


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _lower(text: str) -> str:
    text = text.strip()
    return text[:1].lower() + text[1:] if text else text
