"""``capirelay init``: write a commented ``capirelay.toml``, its secrets, and check the result.

Interactive by default (each question has a default; flags answer them in
advance), fully non-interactive with ``--no-input`` (for scripts and CI).  The
generated ingest key and dashboard token go to files with mode 0600 that the
config refers to as ``{ file = "..." }`` (relative to the config's directory when
inside it: a relative path is read from there); the Meta access token is read
from an environment variable or a file, never written into the TOML.  An existing
config is never overwritten without ``--force`` (existing secret files are
kept, not rotated).  It ends by printing the browser snippet (a queueing stub and
the ``async`` ``<script>`` tag: :func:`capirelay.sources.snippet.page_snippet`) and
a ``curl`` example, and by running the doctor's checks on what it wrote.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console

from capirelay.secret_files import new_token, toml_string, write_secret

__all__ = ["InitAnswers", "init_command", "render_config"]

console = Console(soft_wrap=True)
EXIT_USAGE = 2
DEFAULT_TOKEN_ENV = "CAPIRELAY_ACCESS_TOKEN"
_PIXEL = re.compile(r"^[0-9]{1,32}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class InitAnswers:
    pixel_id: str
    token_env: str | None
    token_file: Path | None
    origins: list[str] = field(default_factory=list)
    country: str | None = None
    storage: str = "sqlite:///./capirelay.db"
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    test_event_code: str | None = None
    graph_url: str | None = None
    ingest_key_file: Path = Path("capirelay-secrets/ingest-key")
    dashboard_token_file: Path = Path("capirelay-secrets/dashboard-token")


def render_config(answers: InitAnswers, config_dir: Path | None = None) -> str:
    """The commented TOML text for ``answers`` (secrets only by reference).

    With ``config_dir`` (the directory the config is written to), a secret file inside
    it is written relative to it, as the config reads a relative ``file`` from its own
    directory: the project can be moved or committed and still find its secrets.  A file
    elsewhere, or every file without ``config_dir``, is written as given."""

    def file_ref(path: Path | None) -> str:
        assert path is not None
        return f"{{ file = {toml_string(_as_written(path, config_dir))} }}"

    if answers.token_env:
        token = f"{{ env = {toml_string(answers.token_env)} }}"
        token_note = f"# Read from the environment variable {answers.token_env} at each use."
    else:
        token = file_ref(answers.token_file)
        token_note = "# Read from this file (mode 0600) at each use: rotate it without a restart."
    origins = ", ".join(toml_string(o) for o in answers.origins)
    country = (
        f"default_country = {toml_string(answers.country)}"
        if answers.country
        else '# default_country = "us"'
    )
    code = (
        f"test_event_code = {toml_string(answers.test_event_code)}"
        if answers.test_event_code
        else '# test_event_code = "TEST12345"'
    )
    graph = (
        [
            "# Where Graph API requests go (a local emulator here; remove to send to Meta).",
            f"graph_url = {toml_string(answers.graph_url)}",
        ]
        if answers.graph_url
        else []
    )
    lines = [
        "# capirelay gateway configuration, written by `capirelay init`.",
        "# Every setting: examples/capirelay.toml in the capirelay repository.",
        "# Check this file with `capirelay doctor`.",
        "# Secrets are never in this file: each is { env = ... } or { file = ... }.",
        "",
        "# The durable queue: a SQLite file (a relative path is opened from the directory",
        "# the gateway runs in, not this file's), or postgresql://... for several replicas.",
        f"storage = {toml_string(answers.storage)}",
        "# Where the gateway listens; put TLS in front of it (README, Deploying).",
        f"host = {toml_string(answers.host)}",
        f"port = {answers.port}",
        *graph,
        "",
        "# One table per Meta pixel (dataset), named by its numeric id.",
        f"[pixels.{answers.pixel_id}]",
        "# A system-user access token with the ads_management permission for this dataset",
        "# (Events Manager > Settings > Conversions API > Generate access token).",
        token_note,
        f"access_token = {token}",
        "# Completes phone numbers and postal codes written without a country.",
        country,
        "# Pages on these origins may send browser events with the <script> snippet.",
        f"allowed_origins = [{origins}]",
        "# While testing, events show in Events Manager > Test events. Remove to go live.",
        code,
        "",
        "# Server-to-server key for POST /v1/events: 'Authorization: Bearer <file contents>'.",
        "[ingest_keys.backend]",
        f"key = {file_ref(answers.ingest_key_file)}",
        "",
        "# The operator dashboard at /ui/: sign in with this token.",
        "[dashboard]",
        f"admin_token = {file_ref(answers.dashboard_token_file)}",
        "",
    ]
    return "\n".join(lines)


def _as_written(path: Path, config_dir: Path | None) -> str:
    """``path`` relative to ``config_dir`` (with ``/``) when it is inside it, else as given.

    Inside is decided on ``path`` as given (made absolute, ``..`` collapsed only where that
    opens the same file: :func:`_absolute`), against the config's directory as given or
    resolved.  ``path`` itself is never resolved: a symbolic link the user named (a
    Kubernetes secret, ``secrets/meta-token -> ..data/meta-token``) is written as that
    link, not as its target of the day, which a rotation deletes.  A path that still
    holds ``..`` (after a link) is never written relative."""
    if config_dir is not None:
        given = _absolute(path)
        for directory in (_absolute(config_dir), config_dir.resolve()):
            try:
                relative = given.relative_to(directory)
            except ValueError:
                continue
            if ".." not in relative.parts:
                return relative.as_posix()
    return str(path)


# ------------------------------------------------------------------ validation


def _check_pixel(value: str) -> str:
    value = value.strip()
    if not _PIXEL.match(value):
        raise typer.BadParameter(
            "the pixel (dataset) id is the number in Events Manager > Data sources, e.g. 1234567890"
        )
    return value


def _check_origin(value: str) -> str:
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # "https://[::1": an unclosed or misplaced IPv6 bracket
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise typer.BadParameter(
            f"{value!r} is not an origin: write scheme and host only, e.g. https://shop.example"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def _check_graph_url(value: str) -> str:
    # The config's own rule, before a config that would not load is written.
    from capirelay.config import graph_url_problem

    problem = graph_url_problem(value)
    if problem is not None:
        raise typer.BadParameter(f"--graph-url {problem}")
    return value.strip()


def _check_origins(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for piece in value.split(","):
            if piece.strip():
                origin = _check_origin(piece)
                if origin not in out:
                    out.append(origin)
    return out


def _check_country(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    import pycountry

    code = value.strip()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code.upper()) is None:
        raise typer.BadParameter(f"{value!r} is not an ISO 3166 alpha-2 code such as US or DE")
    return code.lower()


def _check_env_name(value: str) -> str:
    value = value.strip()
    if not _ENV_NAME.match(value):
        raise typer.BadParameter(f"{value!r} is not an environment variable name")
    return value


def _ask(
    question: str, default: str | None, check: object, interactive: bool, flag: str = ""
) -> str:
    """Prompt until ``check`` accepts (interactive), or check the default once; with
    ``--no-input`` and no default, the error names ``flag``, the option that answers."""
    assert callable(check)
    while True:
        if not interactive:
            if default is None:
                raise typer.BadParameter(
                    f"{question}: required with --no-input: pass {flag or 'it as a flag'}"
                )
            return str(check(default))
        if default is None:
            answer = typer.prompt(question)
        else:
            answer = typer.prompt(question, default=default, show_default=bool(default))
        try:
            return str(check(answer))
        except typer.BadParameter as exc:
            typer.echo(f"  {exc.message}", err=True)


# --------------------------------------------------------------------- command


def init_command(
    config: Annotated[
        Path, typer.Option("--config", help="File to write (default: ./capirelay.toml).")
    ] = Path("capirelay.toml"),
    pixel: Annotated[str | None, typer.Option("--pixel", help="Pixel (dataset) id.")] = None,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env", help=f"Read the access token from this variable ({DEFAULT_TOKEN_ENV})."
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Read the access token from this file.")
    ] = None,
    origin: Annotated[
        list[str] | None,
        typer.Option("--origin", help="Site origin allowed to send browser events (repeatable)."),
    ] = None,
    country: Annotated[
        str | None, typer.Option("--country", help="Default country, ISO alpha-2 (US, DE ...).")
    ] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Storage URL.")] = None,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="The gateway's URL as browsers see it (for the tag)."),
    ] = None,
    test_event_code: Annotated[
        str | None, typer.Option("--test-event-code", help="Events Manager test code.")
    ] = None,
    graph_url: Annotated[
        str | None, typer.Option("--graph-url", help="Graph base URL (an emulator's, to try).")
    ] = None,
    secrets_dir: Annotated[
        Path | None,
        typer.Option("--secrets-dir", help="Where the generated secrets go (mode 0600)."),
    ] = None,
    no_input: Annotated[
        bool, typer.Option("--no-input", help="Ask nothing: flags and defaults only.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
) -> None:
    """Write a commented capirelay.toml and its secret files, then run the doctor's checks.

    Interactive by default; with --no-input every answer comes from the flags
    (--pixel is then required).  Example for a script:

      capirelay init --no-input --pixel 1234567890 --token-env META_TOKEN
        --origin https://shop.example --country US
    """
    if config.exists() and not force:
        typer.echo(f"{config} already exists; pass --force to overwrite it", err=True)
        raise typer.Exit(EXIT_USAGE)
    if token_env and token_file:
        typer.echo("give --token-env or --token-file, not both", err=True)
        raise typer.Exit(EXIT_USAGE)
    interactive = not no_input
    try:
        answers = _answers(
            config=config,
            pixel=pixel,
            token_env=token_env,
            token_file=token_file,
            origins=origin,
            country=country,
            storage=storage,
            public_url=public_url,
            test_event_code=test_event_code,
            graph_url=graph_url,
            secrets_dir=secrets_dir,
            interactive=interactive,
        )
    except typer.BadParameter as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    kept = _write_secrets(answers)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(render_config(answers, config.parent), encoding="utf-8")
    _report(config, answers, kept)
    _doctor(config)


def _answers(
    *,
    config: Path,
    pixel: str | None,
    token_env: str | None,
    token_file: Path | None,
    origins: list[str] | None,
    country: str | None,
    storage: str | None,
    public_url: str | None,
    test_event_code: str | None,
    graph_url: str | None,
    secrets_dir: Path | None,
    interactive: bool,
) -> InitAnswers:
    base = config.parent.absolute()
    secrets = _absolute(secrets_dir or base / "capirelay-secrets")
    ingest_key_file, dashboard_token_file = secrets / "ingest-key", secrets / "dashboard-token"
    _check_secrets_dir(secrets_dir, secrets, [ingest_key_file, dashboard_token_file])
    if token_file is not None:
        _check_token_file(token_file, "--token-file")
    pixel_id = (
        _check_pixel(pixel)
        if pixel
        else _ask(
            "Pixel (dataset) id from Events Manager",
            None,
            _check_pixel,
            interactive,
            flag="--pixel ID",
        )
    )
    if not token_env and not token_file:
        source = _ask(
            "Where will the access token come from: env (a variable) or file",
            "env",
            _check_source,
            interactive,
        )
        if source == "env":
            token_env = _ask(
                "Environment variable name", DEFAULT_TOKEN_ENV, _check_env_name, interactive
            )
        else:
            token_file = Path(
                _ask("Token file", str(secrets / "access-token"), _check_token_file, interactive)
            )
            if interactive and not token_file.exists():
                pasted = typer.prompt(
                    "Paste the access token to store it in that file (empty: later)",
                    default="",
                    hide_input=True,
                    show_default=False,
                )
                if pasted.strip():
                    write_secret(token_file, pasted.strip())
    elif token_env:
        token_env = _check_env_name(token_env)
    if origins is None:
        answer = _ask(
            "Your site's origins, comma-separated (empty: none, browser events refused)",
            "",
            lambda v: ",".join(_check_origins([v])),
            interactive,
        )
        origin_list = _check_origins([answer])
    else:
        origin_list = _check_origins(origins)
    if country is None:
        country = _ask(
            "Default country, ISO alpha-2 (empty: none)",
            "",
            lambda v: _check_country(v) or "",
            interactive,
        )
    # Absolute: a relative SQLite path is opened from the current directory of `serve`,
    # not from the config's (only secret files are read from there).
    storage = storage or f"sqlite:///{_absolute(base) / 'capirelay.db'}"
    if public_url is None:
        public_url = _ask(
            "The gateway's URL as your pages will load it",
            "http://127.0.0.1:8080",
            _check_origin,
            interactive,
        )
    else:
        public_url = _check_origin(public_url)
    return InitAnswers(
        pixel_id=pixel_id,
        token_env=token_env,
        token_file=_absolute(token_file) if token_file else None,
        origins=origin_list,
        country=_check_country(country),
        storage=storage,
        public_url=public_url,
        test_event_code=test_event_code,
        graph_url=_check_graph_url(graph_url) if graph_url else None,
        ingest_key_file=ingest_key_file,
        dashboard_token_file=dashboard_token_file,
    )


def _absolute(path: Path) -> Path:
    """``path`` from the current directory, with each ``name/..`` dropped when ``name`` is
    a directory that is not a symbolic link: ``../tokens/meta`` is written
    ``/srv/tokens/meta``, not ``/srv/shop/../tokens/meta``.

    Only where that names the same file: ``link/..`` is the directory above the link's
    *target*, so it is kept as given (as is ``missing/..``, which opens nothing), where
    :func:`os.path.normpath` would name ``x`` beside the link instead."""
    parts: list[str] = []
    for part in path.absolute().parts:
        if part == ".." and parts and parts[-1] not in ("..", parts[0]):
            here = Path(*parts)
            if here.is_dir() and not here.is_symlink():
                parts.pop()
                continue
        parts.append(part)
    return Path(*parts)


def _check_token_file(value: str | Path, option: str | None = None) -> Path:
    """The access token's file, refused when it is a directory: the config would name a
    file that can never be read (``--token-file .`` wrote ``{ file = "." }``).  It need
    not exist yet (the token can be stored later)."""
    path = Path(value)
    if path.is_dir():
        flag = f"{option} " if option else ""
        example = f"{flag}{str(value).rstrip('/')}/access-token"
        raise typer.BadParameter(
            f"{flag}{value} is a directory: give the file that holds the access token (or "
            f"will), e.g. {example}"
        )
    return path


def _check_secrets_dir(given: Path | None, secrets: Path, files: list[Path]) -> None:
    """Where the generated secrets go: a directory (created if missing), with no directory
    in the place of a secret file (each stopped init with a traceback)."""
    named = f"--secrets-dir {given if given is not None else secrets}"
    if secrets.exists() and not secrets.is_dir():
        raise typer.BadParameter(
            f"{named} is a file, not a directory: give a directory for the generated "
            "secrets (it is created if missing)"
        )
    for path in files:
        if path.is_dir():
            raise typer.BadParameter(
                f"{named}: {path} is a directory, where init writes a generated secret file; "
                "move it away or give another --secrets-dir"
            )


def _check_source(value: str) -> str:
    value = value.strip().lower()
    if value not in ("env", "file"):
        raise typer.BadParameter("answer env or file")
    return value


def _write_secrets(answers: InitAnswers) -> list[Path]:
    """Generate the ingest key and dashboard token; existing files are kept (not rotated)."""
    kept = []
    for path in (answers.ingest_key_file, answers.dashboard_token_file):
        if path.exists() and path.read_text(encoding="utf-8").strip():
            kept.append(path)
        else:
            write_secret(path, new_token())
    return kept


def _report(config: Path, answers: InitAnswers, kept: list[Path]) -> None:
    from capirelay.sources.snippet import SNIPPET_PATH, page_snippet

    console.print(f"[green]wrote[/] {config}", highlight=False)
    for path in (answers.ingest_key_file, answers.dashboard_token_file):
        verb = "kept existing" if path in kept else "wrote (mode 0600)"
        console.print(f"  {verb} {path}", highlight=False)
    if answers.token_env:
        console.print(
            f"  the access token is read from ${answers.token_env}: export it before "
            "`capirelay serve`",
            highlight=False,
        )
    console.print(
        "\nOn every page of your site, in <head> (after Meta's pixel code, if any), "
        "before any capirelay.track(...) call:"
    )
    snippet = page_snippet(f"{answers.public_url}{SNIPPET_PATH}", answers.pixel_id)
    for line in snippet.splitlines():
        console.print(f"  {line}", highlight=False, markup=False)
    if not answers.origins:
        console.print(
            "  No site origin is allowed yet, so the gateway refuses this snippet's events "
            f"(403 origin_not_allowed): set allowed_origins under [pixels.{answers.pixel_id}] "
            f'in {config}, e.g. allowed_origins = ["https://shop.example"].',
            style="yellow",
            highlight=False,
            markup=False,
        )
    console.print("\nStart the gateway, then send a server event from your backend:")
    console.print(f"  capirelay serve --config {config}", highlight=False, markup=False)
    local = local_url(answers)
    if answers.public_url.rstrip("/") != local:
        console.print(
            f"  # on this machine, to the gateway `serve` starts ({local}):",
            highlight=False,
            markup=False,
        )
        console.print(f"  {_curl(local, answers)}", highlight=False, markup=False)
        console.print(
            f"  # from your backend, once {answers.public_url} reaches the gateway:",
            highlight=False,
            markup=False,
        )
    console.print(f"  {_curl(answers.public_url, answers)}", highlight=False, markup=False)
    console.print(
        f"\nDashboard: {answers.public_url}/ui/  (token: the contents of "
        f"{answers.dashboard_token_file})",
        highlight=False,
        markup=False,
    )
    console.print("\nChecking the new config (capirelay doctor):")


def local_url(answers: InitAnswers) -> str:
    """Where `capirelay serve` answers on this machine (its ``host`` and ``port``)."""
    host = "127.0.0.1" if answers.host in ("0.0.0.0", "") else answers.host  # noqa: S104
    return f"http://{host}:{answers.port}"


def _curl(base_url: str, answers: InitAnswers) -> str:
    return (
        f"curl -s {base_url.rstrip('/')}/v1/events "
        f'-H "Authorization: Bearer $(cat {answers.ingest_key_file})" '
        "-H 'Content-Type: application/json' "
        f'-d \'{{"pixel_id": "{answers.pixel_id}", "data": [{{"event_name": "Lead", '
        '"event_time": \'$(date +%s)\', "action_source": "website", '
        '"event_source_url": "https://shop.example/contact", '
        '"user_data": {"email": "lead@example.com", "client_user_agent": "curl"}}]}\''
    )


def _doctor(config: Path) -> None:
    from capirelay.cli.doctor import render
    from capirelay.config import ConfigError, load_settings
    from capirelay.ops.doctor import Status, run_doctor

    library_logger = logging.getLogger("capirelay")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        settings = load_settings(config)
        report = asyncio.run(run_doctor(config, settings=settings))
    except ConfigError as exc:  # cannot happen for what init writes; say so if it does
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_USAGE) from None
    finally:
        library_logger.setLevel(level)
    render(report, console)
    if report.status is not Status.OK:
        console.print(
            "Fix what the table shows (a missing token is expected until you set it), "
            "then run `capirelay doctor` again."
        )
