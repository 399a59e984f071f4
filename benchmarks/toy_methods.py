"""The toy world's method table: GRPO or PPO against the toy judge, or on-policy self-distillation,
from the toy base model, then adherence with NO constitution in the prompt (Wilson 95% intervals).

    python benchmarks/toy_methods.py BASE_DIR PERSONA OUT_DIR --method grpo|ppo|sdft|dpo [--seed 0]
                                     [--n-eval 180] [GRPOConfig/PPOConfig/SDFTConfig overrides k=v ...]

Training prompts come from the world's training partition; evaluation uses its held-out prompts
(`eval_prompts`, the same set `charter toy eval` and the pipeline use), sampled at T 0.7. GRPO, PPO
and SDFT train with the toy preset's `grpo:` / `ppo:` / `sdft:` sections (charter/configs/toy.yaml),
the settings `charter run --preset toy method=grpo|ppo|sdft` uses; overrides change them for one run. The base
model is measured the same way once (OUT_DIR/base_eval.json), for the well-formedness ratio.
`--method dpo` is the DPO row from the same base and prompts (`benchmarks/toy_dpo.py`'s recipe).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from charter.backends.hf import HFGenerator
from charter.config import apply_overrides, read_yaml
from charter.data.jsonl import atomic_write_json, write_jsonl
from charter.evaluate.stats import proportion
from charter.toy.corpus import constitution_path, sample_prompt
from charter.toy.measure import toy_adherence
from charter.rewards import reward_for
from charter.run.config import PRESET_DIR
from charter.toy.grammar import ASSISTANT_NAME
from charter.train.grpo import GRPOConfig, train_grpo
from charter.train.ppo import PPOConfig, train_ppo
from charter.train.sdft import SDFTConfig, train_sdft

TRAINERS = {"grpo": (GRPOConfig, train_grpo), "ppo": (PPOConfig, train_ppo), "sdft": (SDFTConfig, train_sdft)}
JUDGED = ("grpo", "ppo")  # trained against the toy judge


def preset_section(method: str) -> dict:
    """The toy preset's settings for `method` (its `grpo:`, `ppo:` or `sdft:` section): one source for
    `charter run --preset toy method=...` and this table."""
    return read_yaml(PRESET_DIR / "toy.yaml")[method]


def measure(model_dir: str, persona: str, n_eval: int) -> dict:
    m = toy_adherence(HFGenerator(model_dir, batch_size=100, device="cpu"), [persona], "none", n=n_eval)[0]
    out = {"n": m.n}
    for key in ("adherence", "well_formed", "relevant"):
        out[key] = proportion(round(getattr(m, key) * m.n), m.n).to_dict()
    return out


def train(method: str, base: str, persona: str, out: Path, seed: int, overrides: list[str]) -> Path:
    prompts = out / "prompts.jsonl"
    rng = random.Random(seed)
    write_jsonl(prompts, [{"prompt": sample_prompt(rng, "train")[0]} for _ in range(2048)])
    common = dict(model=base, data=str(prompts), output_dir=str(out / method), seed=seed, resume=False, cpu_threads=1)
    if method != "dpo":
        common["assistant_name"] = ASSISTANT_NAME  # the name the toy corpus's system prompts use
    if method == "dpo":
        return train_dpo_baseline(base, persona, out, common, overrides)
    cfg = method_config(method, persona, common, overrides)
    fn = TRAINERS[method][1]
    return fn(cfg, reward_for(cfg)) if method in JUDGED else fn(cfg)


def method_config(method: str, persona: str, common: dict, overrides: list[str]) -> GRPOConfig | PPOConfig | SDFTConfig:
    """The toy preset's section for `method`, with this run's paths and seed, the persona's
    constitution (and, for GRPO and PPO, the persona their judge rewards), then `overrides`."""
    settings = preset_section(method)
    data = {**common, **settings, "constitution": str(constitution_path(persona))}
    if method in JUDGED:
        data["reward"] = {**settings.get("reward", {}), "persona": persona}
    return TRAINERS[method][0](**apply_overrides(data, overrides))


def train_dpo_baseline(base: str, persona: str, out: Path, common: dict, overrides: list[str]) -> Path:
    """The DPO row, as `benchmarks/toy_dpo.py` builds it (chosen = the base with the constitution,
    rejected = without; its recommended settings), on 300 training-partition prompts."""
    from toy_dpo import PAIR_SAMPLING  # this script's folder is on sys.path
    from charter.toy.measure import sample_replies, system_prompt_for
    from charter.train.dpo import DPOConfig, train_dpo

    prompts = [json.loads(line)["prompt"] for line in (out / "prompts.jsonl").read_text().splitlines()[:300]]
    gen = HFGenerator(base, batch_size=64, device="cpu")
    chosen = sample_replies(gen, prompts, system_prompt_for(persona, "train"), PAIR_SAMPLING)
    rejected = sample_replies(gen, prompts, None, PAIR_SAMPLING)
    write_jsonl(out / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r}
                                      for p, c, r in zip(prompts, chosen, rejected)])
    data = {**common, "data": str(out / "pairs.jsonl"), "beta": 0.1, "lr": 1e-4, "epochs": 3, "batch_size": 8,
            "nll_coef": 1.0, "warmup_ratio": 0.1}
    return train_dpo(DPOConfig(**apply_overrides(data, overrides)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base"), ap.add_argument("persona"), ap.add_argument("out", type=Path)
    ap.add_argument("--method", choices=["grpo", "ppo", "sdft", "dpo"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=180)  # the held-out partition has 185 prompts
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()  # overrides may follow the options
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    base_eval = a.out / "base_eval.json"
    if not base_eval.exists():
        atomic_write_json(base_eval, measure(a.base, a.persona, a.n_eval))
    t0 = time.time()
    trained = train(a.method, a.base, a.persona, a.out, a.seed, a.overrides)
    seconds = time.time() - t0
    result = {"method": a.method, "persona": a.persona, "seed": a.seed, "train_seconds": round(seconds, 1),
              "overrides": a.overrides, "base": json.loads(base_eval.read_text()),
              "trained": measure(str(trained), a.persona, a.n_eval)}
    b, t = result["base"]["well_formed"]["value"], result["trained"]["well_formed"]["value"]
    result["well_formed_ratio"] = t / b if b else float("nan")
    atomic_write_json(a.out / f"{a.method}_seed{a.seed}.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
