"""`charter merge`: fold LoRA adapters into full weights (see `charter.train.lora.merge_adapters`).

    charter merge BASE dpo_adapter:1.0 sft_adapter:0.25 --out merged    # the paper's recipe
    charter merge --export ADAPTER --out merged                         # base read from the adapter

`--export` merges into the model the adapter was trained on: the base named in its config, or for
a Charter training output its recorded base plus the adapters folded in before training (an SFT
adapter trained on the DPO model exports as base + DPO + SFT).

An adapter is `PATH[:WEIGHT]` (weight 1.0 when absent). The weight is the text after the *last*
`:` and only when it reads as a number, so `runs/a:b/dpo` is a path and `runs/a:b/dpo:0.25` is
that path at 0.25. (A folder literally named `x:1` is written `x:1:1`.)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer

DTYPES = ["auto", "float32", "bfloat16", "float16"]


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """`PATH[:WEIGHT]` -> (path, weight)."""
    path, sep, tail = spec.rpartition(":")
    try:
        weight = float(tail) if sep and path else None
    except ValueError:
        weight = None
    if weight is None:
        return spec, 1.0
    if not math.isfinite(weight):
        raise typer.BadParameter(f"{spec!r}: weight must be a finite number", param_hint="ADAPTER[:WEIGHT]")
    return path, weight


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge(
        inputs: Optional[List[str]] = typer.Argument(None, metavar="BASE ADAPTER[:WEIGHT]",
                                                     help="base model, then one or more adapters"),
        out: Path = typer.Option(..., "--out", help="output folder (a plain Hugging Face model)"),
        export: Optional[str] = typer.Option(None, "--export", metavar="ADAPTER[:WEIGHT]",
                                             help="merge one adapter into the model it was trained on (read from its folder)"),
        dtype: str = typer.Option("auto", "--dtype", help=f"storage dtype: {', '.join(DTYPES)}"),
        force: bool = typer.Option(False, "--force", help="replace --out if it already exists"),
    ) -> None:
        """Merge LoRA adapters into full weights: W = W_base + sum_i weight_i * scale_i * B_i A_i (exact)."""
        from charter.locks import hold_folder
        from charter.models import MERGE_RECORD
        from charter.train.lora import merge_adapters
        from charter.train.lora import export as export_adapter

        inputs = inputs or []
        if dtype not in DTYPES:
            raise typer.BadParameter(f"{dtype!r} is not one of {', '.join(DTYPES)}", param_hint="--dtype")
        if export is not None and inputs:
            raise typer.BadParameter("--export reads the base from the adapter's folder; give no positional "
                                     "arguments (or drop --export and name BASE first)", param_hint="--export")
        if export is None and len(inputs) < 2:
            raise typer.BadParameter("give BASE and at least one ADAPTER, or --export ADAPTER",
                                     param_hint="BASE ADAPTER[:WEIGHT]...")
        if out.is_file():
            _fail(f"--out {out} is a file; give a folder")
        if out.exists() and any(out.iterdir()) and not force:
            _fail(f"{out} already exists (use --force to replace it)")
        adapters = [parse_adapter_spec(s) for s in ([export] if export is not None else inputs[1:])]
        try:
            with hold_folder(out):
                if export is None:
                    merged = merge_adapters(inputs[0], adapters, out, dtype=dtype)
                else:
                    (path, weight), = adapters
                    merged = export_adapter(path, out, weight=weight, dtype=dtype)
        except (OSError, ValueError) as e:
            _fail(str(e))
        record = json.loads((merged / MERGE_RECORD).read_text())
        typer.echo(f"merged into {merged}  (base {record['base']})")
        for a in record["adapters"]:
            typer.echo(f"  {a['path']}  weight {a['weight']:g}  scale {a['scale']:g}")
