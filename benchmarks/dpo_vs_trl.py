"""Charter vs TRL 1.16 training throughput and peak memory, same model, data, order and settings.

    python benchmarks/dpo_vs_trl.py [--sizes 1m,50m] [--steps 4] [--batch 4]

Both run full fine-tuning in fp32 on CPU with the reference log-probs precomputed (TRL
`precompute_ref_log_probs=True`, Charter `reference=precomputed`), AdamW, sequential order.
Each trainer runs in its own subprocess so peak RSS is its own. Tokens count every real
(non-padding) token of prompt+chosen and prompt+rejected, over the steps after the first
(warm-up), from step-end to step-end, so precompute and start-up are excluded. Two rates:
wall-clock tokens/s, and tokens per CPU-second of the trainer process (all its threads). On a
shared machine the wall clock mostly measures the neighbours; CPU time measures the work, so
the final line `ratio tokens_per_s=X peak_rss=Y` (Charter / TRL, largest size) uses the
CPU-time rate unless `--wall` is given.
`sft_vs_trl.py` runs the same comparison for SFT (assistant-only loss).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# vocab, hidden, layers, heads, intermediate -> ~1.1M and ~53M parameters (a realistic 32k LM head)
SIZES = {"1m": (1024, 128, 4, 4, 384), "50m": (32000, 512, 6, 8, 1536)}
LR = 1e-5


def build(root: Path, size: str, kind: str, n: int, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from charter.data.jsonl import write_jsonl
    from charter.toy.tiny import build_tokenizer, tiny_corpus

    vocab, hidden, layers, heads, inter = SIZES[size]
    tok = build_tokenizer(chat_template=TEMPLATE)
    cfg = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=inter,
                      max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model_dir = root / f"model-{size}"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    lines, rng = tiny_corpus(500, seed=7), random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(lines) for _ in range(rng.randint(lo, hi)))

    if kind == "dpo":  # varied lengths: prompts 1-4 sentences, completions 1-12
        rows = [{"prompt": [{"role": "user", "content": text(1, 4)}],
                 "chosen": [{"role": "assistant", "content": text(1, 12)}],
                 "rejected": [{"role": "assistant", "content": text(1, 12)}]} for _ in range(n)]
    else:
        rows = [{"messages": [{"role": "user", "content": text(1, 4)},
                              {"role": "assistant", "content": text(1, 12)}]} for _ in range(n)]
    data = root / f"{kind}.jsonl"
    write_jsonl(data, rows)
    return model_dir, data


def step_tokens(kind: str, model_dir: Path, data: Path, batch: int, steps: int) -> list[int]:
    """Real tokens per step (sequential order), from Charter's encoding (TRL tokenises the same)."""
    from transformers import AutoTokenizer

    from charter.train.data import load_pairs, read_sft

    tok = AutoTokenizer.from_pretrained(model_dir)
    if kind == "dpo":
        items = [len(p.chosen) + len(p.rejected) for p in load_pairs(data, tok, 1024)[0]]
    else:
        items = [len(s) for s in read_sft(data, tok, 1024)[0]]
    return [sum(items[i * batch:(i + 1) * batch]) for i in range(steps)]


def worker(args) -> None:
    """Run one trainer; print {"step_ends": [...], "peak_rss_mb": ...} as the last line."""
    ends: list[tuple[float, float]] = []

    def tick(*_a, **_k):
        ends.append((time.perf_counter(), time.process_time()))
    if args.worker == "charter":
        from charter.train.dpo import DPOConfig, train_dpo
        from charter.train.sft import SFTConfig, train_sft

        common = dict(model=args.model, data=args.data, output_dir=args.out, lr=LR, max_steps=args.steps,
                      batch_size=args.batch, warmup_ratio=0.0, shuffle=False, resume=False, max_length=1024)
        if args.kind == "dpo":
            train_dpo(DPOConfig(reference="precomputed", **common), on_step=tick)
        else:
            train_sft(SFTConfig(**common), on_step=tick)
    else:
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

        from charter.data.jsonl import read_jsonl

        class Clock(TrainerCallback):
            def on_step_end(self, *a, **k):
                tick()

        common = dict(output_dir=args.out, per_device_train_batch_size=args.batch, learning_rate=LR,
                      max_steps=args.steps, bf16=False, use_cpu=True, optim="adamw_torch", logging_steps=1,
                      save_strategy="no", report_to="none", max_length=1024, dataloader_num_workers=0)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(args.model)
        ds = Dataset.from_list(read_jsonl(args.data))
        if args.kind == "dpo":
            from trl import DPOConfig, DPOTrainer as T

            targs = DPOConfig(precompute_ref_log_probs=True, **common)
        else:
            from trl import SFTConfig, SFTTrainer as T

            targs = SFTConfig(assistant_only_loss=True, **common)

        class Sequential(T):
            def _get_train_sampler(self, *a, **k):
                return torch.utils.data.SequentialSampler(self.train_dataset)

        Sequential(model=model, processing_class=tok, train_dataset=ds, args=targs, callbacks=[Clock()]).train()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step_ends": ends, "peak_rss_mb": rss}))


def run_one(name: str, kind: str, model_dir: Path, data: Path, root: Path, steps: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--kind", kind, "--model", str(model_dir),
           "--data", str(data), "--out", str(root / f"out-{name}-{model_dir.name}"), "--steps", str(steps),
           "--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(kind: str = "dpo") -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1m,50m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--wall", action="store_true", help="final ratio from wall-clock instead of CPU time")
    p.add_argument("--worker"), p.add_argument("--kind", default=kind), p.add_argument("--model")
    p.add_argument("--data"), p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    ratios = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in args.sizes.split(","):
            model_dir, data = build(root, size, kind, args.steps * args.batch)
            toks = step_tokens(kind, model_dir, data, args.batch, args.steps)
            res = {}
            for name in ("charter", "trl"):
                r = run_one(name, kind, model_dir, data, root, args.steps, args.batch)
                (w0, c0), (w1, c1) = r["step_ends"][0], r["step_ends"][-1]
                wall, cpu = sum(toks[1:]) / (w1 - w0), sum(toks[1:]) / (c1 - c0)
                res[name] = (wall, cpu, r["peak_rss_mb"])
                print(f"{kind} {size:>4} {name:>7}: {wall:9.1f} tokens/s wall  {cpu:9.1f} tokens/CPU-s  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MiB  ({args.steps - 1} timed steps, {sum(toks[1:])} tokens)",
                      flush=True)
            c, t = res["charter"], res["trl"]
            ratios = (c[0] / t[0] if args.wall else c[1] / t[1], c[2] / t[2])
            print(f"{kind} {size:>4}   ratio: tokens/s wall x{c[0] / t[0]:.2f}, per CPU-s x{c[1] / t[1]:.2f}, "
                  f"peak RSS x{ratios[1]:.2f}", flush=True)
    print(f"ratio tokens_per_s={ratios[0]:.2f} peak_rss={ratios[1]:.2f}")


if __name__ == "__main__":
    main("dpo")
