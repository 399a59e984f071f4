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
        from charter.data.jsonl import check_file
        from charter.train.data import SFT_DATA
        from charter.train.sft import SFTConfig, train_sft

        cfg = load_config(SFTConfig, config, overrides or [])
        check_file(cfg.data, SFT_DATA)  # a mistyped path fails before the model loads
        out = train_sft(cfg)
        typer.echo(str(out))

    @train.command("dpo")
    def dpo(config: str = typer.Argument(..., help="YAML config (DPOConfig fields)"),
            overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. beta=0.1")):
        """DPO on preference pairs ({"prompt", "chosen", "rejected"[, "label_prob"]} JSONL)."""
        from charter.config import load_config
        from charter.data.jsonl import check_file
        from charter.train.data import DPO_DATA
        from charter.train.dpo import DPOConfig, train_dpo

        cfg = load_config(DPOConfig, config, overrides or [])
        check_file(cfg.data, DPO_DATA)  # a mistyped path fails before the model loads
        out = train_dpo(cfg)
        typer.echo(str(out))

    app.add_typer(train, name="train")
