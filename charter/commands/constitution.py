"""`charter constitution new|show`: write a commented template, or print what a file means."""
from __future__ import annotations

from pathlib import Path

import typer


def principles_in(file: str):
    """The PrincipleSet a file holds when its content has a principles shape, else None (a constitution)."""
    from charter.cai.principles import load_principles, parser_for, read_principles_data
    from charter.data.jsonl import DataError

    path = Path(file)
    if not path.is_file():
        return None
    try:
        data = read_principles_data(path)
    except DataError:  # e.g. OCT JSONL: not one JSON document, so a constitution
        return None
    return load_principles(path) if parser_for(data) else None


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
    def show(file: str = typer.Argument(..., help="Constitution file (YAML, OCT JSON/.txt, OCT JSONL), library name, "
                                                  "or CAI principles file (any format `cai` reads).")) -> None:
        """Print the constitution or principles file as Charter understood it."""
        from charter.cai.principles import describe
        from charter.constitution import load_constitution

        principle_set = principles_in(file)
        if principle_set is not None:
            typer.echo("\n".join(describe(principle_set)))
            return
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
