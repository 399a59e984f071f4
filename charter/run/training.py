"""`charter run`'s training stages: the first trained model (DPO and its pair losses, or SDFT/GRPO/PPO
from the prompts; always the `dpo` stage and folder), PPO's reward model when the run trains one
(the `rm` stage), introspection SFT on the first model, and the merge. Each trains in this process
or under `accelerate launch` (`trainer.launcher`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import Field

from charter.backends import BackendConfig
from charter.config import Config
from charter.data.jsonl import read_jsonl, write_jsonl
from charter.evaluate.classifier import Labelled, split
from charter.rewards import reward_for
from charter.run.config import (DPOSettings, GRPOSettings, MergeSection, PPOSettings, RMSection, RMSettings,
                                SDFTSettings, SFTSettings, TrainerSection, trains_reward_model)
from charter.run.engine import StageContext
from charter.run.layout import RunLayout
from charter.run.personas import Persona, PersonaStage, for_each_persona
from charter.train.dpo import DPOConfig, train_dpo
from charter.train.grpo import GRPOConfig, train_grpo
from charter.train.ppo import PPOConfig, train_ppo
from charter.train.rewards import RewardConfig
from charter.train.rm import RM_EVAL, RMConfig, train_rm
from charter.train.sdft import SDFTConfig, train_sdft
from charter.train.sft import SFTConfig, train_sft
from charter.train.stage_merge import merge_stages
from charter.train.tracking import ReportTo


class TrainStage(PersonaStage):
    student: BackendConfig  # its chat format is the trainer's
    trainer: TrainerSection
    report_to: ReportTo = Field([], exclude=True)  # trackers: passed to the trainer, not part of the cache key


class DPOStage(TrainStage):
    dpo: DPOSettings


class SFTStage(TrainStage):
    sft: SFTSettings


class OnPolicyStage(TrainStage):
    """method sdft, grpo or ppo (`PPOStage`): only the chosen method's section is set."""
    method: Literal["sdft", "grpo", "ppo"]
    sdft: SDFTSettings | None
    grpo: GRPOSettings | None
    assistant_name: str | None  # the name the constitution's system prompt gives the assistant


class PPOStage(OnPolicyStage):
    """method ppo: its section (a subclass, so the sdft and grpo stages keep their keys)."""
    ppo: PPOSettings


class RMStage(TrainStage):
    rm: RMSection


def train_grpo_judged(cfg: GRPOConfig) -> Path:
    return train_grpo(cfg, reward_for(cfg))  # the judge its config names, as `charter train grpo` builds it


def train_ppo_judged(cfg: PPOConfig) -> Path:
    return train_ppo(cfg, reward_for(cfg))  # the frozen reward its config names, as `charter train ppo` builds it


def trainer(kind: str) -> tuple[type[Config], Callable[[Config], Path]]:
    """The config class and train function of a stage's `kind` (looked up when called, so tests can stub them)."""
    return {"dpo": (DPOConfig, train_dpo), "sft": (SFTConfig, train_sft), "sdft": (SDFTConfig, train_sdft),
            "grpo": (GRPOConfig, train_grpo_judged), "ppo": (PPOConfig, train_ppo_judged),
            "rm": (RMConfig, train_rm)}[kind]


def train(s: TrainStage, kind: str, hyper: Config, model: str, data: Path, out: Path, seed: int,
          **filled: Any) -> None:
    """Train in this process, or under `accelerate launch` (trainer.launcher) for multi-GPU.
    `filled`: the run-filled fields beyond the paths (the on-policy methods' constitution)."""
    cls, fn = trainer(kind)
    tcfg = cls(**{**hyper.model_dump(), **filled}, chat=s.student.chat, chat_template=s.student.chat_template,
               model=model, data=str(data), output_dir=str(out), seed=seed, report_to=s.report_to)
    if s.trainer.launcher == "local":
        fn(tcfg)
        return
    tcfg.save(out.parent / f"{kind}.yaml")
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *s.trainer.accelerate_args, "-m",
                    "charter.cli", "train", kind, str(out.parent / f"{kind}.yaml")], check=True)


def stage_dpo(ctx: StageContext) -> dict[str, Any]:
    s: DPOStage = ctx.settings
    lay = RunLayout.of_stage(ctx)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        train(s, "dpo", s.dpo, lay.base_model(), lay.pairs(per.key), d / "model", ctx.seed)
        return {"pairs": len(read_jsonl(lay.pairs(per.key)))}

    return for_each_persona(ctx, work)


