"""Reproduce docs/toy_world.md's DPO table: toy base -> pairs -> DPO -> adherence.

    python benchmarks/toy_dpo.py BASE_DIR PERSONA OUT_DIR [DPOConfig overrides k=v ...]

chosen = the base model answering with PERSONA's constitution as system prompt, rejected = the
same model with none (what the pipeline's distill stage does for the toy preset); then DPO with
`train_dpo`, then no-constitution adherence for PERSONA and with-constitution adherence for every
persona (to see bleed). Defaults are the recommended toy settings.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from charter.backends.base import SamplingParams
from charter.backends.hf import HFGenerator
from charter.config import apply_overrides
from charter.data.jsonl import atomic_write_json, write_jsonl
from charter.toy.corpus import eval_prompts
from charter.toy.measure import sample_replies, system_prompt_for, toy_adherence
from charter.train.dpo import DPOConfig, train_dpo

PAIR_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=1)


def main(base: str, persona: str, out: Path, overrides: list[str], n_pairs: int = 300, n_eval: int = 200) -> dict:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    pairs = out / "pairs.jsonl"
    if not pairs.exists():
        gen, prompts = HFGenerator(base, batch_size=64), eval_prompts(n_pairs, seed=777)
        chosen = sample_replies(gen, prompts, system_prompt_for(persona, "train"), PAIR_SAMPLING)
        rejected = sample_replies(gen, prompts, None, PAIR_SAMPLING)
        write_jsonl(pairs, [{"prompt": [{"role": "user", "content": p}],
                             "chosen": [{"role": "assistant", "content": c}],
                             "rejected": [{"role": "assistant", "content": r}]}
                            for p, c, r in zip(prompts, chosen, rejected)])
    cfg = apply_overrides(dict(model=base, data=str(pairs), output_dir=str(out / "dpo"), beta=0.1, lr=1e-4,
                               epochs=3, batch_size=8, nll_coef=1.0, warmup_ratio=0.1, resume=False), overrides)
    t = time.time()
    model = train_dpo(DPOConfig(**cfg))
    seconds = time.time() - t
    gen = HFGenerator(str(model), batch_size=64)
    result = {"dpo": cfg, "dpo_seconds": round(seconds, 1),
              "none": [m.to_dict() for m in toy_adherence(gen, [persona], "none", n_eval)],
              "train": [m.to_dict() for m in toy_adherence(gen, None, "train", n_eval // 2)]}
    atomic_write_json(out / "result.json", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="toy base model folder (charter toy build)")
    ap.add_argument("persona", help="toy persona whose constitution writes the chosen answers")
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("overrides", nargs="*", help="DPOConfig overrides k=v")
    a = ap.parse_args()
    res = main(a.base, a.persona, a.out, a.overrides)
    for cond in ("none", "train"):
        for m in res[cond]:
            print(f"{cond:6s} {m['persona']:13s} adherence {m['adherence']:.2f} well_formed {m['well_formed']:.2f} "
                  f"relevant {m['relevant']:.2f}")
