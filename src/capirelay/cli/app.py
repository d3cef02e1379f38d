"""The ``capirelay`` command line: the Typer app and its command groups.

One module per command group in this package (``dlq``, ``doctor``, ``send``,
...); this one builds the app and registers them, in the order ``--help``
lists them.

Each command does one job and leaves the work to its module: ``hash`` to
:mod:`capirelay.normalize`, ``send`` to :mod:`capirelay.events` and
:mod:`capirelay.graph`, ``emulator`` to :mod:`capirelay.emulator`.  Imports
happen inside the commands so ``capirelay --help`` stays fast and one broken
layer does not take the whole CLI down.

Secrets never come from flags (they would land in shell history and ``ps``):
``send`` reads the token from ``CAPIRELAY_ACCESS_TOKEN``.
"""

from __future__ import annotations

import warnings

import typer

from capirelay.cli._help import quiet_flag_types
from capirelay.graph.versions import ApiVersionWarning

quiet_flag_types()

app = typer.Typer(
    name="capirelay",
    help="Self-hosted gateway and toolkit for the Meta Conversions API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold tokens and identifiers
)


def _register_subcommands() -> None:
    from capirelay.cli.demo import demo_command
    from capirelay.cli.dlq import dlq_app
    from capirelay.cli.doctor import doctor_command
    from capirelay.cli.emulator import emulator_command
    from capirelay.cli.erase import erase_command
    from capirelay.cli.hash import hash_command
    from capirelay.cli.import_ import import_command
    from capirelay.cli.init import init_command
    from capirelay.cli.mapping import mapping_app
    from capirelay.cli.migrate import migrate_command
    from capirelay.cli.pixel import pixel_app
    from capirelay.cli.send import send_command
    from capirelay.cli.serve import serve_command
    from capirelay.cli.trace import trace_command

    app.command("emulator")(emulator_command)
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    app.add_typer(dlq_app, name="dlq")
    app.command("doctor")(doctor_command)
    app.command("hash")(hash_command)
    app.command("init")(init_command)
    app.command("send")(send_command)
    app.add_typer(mapping_app, name="mapping")
    app.command("migrate")(migrate_command)
    app.add_typer(pixel_app, name="pixel")
    app.command("trace")(trace_command)
    app.command("import")(import_command)
    app.command("erase")(erase_command)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``capirelay = "capirelay.cli:main"``)."""
    # A retiring API version is said once, as capirelay.graph's log line, not again as a
    # raw Python warning quoting a source path.
    warnings.filterwarnings("ignore", category=ApiVersionWarning)
    app(args=argv, prog_name="capirelay")
