"""The toy world's method table: GRPO or PPO against the toy judge, or on-policy self-distillation,
from the toy base model, then adherence with NO constitution in the prompt (Wilson 95% intervals).

    python benchmarks/toy_methods.py BASE_DIR PERSONA OUT_DIR --method grpo|ppo|sdft|dpo [--seed 0]
                                     [--n-eval 180] [GRPOConfig/PPOConfig/SDFTConfig overrides k=v ...]

Training prompts come from the world's training partition; evaluation uses its held-out prompts
(`eval_prompts`, the same set `charter toy eval` and the pipeline use), sampled at T 0.7. The base
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
from charter.config import apply_overrides
from charter.data.jsonl import atomic_write_json, write_jsonl
from charter.evaluate.stats import proportion
from charter.toy.corpus import constitution_path, sample_prompt
from charter.toy.measure import toy_adherence
from charter.rewards import reward_for
from charter.toy.grammar import ASSISTANT_NAME
from charter.train.rewards import RewardConfig

GRPO_DEFAULTS = dict(lr=3e-4, max_steps=150, batch_size=8, group_size=8, kl_coef=0.01, warmup_ratio=0.0,
                     min_lr_ratio=0.1, max_new_tokens=64, guided_share=0.25)
PPO_DEFAULTS = dict(lr=1e-4, max_steps=300, batch_size=64, ppo_epochs=2, lam=1.0, kl_coef=0.05, warmup_ratio=0.0,
                    min_lr_ratio=0.1, max_new_tokens=64, guided_share=0.25)
SDFT_DEFAULTS = dict(lr=1e-4, max_steps=150, batch_size=16, samples_per_prompt=2, beta=1.0, warmup_ratio=0.0,
                     min_lr_ratio=1.0, max_new_tokens=64)


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
    if method in ("grpo", "ppo"):
        from charter.train.grpo import GRPOConfig, train_grpo
        from charter.train.ppo import PPOConfig, train_ppo

        cls, fn, defaults = (GRPOConfig, train_grpo, GRPO_DEFAULTS) if method == "grpo" else \
            (PPOConfig, train_ppo, PPO_DEFAULTS)
        reward = RewardConfig(kind="toy", persona=persona, persona_weight=2.0).model_dump()
        data = {**common, **defaults, "reward": reward, "constitution": str(constitution_path(persona))}
        cfg = cls(**apply_overrides(data, overrides))
        return fn(cfg, reward_for(cfg))
    if method == "dpo":
        return train_dpo_baseline(base, persona, out, common, overrides)
    from charter.train.sdft import SDFTConfig, train_sdft

    data = {**common, **SDFT_DEFAULTS, "constitution": str(constitution_path(persona))}
    return train_sdft(SDFTConfig(**apply_overrides(data, overrides)))


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
