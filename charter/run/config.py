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

from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator

from charter.backends import BackendConfig
from charter.config import Config, ConfigError, deep_update, load_config, read_yaml
from charter.stages.distill import AnswerSettings, PairSettings, PromptSettings
from charter.stages.introspect import FilterSettings, InteractionConfig, ReflectionConfig
from charter.toy.model import ToyBuildConfig
from charter.train.dpo import DPOConfig
from charter.train.grpo import GRPOConfig
from charter.train.ppo import PPOConfig
from charter.train.rewards import RewardConfig
from charter.train.rm import RMConfig
from charter.train.sdft import SDFTConfig
from charter.train.sft import SFTConfig
from charter.train.tracking import ReportTo

PRESET_DIR = Path(__file__).parent.parent / "configs"
TOY_MODEL = "toy"  # student.model value meaning "the toy world's base model, built and cached locally"


RUN_FILLED = ("model", "data", "output_dir", "seed", "chat", "chat_template", "report_to",
              "assistant_name", "eval_data")  # a stage's arguments (assistant_name: the run's, for the
# on-policy methods; eval_data: the pairs the rm stage holds out)


PER_PERSONA = "<each persona's, filled by charter run>"


def hyperparameters(cls: type[Config], *per_persona: str) -> type[Config]:
    """A trainer config without the fields the run fills in (paths, seed, the student's chat
    format): they are fixed to None and left out of dumps, while `cls`'s validators still run.
    `per_persona` fields (a constitution) are fixed to a placeholder, so checks that need them set pass."""
    unset = {name: (None, Field(None, exclude=True)) for name in RUN_FILLED if name in cls.model_fields}
    unset.update({name: (Literal[PER_PERSONA], Field(PER_PERSONA, exclude=True)) for name in per_persona})
    return create_model(cls.__name__.replace("Config", "Settings"), __base__=cls, **unset)


DPOSettings = hyperparameters(DPOConfig)
SFTSettings = hyperparameters(SFTConfig)
# the on-policy methods read each persona's constitution and the run's assistant name
GRPOSettings = hyperparameters(GRPOConfig, "constitution")
SDFTSettings = hyperparameters(SDFTConfig, "constitution")
PPOSettings = hyperparameters(PPOConfig, "constitution")
RMSettings = hyperparameters(RMConfig)

Method = Literal["dpo", "orpo", "simpo", "sdft", "grpo", "ppo"]
PAIR_METHODS = ("dpo", "orpo", "simpo")  # train on the teacher/student pairs
ON_POLICY = ("sdft", "grpo", "ppo")  # train from the prompts (ppo: unless it trains its reward model)


def trains_reward_model(method: str, reward: RewardConfig) -> bool:
    """The classic RLHF chain: method ppo with `reward.kind: rm` and no `reward.model` trains a
    reward model on the run's pairs (the rm stage), so the teacher, student and pairs stages stay."""
    return method == "ppo" and reward.kind == "rm" and reward.model is None


def makes_pairs(method: str, train_rm: bool) -> bool:
    """Whether the run has teacher, student and pairs stages (`train_rm`: `trains_reward_model`)."""
    return method not in ON_POLICY or train_rm


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def method_loss(dpo: Config, method: str) -> Config:
    """`dpo` with loss_type set to `method` for orpo and simpo; unchanged otherwise."""
    if method not in ("orpo", "simpo"):
        return dpo
    if dpo.loss_type not in ("sigmoid", method):
        raise ValueError(f"dpo.loss_type {dpo.loss_type!r} conflicts with method {method}")
    try:
        return DPOSettings(**{**dpo.model_dump(), "loss_type": method})
    except ValidationError as e:
        raise ValueError(f"the dpo section with loss_type {method}: {e.errors()[0]['msg']}") from None


class RMSection(RMSettings):
    """The reward model `method: ppo` trains on each persona's pairs when `ppo.reward.kind` is rm with
    no `reward.model` (`charter.train.rm`'s hyperparameters), and the share of pairs held out."""

    heldout: float = Field(0.1, ge=0, lt=1)  # share of each persona's pair prompts held out: the accuracy


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


