"""Charter vs TRL 1.16 GRPO: rollout + update throughput on the same model, prompts, reward and settings.

    python benchmarks/grpo_vs_trl.py [--model DIR] [--steps 6] [--prompts 8] [--group 8]
                                     [--max-new-tokens 32] [--device cpu|cuda] [--only charter|trl]

The model is a random-init tiny Llama built here, or an HF folder (`--model`, e.g. the toy base).
Both trainers: `prompts` prompts x `group` replies per step, sampling at T 1, top_p 1, up to
`max_new_tokens`, one gradient step per rollout (TRL `num_iterations=1`, `steps_per_generation=1`),
k3 KL to a frozen reference with beta 0.04, AdamW at a constant lr, full fine-tuning, fp32. The
reward is the same Python function (length of the reply mod 7), so neither side waits on a judge.
Each trainer runs in its own subprocess; time counts from the end of step 1 to the end of the last
step (start-up and the first step's warm-up excluded). Prints replies/s and generated tokens/s for
each, then the final line `ratio tokens_per_s=X` (Charter / TRL). The token rate is the one
compared: the two trainers sample different replies, of different lengths, so a reply count alone
would favour whichever happened to stop sooner. Generated tokens are those each trainer actually
sampled and trained (through the EOS token when one was sampled): Charter's per-step
`completions/mean_length` times the replies, TRL's `completion_ids` as its reward function sees
them. On a shared CPU the wall clock mostly measures the neighbours: record figures from an
otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dpo_vs_trl import with_template  # this script's folder is on sys.path


def reward_fn(replies: list[str]) -> list[float]:
    return [float(len(r) % 7) for r in replies]


def build_model(out: Path) -> str:
    from charter.tiny import build_tiny_model_dir

    return str(build_tiny_model_dir(out, hidden_size=64, layers=2, heads=4))


def prompts(n: int) -> list[str]:
    from charter.tiny import tiny_corpus

    return tiny_corpus(n, seed=3)


def run_charter(a, model: str, work: Path) -> tuple[list[float], list[float]]:
    from charter.data.jsonl import write_jsonl
    from charter.train.grpo import GRPOConfig, build_grpo_task
    from charter.train.loop import run
    from charter.train.rewards import RewardConfig

    write_jsonl(work / "prompts.jsonl", [{"prompt": p} for p in prompts(a.prompts * a.steps)])
    stamps: list[float] = []
    tokens: list[float] = []  # reply tokens sampled per step
    cfg = GRPOConfig(model=model, data=str(work / "prompts.jsonl"), output_dir=str(work / "charter"),
                     batch_size=a.prompts, group_size=a.group, max_new_tokens=a.max_new_tokens, max_steps=a.steps,
                     kl_coef=0.04, lr=1e-5, warmup_ratio=0.0, min_lr_ratio=1.0, shuffle=False, resume=False,
                     reward=RewardConfig(truncated_reward=None))  # TRL does not guard either
    class SameReward:
        counts: dict = {}

        def rewards(self, ps, rs):
            return reward_fn(rs)

    def on_step(step: int, row: dict) -> None:
        stamps.append(time.time())
        tokens.append(row["completions/mean_length"] * a.prompts * a.group)

    run(cfg, build_grpo_task(cfg, SameReward()), "grpo", on_step=on_step)
    return stamps, tokens


def run_trl(a, model: str, work: Path) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    stamps: list[float] = []
    tokens: list[float] = []  # reply tokens sampled per step (one reward call per step)

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.time())

    def trl_reward(completions, completion_ids, **kw):
        tokens.append(float(sum(len(ids) for ids in completion_ids)))
        return reward_fn([c[0]["content"] if isinstance(c, list) else c for c in completions])

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts(a.prompts * a.steps)])
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=a.prompts * a.group,
                      num_generations=a.group, max_completion_length=a.max_new_tokens, max_steps=a.steps,
                      temperature=1.0, top_p=1.0, beta=0.04, num_iterations=1, steps_per_generation=1,
                      learning_rate=1e-5, lr_scheduler_type="constant", use_cpu=a.device == "cpu", bf16=False,
                      logging_steps=1, save_strategy="no", report_to="none", shuffle_dataset=False)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=trl_reward, args=args,
                          train_dataset=data, processing_class=AutoTokenizer.from_pretrained(model),
                          callbacks=[Stamp()])
    trainer.train()
    return stamps, tokens


def child(a) -> None:
    work = Path(a.work)
    stamps, tokens = (run_charter if a.only == "charter" else run_trl)(a, a.model, work)
    steps, seconds = len(stamps) - 1, stamps[-1] - stamps[0]
    timed_tokens = sum(tokens[1:len(stamps)])  # the steps after the first, as timed
    rates = {"replies_per_s": steps * a.prompts * a.group / seconds, "tokens_per_s": timed_tokens / seconds} \
        if steps > 0 else {"replies_per_s": float("nan"), "tokens_per_s": float("nan")}
    print(json.dumps({"trainer": a.only, **rates, "steps_timed": steps, "tokens_timed": timed_tokens}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model"), ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8), ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32), ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["charter", "trl"]), ap.add_argument("--work", default="runs/grpo_vs_trl")
    a = ap.parse_args()
    if a.only:
        return child(a)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    # a base model (no chat template) gets dpo_vs_trl's template, so both trainers render prompts alike
    model = str(with_template(work, Path(a.model))) if a.model else build_model(work / "model")
    rates: dict[str, dict] = {}
    for who in ("charter", "trl"):
        cmd = [sys.executable, __file__, "--only", who, "--model", model, "--work", str(work), "--steps", str(a.steps),
               "--prompts", str(a.prompts), "--group", str(a.group), "--max-new-tokens", str(a.max_new_tokens),
               "--device", a.device]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rates[who] = json.loads(line)
        print(f"{who}: {rates[who]['replies_per_s']:.1f} replies/s, {rates[who]['tokens_per_s']:.1f} generated tokens/s "
              f"({rates[who]['tokens_timed']:.0f} tokens over {rates[who]['steps_timed']} steps)")
    print(f"ratio tokens_per_s={rates['charter']['tokens_per_s'] / rates['trl']['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
