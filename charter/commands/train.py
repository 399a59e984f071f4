"""`charter train sft|dpo [CONFIG] [key=value ...]`."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    from charter.commands.run import split_args
    from charter.locks import hold_folder

    train = typer.Typer(help="Fine-tune a model: SFT (assistant-only loss) or DPO, full or LoRA.",
                        no_args_is_help=True)

    @train.command("sft")
    def sft(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (SFTConfig fields) and/or key=value overrides, e.g. model=org/name lr=1e-4")):
        """Supervised fine-tuning on chat JSONL ({"messages": [...]}, Alpaca, prompt/completion)."""
        from charter.config import load_config
        from charter.data.sources import check_input
        from charter.train.data import SFT_DATA
        from charter.train.sft import SFTConfig, train_sft

        cfg = load_config(SFTConfig, *split_args(args or []))
        check_input(cfg.data, SFT_DATA)  # a mistyped path or dataset name fails before the model loads
        with hold_folder(cfg.output_dir):
            out = train_sft(cfg)
        typer.echo(str(out))

    @train.command("dpo")
    def dpo(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (DPOConfig fields) and/or key=value overrides, e.g. model=org/name beta=0.1")):
        """DPO on preference pairs ({"prompt", "chosen", "rejected"[, "label_prob"]} JSONL)."""
        from charter.config import load_config
        from charter.data.sources import check_input
        from charter.train.data import DPO_DATA
        from charter.train.dpo import DPOConfig, train_dpo

        cfg = load_config(DPOConfig, *split_args(args or []))
        check_input(cfg.data, DPO_DATA)  # a mistyped path or dataset name fails before the model loads
        with hold_folder(cfg.output_dir):
            out = train_dpo(cfg)
        typer.echo(str(out))

    app.add_typer(train, name="train")