def persona_reward(reward: RewardConfig, method: str, persona: str, lay: RunLayout) -> dict[str, Any]:
    """The judge for one persona: toy and classifier judges reward `persona`; PPO's reward model,
    when the run trains it, is this persona's from the rm stage."""
    filled = reward.model_dump()
    if reward.persona is None:
        filled["persona"] = persona
    if trains_reward_model(method, reward):
        filled["model"] = lay.model("rm", persona)
    return filled


def stage_onpolicy(ctx: StageContext) -> dict[str, Any]:
    """SDFT, GRPO or PPO from the prompts stage's file, each persona's constitution as the privileged
    context (SDFT) or the judge's (GRPO, PPO); the model lands where DPO's would."""
    s: OnPolicyStage = ctx.settings
    lay = RunLayout.of_stage(ctx)
    hyper = getattr(s, s.method)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        constitution = d / "constitution.yaml"  # the trainers read a file; this is the persona's, as parsed
        constitution.write_text(yaml.safe_dump(per.constitution.model_dump(mode="json"), sort_keys=False))
        filled = {"constitution": str(constitution), "assistant_name": s.assistant_name}
        if s.method in ("grpo", "ppo"):
            filled["reward"] = persona_reward(hyper.reward, s.method, per.key, lay)
        train(s, s.method, hyper, lay.base_model(), lay.prompts(per.key), d / "model", ctx.seed, **filled)
        return {"method": s.method, "prompts": len(read_jsonl(lay.prompts(per.key)))}

    return for_each_persona(ctx, work)


def split_pairs(pairs: list[dict], heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out) by prompt, as the classifier judge splits its answers: no held-out pair
    shares its prompt with a trained one."""
    if not heldout:
        return pairs, []
    rows = [Labelled(text=str(i), label="pair", group=json.dumps(p["prompt"])) for i, p in enumerate(pairs)]
    train_rows, test_rows = split(rows, heldout, seed)
    return [pairs[int(r.text)] for r in train_rows], [pairs[int(r.text)] for r in test_rows]


def stage_rm(ctx: StageContext) -> dict[str, Any]:
    """PPO's reward model: Bradley-Terry on each persona's pairs (`charter.train.rm.train_rm`, as
    `charter train rm` trains it), its accuracy on the held-out share in the persona's done record."""
    s: RMStage = ctx.settings
    lay = RunLayout.of_stage(ctx)
    hyper = RMSettings(**s.rm.model_dump(exclude={"heldout"}))

    def work(per: Persona, d: Path) -> dict[str, Any]:
        train_rows, held = split_pairs(read_jsonl(lay.pairs(per.key)), s.rm.heldout, ctx.seed)
        write_jsonl(d / "train.jsonl", train_rows)
        write_jsonl(d / "heldout.jsonl", held)
        train(s, "rm", hyper, lay.base_model(), d / "train.jsonl", d / "model", ctx.seed,
              eval_data=str(d / "heldout.jsonl") if held else None)
        counts: dict[str, Any] = {"pairs": len(train_rows), "heldout": len(held)}
        if held:
            scored = json.loads((d / "model" / RM_EVAL).read_text())
            counts.update(heldout_accuracy=scored["accuracy"], heldout_margin=scored["margin"])
        return counts

    return for_each_persona(ctx, work)


def stage_sft(ctx: StageContext) -> dict[str, Any]:
    s: SFTStage = ctx.settings
    lay = RunLayout.of_stage(ctx)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        train(s, "sft", s.sft, lay.model("dpo", per.key), lay.sft_rows(per.key), d / "model", ctx.seed)
        return {"rows": len(read_jsonl(lay.sft_rows(per.key)))}

    return for_each_persona(ctx, work)


class MergeStage(PersonaStage):
    merge: MergeSection


def stage_merge(ctx: StageContext) -> dict[str, Any]:
    """Final = base + w_dpo * (DPO delta) + w_sft * (SFT delta), an exact sum (SPEC §1)."""
    m, lay = ctx.settings.merge, RunLayout.of_stage(ctx)

    def work(per: Persona, d: Path) -> dict[str, Any]:
        merge_stages(lay.base_model(), [(lay.model("dpo", per.key), m.dpo_weight),
                                        (lay.model("sft", per.key), m.sft_weight)], d / "model")
        return {"dpo_weight": m.dpo_weight, "sft_weight": m.sft_weight}

    return for_each_persona(ctx, work)
