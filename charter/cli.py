"""The `charter` command. Each area registers its own sub-commands from charter/commands/."""
from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

from charter.chat_render import TemplateError
from charter.config import ConfigError
from charter.data.jsonl import DataError

COMMAND_MODULES = [
    "run", "toy", "train", "constitution", "distill", "data", "introspect",
    "eval", "chat", "cai", "bootstrap", "merge", "fetch",
]
# bad input the user can fix (a model's chat template counts); anything else is a bug and keeps its traceback
INPUT_ERRORS = (ConfigError, DataError, TemplateError)
INPUT_ERROR_EXIT = 2


class CharterGroup(TyperGroup):
    """Every sub-command runs inside `invoke`: bad input becomes one `error: ...` line on stderr and
    exit code 2, for the installed script and for typer's CliRunner alike."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except INPUT_ERRORS as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(INPUT_ERROR_EXIT) from None


app = typer.Typer(cls=CharterGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Charter: constitution in, character model out.")

for _name in COMMAND_MODULES:
    importlib.import_module(f"charter.commands.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