class StudySection(Config):
    """Several runs of one config, compared (`charter run --methods ... --seeds ...` override these):
    each method x each seed is an ordinary run, in RUN/<method>/seed-N when `methods` is set, in
    RUN/seed-N with `seeds` alone; then the figures across them (`charter.run.study`, `charter.run.seeds`)."""

    methods: list[Method] = []  # empty: the config's `method` alone
    seeds: list[int] = []  # empty: the config's `seed` alone

    @field_validator("methods", "seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"expected distinct values, got {values}")
        return values


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
    study: StudySection = StudySection()  # methods x seeds, compared (`charter.run.study`)

    prompts: PromptSettings = PromptSettings()
    distill: AnswerSettings = AnswerSettings()  # teacher/student sampling, K samples per prompt
    pairs: PairSettings = PairSettings()
    dpo: DPOSettings = DPOSettings()  # method dpo, orpo, simpo (loss_type = the method)
    sdft: SDFTSettings = SDFTSettings()  # method sdft
    grpo: GRPOSettings = GRPOSettings()  # method grpo
    ppo: PPOSettings = PPOSettings()  # method ppo
    rm: RMSection = RMSection()  # method ppo with ppo.reward.kind rm and no reward.model: its reward model
    reflection: ReflectionConfig = ReflectionConfig()
    interaction: InteractionConfig = InteractionConfig()
    filter: FilterSettings = FilterSettings()
    sft: SFTSettings = SFTSettings()
    merge: MergeSection = MergeSection()
    eval: EvalSection = EvalSection()
    # the first training stage (still the `dpo` stage and folder); last, so its check sees the sections
    method: Method = "dpo"

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str, info: ValidationInfo) -> str:
        judge, ppo = info.data.get("judge"), info.data.get("ppo")
        pairs = ppo is None or makes_pairs(method, trains_reward_model(method, ppo.reward))
        if not pairs and judge is not None and judge.kind == "classifier":
            hint = " (or ppo.reward.kind rm with no reward.model, which makes them)" if method == "ppo" else ""
            raise ValueError(f"judge.kind classifier learns from teacher and student answers, which {method} "
                             f"does not make; use judge.kind toy or llm{hint}")
        if "dpo" in info.data:
            method_loss(info.data["dpo"], method)  # orpo/simpo: the dpo section must accept the loss
        return method

    @property
    def trains_reward_model(self) -> bool:
        return trains_reward_model(self.method, self.ppo.reward)

    def pair_settings(self) -> Config:
        """The dpo section the pair methods train with (orpo and simpo as its loss_type)."""
        return method_loss(self.dpo, self.method)

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


def preset_data(name: str, extended_by: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's YAML, on top of the preset its `extends:` names (if any), so a variant states only
    what it changes (`toy-methods` extends `toy`)."""
    file = PRESET_DIR / f"{name}.yaml"
    if not file.exists():
        where = f"{PRESET_DIR / extended_by[-1]}.yaml: extends" if extended_by else "--preset"
        raise ConfigError(f"{where} {name!r}: unknown preset (presets: {', '.join(presets())})")
    data = read_yaml(file)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if parent in (*extended_by, name):
        raise ConfigError(f"{file}: extends {parent!r}, which extends it again ({' -> '.join((*extended_by, name, parent))})")
    base = preset_data(str(parent), (*extended_by, name))
    deep_update(base, data)
    return base


def load_run_config(path: str | Path | None = None, preset: str | None = None,
                    overrides: list[str] | None = None) -> RunConfig:
    """preset YAML (after the presets it extends) <- user YAML <- key=value overrides. With neither
    file nor preset: the toy preset."""
    if path is None and preset is None:
        preset = "toy"
    base = preset_data(preset) if preset is not None else {}
    return load_config(RunConfig, path, overrides, base=base)
