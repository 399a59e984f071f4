"""The `charter` command. Each area registers its own sub-commands from charter/commands/."""
from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

from charter.chat_render import TemplateError
from charter.config import ConfigError
from charter.data.jsonl import DataError
from charter.faults import (RunError, command_line, disk_full, end_progress_bars, interrupted_exit_code,
                            signals_interrupt)

COMMAND_MODULES = [
    "run", "toy", "train", "constitution", "distill", "data", "introspect",
    "eval", "chat", "serve", "cai", "bootstrap", "merge", "fetch",
]
# bad input the user can fix (a model's chat template counts); anything else is a bug and keeps its traceback
INPUT_ERRORS = (ConfigError, DataError, TemplateError)
INPUT_ERROR_EXIT = 2
RUN_ERROR_EXIT = 1  # a folder in use, a full disk, a server that stayed down


class CharterGroup(TyperGroup):
    """Every sub-command runs inside `invoke`: bad input becomes one `error: ...` line on stderr and
    exit code 2, a run-time failure (`faults.RunError`) one line and exit code 1, and Ctrl-C or
    SIGTERM the command that resumes and exit code 128 + signal, for the installed script and for
    typer's CliRunner alike."""

    def invoke(self, ctx: click.Context):
        try:
            with signals_interrupt():
                return super().invoke(ctx)
        except INPUT_ERRORS as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(INPUT_ERROR_EXIT) from None
        except (RunError, OSError) as e:
            if isinstance(e, OSError) and not disk_full(e.filename, e):  # a full disk anywhere (a model save)
                raise
            end_progress_bars()
            typer.secho(f"error: {e if isinstance(e, RunError) else disk_full(e.filename, e)}", fg="red", err=True)
            raise typer.Exit(RUN_ERROR_EXIT) from None
        except KeyboardInterrupt as e:
            end_progress_bars()
            typer.secho(f"interrupted ({str(e) or 'SIGINT'}); finished records are kept. Resume with: {command_line()}",
                        fg="yellow", err=True)
            raise typer.Exit(interrupted_exit_code(e)) from None


app = typer.Typer(cls=CharterGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Charter: constitution in, character model out.")

for _name in COMMAND_MODULES:
    importlib.import_module(f"charter.commands.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
