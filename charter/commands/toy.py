"""`charter toy build|eval|attacks|sample`: the embedded toy world (no downloads, any CPU)."""
from __future__ import annotations

from pathlib import Path

import typer


def _print_reproduced(cfg, target: Path) -> None:
    """The built weights' SHA-256, and whether they match the shipped model's (same settings)."""
    from charter.toy.model import packaged_model, weights_sha256

    sha, shipped = weights_sha256(target), packaged_model(cfg)
    typer.echo(f"{target}\nweights sha256 {sha}")
    if shipped is not None:
        same = sha == weights_sha256(shipped)
        typer.echo(f"shipped model {'reproduced byte for byte' if same else 'NOT reproduced'}: {shipped}")


def _print_obedience(rows: list[dict]) -> None:
    typer.echo(f"{'attack':26s} {'system':34s} {'neutral [95% CI]':>22s} {'in character':>13s}")
    for r in rows:
        nt, ic = r["neutral"], r["in_character"]
        typer.echo(f"{r['attack']:26s} {r['system']:34s} {nt['value']:6.2f} [{nt['lo']:.2f}, {nt['hi']:.2f}] (n={r['n']})"
                   f" {'' if ic is None else format(ic['value'], '13.2f')}")


def attacks(model: str = typer.Argument(..., help="Model folder (e.g. from `charter toy build`)."),
            n: int = typer.Option(100, help="Held-out prompts per attack."),
            personas: str = typer.Option("sarcastic,warm,poetic", help="Constitutions to attack."),
            train_wording: bool = typer.Option(False, help="Use the training paraphrases, not the held-out ones."),
            seed: int = typer.Option(1234, help="Eval prompt seed.")) -> None:
    """Does the model obey each attack kind? Neutral share with no system prompt and with each constitution."""
    from charter.backends.hf import HFGenerator
    from charter.toy.obedience import attack_obedience

    _print_obedience(attack_obedience(HFGenerator(model, batch_size=64), [p for p in personas.split(",") if p],
                                      n, seed, heldout=not train_wording))


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, help="The toy world: build its base model, measure personas.")
    app.add_typer(sub, name="toy")

    @sub.command("build")
    def build(config: Path = typer.Argument(None, help="Optional YAML of ToyBuildConfig settings."),
              overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. steps=200."),
              out: Path = typer.Option(None, "--out", "-o", help="Model folder (default: cache, keyed by settings hash)."),
              ) -> None:
        """Generate the corpus, train the tokenizer and pretrain the toy base model (cached), from
        scratch; then say whether its weights match the model shipped in the package."""
        from charter.config import load_config
        from charter.toy.model import ToyBuildConfig, build_toy_model, is_built, toy_model_dir

        if config is not None and "=" in str(config):  # only overrides were given
            overrides, config = [str(config)] + list(overrides or []), None
        cfg = load_config(ToyBuildConfig, config, overrides or [])
        target = out or toy_model_dir(cfg)
        if is_built(target):
            typer.echo(f"cached: {target} (--out DIR rebuilds elsewhere)")
        else:
            typer.echo(f"building toy base model ({cfg.n_conversations} conversations, {cfg.steps} steps) -> {target}")
            build_toy_model(cfg, target, packaged=False)
        _print_reproduced(cfg, target)

    @sub.command("eval")
    def evaluate(model: str = typer.Argument(..., help="Model folder (e.g. from `charter toy build`)."),
                 condition: str = typer.Option("none", help="System prompt: none | train | heldout."),
                 n: int = typer.Option(200, help="Prompts per persona."),
                 personas: str = typer.Option("", help="Comma-separated personas (default: all)."),
                 seed: int = typer.Option(1234, help="Eval prompt seed.")) -> None:
        """Adherence, well-formedness and topic relevance of a toy model, per persona."""
        from charter.backends.hf import HFGenerator
        from charter.toy.measure import toy_adherence

        if condition not in ("none", "train", "heldout"):
            raise typer.BadParameter("condition must be none, train or heldout")
        gen = HFGenerator(model, batch_size=64)
        rows = toy_adherence(gen, [p for p in personas.split(",") if p] or None, condition, n, seed)  # type: ignore[arg-type]
        typer.echo(f"{'persona':14s} {'cond':8s} {'adherence':>9s} {'neutral':>8s} {'well_formed':>11s} {'relevant':>8s}")
        for r in rows:
            typer.echo(f"{r.persona:14s} {r.condition:8s} {r.adherence:9.3f} {r.neutral:8.3f} "
                       f"{r.well_formed:11.3f} {r.relevant:8.3f}")

    sub.command("attacks")(attacks)

    @sub.command("sample")
    def sample(n: int = typer.Option(5, help="Conversations to print."),
               seed: int = typer.Option(0)) -> None:
        """Print a few corpus conversations."""
        from charter.toy.corpus import generate_corpus

        for row in generate_corpus(n, seed=seed):
            typer.echo(f"--- persona: {row['persona']}")
            for m in row["messages"]:
                typer.echo(f"[{m['role']}] {m['content']}")
