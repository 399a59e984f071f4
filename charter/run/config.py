"""The top-level `charter run` config, and its presets (`charter/configs/{toy,quick,paper}.yaml`).

One file says everything about a run: which constitutions, which model is trained, where the
teacher, student, judge and trainer live (each its own backend, so a large API teacher, a
local vLLM student and an accelerate trainer can be mixed), and one section per stage.

Every stage section is the typed settings class of the step it configures (`prompts` ->
`PromptSettings`, `dpo` -> the DPO trainer's hyperparameters, `filter` -> `FilterSettings`,
...). They hold hyperparameters only: the stages pass the paths (data, model, output folder)
as arguments. pydantic validates the whole file on load, so a typo such as `dpo.bta` fails
with its dotted key before any model loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model

from charter.backends import BackendConfig
from charter.config import Config, ConfigError, load_config, read_yaml
from charter.stages.distill import AnswerSettings, PairSettings, PromptSettings
from charter.stages.introspect import FilterSettings, InteractionConfig, ReflectionConfig
from charter.toy.model import ToyBuildConfig
from charter.train.dpo import DPOConfig
from charter.train.sft import SFTConfig
from charter.train.tracking import ReportTo

PRESET_DIR = Path(__file__).parent.parent / "configs"
TOY_MODEL = "toy"  # student.model value meaning "the toy world's base model, built and cached locally"


RUN_FILLED = ("model", "data", "output_dir", "seed", "chat", "chat_template", "report_to")  # a stage's arguments


def hyperparameters(cls: type[Config]) -> type[Config]:
    """A trainer config without the fields the run fills in (paths, seed, the student's chat
    format): they are fixed to None and left out of dumps, while `cls`'s validators still run."""
    unset = {name: (None, Field(None, exclude=True)) for name in RUN_FILLED}
    return create_model(cls.__name__.replace("Config", "Settings"), __base__=cls, **unset)


DPOSettings = hyperparameters(DPOConfig)
SFTSettings = hyperparameters(SFTConfig)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


class TrainerSection(Config):
    """Where training runs. `launcher: accelerate` re-launches the trainer under `accelerate launch`."""

    launcher: Literal["local", "accelerate"] = "local"
    accelerate_args: list[str] = []


class JudgeSection(Config):
    """Who labels replies: the toy world's deterministic scorer, an LLM judge on its own backend, or
    a classifier trained on the run's teacher (in character) and student (neutral) answers."""

    kind: Literal["toy", "llm", "classifier"] = "toy"
    backend: BackendConfig | None = None  # for kind=llm
    encoder: str | None = None  # kind=classifier: a sentence encoder's folder (frozen, linear head); None = tiny ModernBERT
    test_frac: float = Field(0.2, gt=0, lt=1)  # kind=classifier: share of training prompts whose answers test it
    max_new_tokens: int = Field(256, ge=1)  # kind=llm: room for brief reasoning before <answer>...</answer>


class MergeSection(Config):
    """Final model = base + dpo_weight * (DPO delta) + sft_weight * (SFT delta), summed exactly (SPEC §1)."""

    dpo_weight: float = 1.0
    sft_weight: float = 0.25


class SuiteSection(Config):
    """The full evaluation after the replies (`charter.evaluate.suite.run_suite`): robustness under
    each attack kind and multi-turn, coherence, revealed preferences, and the paired test under attack."""

    enabled: bool = True
    attack_prompts: int | None = Field(25, ge=1)  # prompts per attack kind and persona (a rotating slice); None = all
    n_pairs: int = Field(50, ge=1)  # revealed-preference draws per system
    bootstrap: int = Field(200, ge=1)  # Elo bootstrap resamples


class EvalSection(Config):
    """Held-out prompts, answered by every system with no constitution (plus base+constitution)."""

    n_prompts: int = 100
    prompts_file: str | None = None  # JSONL {"prompt": str} or text lines; default: the toy world's eval prompts
    systems: list[str] = ["base", "base+constitution", "dpo", "dpo+sft"]
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    batch_size: int = 64
    suite: SuiteSection = SuiteSection()


class ToySection(Config):
    """The toy base model build, when student.model=toy."""

    build: ToyBuildConfig = ToyBuildConfig()
    cache_dir: str | None = None
    prompts_per_persona: int = 300  # training prompts drawn from the world's user-prompt distribution


class RunConfig(Config):
    name: str = "run"
    seed: int = 0
    constitutions: list[str] = Field(min_length=1)  # library names, YAML/OCT paths, or "toy:<persona>"
    assistant_name: str | None = None  # the student's self-name in chosen answers; None = backend default

    student: BackendConfig  # the model being trained, and its rejected answers
    teacher: BackendConfig | None = None  # chosen answers; None = the student + constitution
    judge: JudgeSection = JudgeSection()
    trainer: TrainerSection = TrainerSection()
    report_to: ReportTo = []  # trackers for the DPO and SFT stages: tensorboard, wandb, trackio
    toy: ToySection = ToySection()

    prompts: PromptSettings = PromptSettings()
    distill: AnswerSettings = AnswerSettings()  # teacher/student sampling, K samples per prompt
    pairs: PairSettings = PairSettings()
    dpo: DPOSettings = DPOSettings()
    reflection: ReflectionConfig = ReflectionConfig()
    interaction: InteractionConfig = InteractionConfig()
    filter: FilterSettings = FilterSettings()
    sft: SFTSettings = SFTSettings()
    merge: MergeSection = MergeSection()
    eval: EvalSection = EvalSection()

    @property
    def is_toy(self) -> bool:
        return self.student.model == TOY_MODEL

    def teacher_backend(self) -> BackendConfig:
        return self.teacher or self.student

    def local_models(self) -> list[str]:
        """Every model (and adapter) the run loads itself: hf/vllm backends, not served or toy ones."""
        backends = [self.student, self.teacher_backend()]
        if self.judge.kind == "llm":
            backends.append(self.judge.backend or self.teacher_backend())
        names = [n for b in backends if b.kind != "openai" for n in (b.model, b.adapter) if n and n != TOY_MODEL]
        if self.judge.kind == "classifier" and self.judge.encoder:
            names.append(self.judge.encoder)
        return list(dict.fromkeys(names))


def load_run_config(path: str | Path | None = None, preset: str | None = None,
                    overrides: list[str] | None = None) -> RunConfig:
    """preset YAML <- user YAML <- key=value overrides. With neither file nor preset: the toy preset."""
    if path is None and preset is None:
        preset = "toy"
    base: dict[str, Any] = {}
    if preset is not None:
        file = PRESET_DIR / f"{preset}.yaml"
        if not file.exists():
            raise ConfigError(f"--preset {preset!r}: unknown preset (presets: {', '.join(presets())})")
        base = read_yaml(file)
    return load_config(RunConfig, path, overrides, base=base)
