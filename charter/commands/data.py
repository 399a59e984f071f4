"""`charter data export|validate`: convert datasets to fine-tuning formats and check them."""
from __future__ import annotations

from pathlib import Path

import typer

FORMATS_HELP = "together-dpo, together-sft, pairs (explicit preference pairs) or sft (chat messages)"


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, help="Convert and validate datasets.")
    app.add_typer(sub, name="data")

    @sub.command("export")
    def export(src: Path = typer.Argument(..., help="Input JSONL: pairs (explicit/implicit), HH-RLHF, chat, Alpaca."),
               fmt: str = typer.Option(..., "--format", "-f", help=FORMATS_HELP),
               out: Path = typer.Option(..., "--out", "-o", help="Output JSONL."),
               skip_bad: bool = typer.Option(False, help="Skip (and list) bad rows instead of failing.")) -> None:
        """Convert a dataset, e.g. DPO pairs to Together's DPO format."""
        from charter.cards import write_dataset_card
        from charter.data.formats import export_file

        n, errors = export_file(src, out, fmt, skip_bad)
        for e in errors[:20]:
            typer.secho(f"skipped {e}", fg="yellow", err=True)
        typer.echo(f"wrote {n} rows to {out}" + (f" ({len(errors)} skipped)" if errors else ""))
        card = write_dataset_card(out, fmt, n, src, len(errors))
        typer.echo(f"dataset card: {card}" if card else f"kept {out.parent / 'README.md'} (not a Charter card)")

    @sub.command("validate")
    def validate(file: Path = typer.Argument(..., help="JSONL file to check."),
                 fmt: str = typer.Option(..., "--format", "-f", help=FORMATS_HELP)) -> None:
        """Check every row; print `file:line: field: problem` for each bad one (exit 1 if any)."""
        from charter.data.formats import validate_file

        ok, errors = validate_file(file, fmt)
        for e in errors[:50]:
            typer.secho(e, fg="red", err=True)
        if len(errors) > 50:
            typer.secho(f"... and {len(errors) - 50} more", fg="red", err=True)
        typer.echo(f"{file}: {ok} ok, {len(errors)} bad ({fmt})")
        raise typer.Exit(1 if errors else 0)
