"""The `charter` command. Each area registers its own sub-commands from charter/commands/."""
from __future__ import annotations

import importlib
import sys

import typer

COMMAND_MODULES = [
    "run", "toy", "train", "constitution", "distill", "data", "introspect",
    "eval", "chat", "cai", "bootstrap", "merge", "fetch",
]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Charter: constitution in, character model out.")

for _name in COMMAND_MODULES:
    importlib.import_module(f"charter.commands.{_name}").register(app)


def main() -> None:
    from charter.config import ConfigError
    from charter.data.jsonl import DataError

    try:
        app()
    except (ConfigError, DataError) as e:  # bad input: a clear message, no traceback
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
