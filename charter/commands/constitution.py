"""`charter constitution new|show`: write a commented template, or print what a file means."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, help="Write and inspect constitutions.")
    app.add_typer(sub, name="constitution")

    @sub.command("new")
    def new(name: str = typer.Argument(..., help="The character's name."),
            out: Path = typer.Option(None, "--out", "-o", help="File to write (default: NAME.yaml)."),
            force: bool = typer.Option(False, help="Overwrite an existing file.")) -> None:
        """Write a commented constitution template."""
        from charter.constitution import TEMPLATE
        from charter.data.jsonl import atomic_write_text

        path = out or Path(f"{name.lower().replace(' ', '_')}.yaml")
        if path.exists() and not force:
            raise typer.BadParameter(f"{path} exists (use --force to overwrite)")
        atomic_write_text(path, TEMPLATE.format(name=name, file=path))
        typer.echo(f"wrote {path}")

    @sub.command("show")
    def show(file: str = typer.Argument(..., help="Constitution file (YAML, OCT JSON/.txt, OCT JSONL) or library name.")) -> None:
        """Print the constitution as Charter understood it."""
        from charter.constitution import load_constitution

        c = load_constitution(file)
        typer.echo(f"name: {c.name}   hash: {c.hash()}")
        if c.description:
            typer.echo(f"description: {c.description}")
        typer.echo(f"{len(c.traits)} traits, {len(c.all_questions())} questions")
        for i, t in enumerate(c.traits, 1):
            typer.echo(f"{i:3d}. {t.text}")
            for q in t.questions:
                typer.echo(f"       - {q}")
        if c.prompts:
            typer.echo("extra prompts:")
            for q in c.prompts:
                typer.echo(f"       - {q}")
