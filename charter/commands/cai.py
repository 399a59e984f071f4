"""`charter cai revise|label|infer`: Constitutional AI data, AI-feedback labels, constitutional inference."""
from __future__ import annotations

import json
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    cai = typer.Typer(no_args_is_help=True, help="Constitutional AI: critique/revision data, AI-feedback labels, "
                                                 "constitutional inference.")

    @cai.command()
    def revise(config: str = typer.Argument(..., help="YAML config (ReviseConfig fields)"),
               overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. rounds=2")) -> None:
        """SL-CAI: response -> critique -> revision chains; writes chains, sft and pairs JSONL."""
        from charter.cai.revise import ReviseConfig, run_revise
        from charter.config import load_config
        from charter.locks import hold_folder

        cfg = load_config(ReviseConfig, config, overrides or [])
        with hold_folder(cfg.out_dir):
            summary = run_revise(cfg)
        typer.echo(json.dumps(summary, indent=2))
        typer.echo(f"out: {cfg.out_dir}")

    @cai.command()
    def label(config: str = typer.Argument(..., help="YAML config (LabelConfig fields)"),
              overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. ensemble=3")) -> None:
        """AI feedback: soft preference labels (label_prob) from a labeler's A/B option probabilities."""
        from charter.cai.feedback import LabelConfig, run_label
        from charter.config import load_config
        from charter.locks import hold_folder

        cfg = load_config(LabelConfig, config, overrides or [])
        with hold_folder(cfg.out_dir):
            summary = run_label(cfg)
        typer.echo(json.dumps(summary, indent=2))
        typer.echo(f"out: {cfg.out_dir}")

    @cai.command()
    def infer(model: str = typer.Argument(..., help="model folder or hub id (hf backend)"),
              prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
              principles: Optional[str] = typer.Option(None, "--principles", help="principles file (default set)"),
              rounds: int = typer.Option(1, help="critique/revision rounds"),
              adapter: Optional[str] = typer.Option(None, help="LoRA adapter folder"),
              max_new_tokens: int = typer.Option(128), temperature: float = typer.Option(0.7),
              seed: int = typer.Option(0),
              fewshot: int = typer.Option(1, help="few-shot transcripts from the principles file (0 for short contexts)"),
              show_steps: bool = typer.Option(False, "--show-steps", help="print draft, critiques and revisions")
              ) -> None:
        """Constitutional inference: draft -> critique -> revise with the same model."""
        from charter.backends import BackendConfig, SamplingParams, make_generator
        from charter.cai.inference import constitutional_reply
        from charter.cai.principles import load_principles

        principle_set = load_principles(principles)  # a bad file fails before the model loads
        gen = make_generator(BackendConfig(kind="hf", model=model, adapter=adapter))
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        reply = constitutional_reply(gen, [{"role": "user", "content": prompt}], principle_set, show_steps,
                                     rounds=rounds, params=params, seed=seed, fewshot=fewshot,
                                     on_step=lambda label, text: typer.echo(f"[{label}]\n{text}\n"))
        typer.echo(reply.final if not show_steps else f"[final]\n{reply.final}")

    app.add_typer(cai, name="cai")
