"""`charter train sft|dpo CONFIG [key=value ...]`."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    train = typer.Typer(help="Fine-tune a model: SFT (assistant-only loss) or DPO, full or LoRA.",
                        no_args_is_help=True)

    @train.command("sft")
    def sft(config: str = typer.Argument(..., help="YAML config (SFTConfig fields)"),
            overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. lr=1e-4 lora.r=16")):
        """Supervised fine-tuning on chat JSONL ({"messages": [...]}, Alpaca, prompt/completion)."""
        from charter.config import load_config
        from charter.train.sft import SFTConfig, train_sft

        out = train_sft(load_config(SFTConfig, config, overrides or []))
        typer.echo(str(out))

    @train.command("dpo")
    def dpo(config: str = typer.Argument(..., help="YAML config (DPOConfig fields)"),
            overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. beta=0.1")):
        """DPO on preference pairs ({"prompt", "chosen", "rejected"[, "label_prob"]} JSONL)."""
        from charter.config import load_config
        from charter.train.dpo import DPOConfig, train_dpo

        out = train_dpo(load_config(DPOConfig, config, overrides or []))
        typer.echo(str(out))

    app.add_typer(train, name="train")
