"""`charter train sft|dpo|rm|grpo|sdft|ppo [CONFIG] [key=value ...]`."""
from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    train = typer.Typer(help="Fine-tune a model: SFT (assistant-only loss) or DPO, full or LoRA.",
                        no_args_is_help=True)

    @train.command("sft")
    def sft(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (SFTConfig fields) and/or key=value overrides, e.g. model=org/name lr=1e-4")):
        """Supervised fine-tuning on chat JSONL ({"messages": [...]}, Alpaca, prompt/completion)."""
        from charter.train.data import SFT_DATA
        from charter.train.sft import SFTConfig, train_sft

        _train_offline(args, SFTConfig, train_sft, SFT_DATA)

    @train.command("dpo")
    def dpo(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (DPOConfig fields) and/or key=value overrides, e.g. model=org/name beta=0.1")):
        """DPO on preference pairs ({"prompt", "chosen", "rejected"[, "label_prob"]} JSONL)."""
        from charter.train.data import DPO_DATA
        from charter.train.dpo import DPOConfig, train_dpo

        _train_offline(args, DPOConfig, train_dpo, DPO_DATA)

    _register_methods(train)
    app.add_typer(train, name="train")


def _train_offline(args, config_cls, train_fn, data_kind) -> None:
    """SFT and DPO: load the config, check the data before the model loads (a mistyped path or
    dataset name fails at once), train while holding the output folder, print the folder."""
    from charter.commands.run import split_args
    from charter.config import load_config
    from charter.data.sources import check_input
    from charter.locks import hold_folder

    cfg = load_config(config_cls, *split_args(args or []))
    check_input(cfg.data, data_kind)
    with hold_folder(cfg.output_dir):
        out = train_fn(cfg)
    typer.echo(str(out))


def _register_methods(train: typer.Typer) -> None:
    """The reward model and the on-policy methods (issue 14)."""

    @train.command("rm")
    def rm(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (RMConfig fields) and/or key=value overrides, e.g. model=org/name center_coef=0.01")):
        """Reward model (Bradley-Terry) on preference pairs; saved for AutoModelForSequenceClassification."""
        _train(args, "charter.train.rm", "RMConfig", "train_rm")

    @train.command("grpo")
    def grpo(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (GRPOConfig fields) and/or key=value overrides, e.g. reward.kind=toy reward.persona=sarcastic")):
        """GRPO/RLOO against a constitution judge (toy scorer, LLM judge, reward model or classifier)."""
        _train(args, "charter.train.grpo", "GRPOConfig", "train_grpo")

    @train.command("sdft")
    def sdft(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (SDFTConfig fields) and/or key=value overrides, e.g. constitution=c.yaml beta=1")):
        """On-policy self-distillation with the constitution as the teacher's privileged context."""
        _train(args, "charter.train.sdft", "SDFTConfig", "train_sdft")

    @train.command("ppo")
    def ppo(args: Optional[List[str]] = typer.Argument(
            None, help="YAML config (PPOConfig fields) and/or key=value overrides, e.g. reward.model=rm_dir")):
        """PPO: policy, value model, frozen reward (a reward model or any judge), frozen reference."""
        _train(args, "charter.train.ppo", "PPOConfig", "train_ppo")


def _train(args, module: str, config: str, fn: str) -> None:
    """Load the config class, check the data file before any model loads, build the judge for
    GRPO/PPO, train while holding the output folder, print the folder."""
    import importlib

    from charter.commands.run import split_args
    from charter.config import load_config
    from charter.data.jsonl import check_file
    from charter.data.sources import check_input
    from charter.locks import hold_folder
    from charter.train.data import DPO_DATA
    from charter.train.rollout import PROMPTS_DATA, read_prompts

    mod = importlib.import_module(module)
    cfg = load_config(getattr(mod, config), *split_args(args or []))
    if fn == "train_rm":
        check_input(cfg.data, DPO_DATA)  # a mistyped path or dataset name fails before the model loads
    else:
        check_file(cfg.data, PROMPTS_DATA)
        read_prompts(cfg.data)  # a broken prompts file, too, before any judge or model loads
    extra = {}
    if fn in ("train_grpo", "train_ppo"):
        from charter.rewards import reward_for

        extra["reward"] = reward_for(cfg)
    with hold_folder(cfg.output_dir):
        out = getattr(mod, fn)(cfg, **extra)
    typer.echo(str(out))
