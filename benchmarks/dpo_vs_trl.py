"""Charter vs TRL 1.16 training throughput and peak memory, same model, data, order and settings.

    python benchmarks/dpo_vs_trl.py [--sizes 1m,50m | --model DIR] [--lora] [--steps 4] [--batch 4]
                                    [--device cpu|cuda] [--precision fp32|bf16]

The model is a random-init Llama built here from a config (`--sizes`; `1b` is Llama-3.2-1B's
shape) or an HF folder (`--model`, e.g. the embedded gemma-3-270m; a tokenizer with no chat
template gets the ChatML-like TEMPLATE below). Full fine-tuning, or with `--lora` LoRA r 16,
alpha 32, dropout 0 on every linear layer but the LM head, set identically in Charter and PEFT.
Both precompute the reference log-probs (TRL `precompute_ref_log_probs=True`, Charter
`reference=precomputed`), AdamW, sequential order, gradient checkpointing off in both unless
`--gradient-checkpointing` (TRL 1.16 turns it on by default, Charter off); bf16 is fp32 weights
under autocast in both.
Each trainer runs in its own subprocess so peak RSS (and peak GPU memory) is its own. Tokens
count every real (non-padding) token of prompt+chosen and prompt+rejected, over the steps after
the first (warm-up), from step-end to step-end, so precompute and start-up are excluded. Two
rates: wall-clock tokens/s, and tokens per CPU-second of the trainer process (all its threads).
On a shared CPU the wall clock mostly measures the neighbours, so the final line
`ratio tokens_per_s=X peak_rss=Y` (Charter / TRL, last model) uses the CPU-time rate unless
`--wall` is given or the device is a GPU. On a GPU each run also prints peak GPU memory and MFU
(6 x parameters x tokens/s against `--peak-tflops`, 989 dense bf16 for H100/H200).
Without TRL installed only Charter runs. `sft_vs_trl.py` runs the same comparison for SFT.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
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
# vocab, hidden, layers, heads, kv heads, intermediate, tied embeddings:
# ~1.1M, ~53M (a realistic untied 32k LM head) and ~1.24B (Llama-3.2-1B's shape) parameters
SIZES = {"1m": (1024, 128, 4, 4, 4, 384, False), "50m": (32000, 512, 6, 8, 8, 1536, False),
         "1b": (128256, 2048, 16, 32, 8, 8192, True)}
LR = 1e-5
LORA = dict(r=16, alpha=32.0, dropout=0.0)  # all linear layers but the LM head, in both trainers


def build_model(root: Path, size: str, seed: int = 0) -> Path:
    """A random-init Llama of `size` with a small BPE tokenizer, saved under `root` (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from charter.tiny import build_tokenizer

    vocab, hidden, layers, heads, kv_heads, inter, tied = SIZES[size]
    tok = build_tokenizer(chat_template=TEMPLATE)
    cfg = LlamaConfig(vocab_size=max(vocab, len(tok)), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=inter,
                      max_position_embeddings=2048, tie_word_embeddings=tied, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model_dir = root / f"model-{size}"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def with_template(root: Path, model_dir: Path) -> Path:
    """`model_dir` itself if its tokenizer has a chat template; else a folder under `root` whose
    weights link to it and whose tokenizer carries TEMPLATE (base models have none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.chat_template:
        return model_dir
    out = root / f"model-{model_dir.name}"
    out.mkdir()
    for f in model_dir.iterdir():
        if not f.name.startswith("tokenizer"):
            (out / f.name).symlink_to(f.resolve())
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


def write_data(root: Path, kind: str, n: int, seed: int = 0) -> Path:
    """`n` rows of varied length: prompts 1-4 sentences, completions 1-12."""
    from charter.data.jsonl import write_jsonl
    from charter.tiny import tiny_corpus

    lines, rng = tiny_corpus(500, seed=7), random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(lines) for _ in range(rng.randint(lo, hi)))

    if kind == "dpo":
        rows = [{"prompt": [{"role": "user", "content": text(1, 4)}],
                 "chosen": [{"role": "assistant", "content": text(1, 12)}],
                 "rejected": [{"role": "assistant", "content": text(1, 12)}]} for _ in range(n)]
    else:
        rows = [{"messages": [{"role": "user", "content": text(1, 4)},
                              {"role": "assistant", "content": text(1, 12)}]} for _ in range(n)]
    data = root / f"{kind}.jsonl"
    write_jsonl(data, rows)
    return data


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


def count_params(model_dir: Path) -> int:
    """Parameters stored in the folder's safetensors (tied embeddings once), from the headers only."""
    from safetensors import safe_open

    n = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(name).get_shape()) for name in st.keys())
    return n


# ----------------------------------------------------------------------------- the two trainers


def run_charter(args, tick) -> None:
    from charter.train.dpo import DPOConfig, train_dpo
    from charter.train.lora import LoraSettings
    from charter.train.sft import SFTConfig, train_sft

    common = dict(model=args.model, data=args.data, output_dir=args.out, lr=LR, max_steps=args.steps,
                  batch_size=args.batch, warmup_ratio=0.0, shuffle=False, resume=False, max_length=1024,
                  precision=args.precision, lora=LoraSettings(**LORA) if args.lora else None,
                  gradient_checkpointing=args.gradient_checkpointing)
    if args.kind == "dpo":
        train_dpo(DPOConfig(reference="precomputed", **common), on_step=tick)
    else:
        train_sft(SFTConfig(**common), on_step=tick)


def run_trl(args, tick) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from charter.data.jsonl import read_jsonl

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            tick()

    common = dict(output_dir=args.out, per_device_train_batch_size=args.batch, learning_rate=LR,
                  max_steps=args.steps, bf16=args.precision == "bf16", use_cpu=args.device == "cpu",
                  optim="adamw_torch", gradient_checkpointing=args.gradient_checkpointing, logging_steps=1,
                  save_strategy="no", report_to="none", max_length=1024, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    ds = Dataset.from_list(read_jsonl(args.data))
    peft = None
    if args.lora:
        from peft import LoraConfig

        peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    if args.kind == "dpo":
        from trl import DPOConfig, DPOTrainer as T

        targs = DPOConfig(precompute_ref_log_probs=True, **common)
    else:
        from trl import SFTConfig, SFTTrainer as T

        targs = SFTConfig(assistant_only_loss=True, **common)

    class Sequential(T):
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    Sequential(model=model, processing_class=tok, train_dataset=ds, args=targs, callbacks=[Clock()],
               peft_config=peft).train()


def worker(args) -> None:
    """Run one trainer; print {"step_ends": [...], "peak_rss_mb": ..., "peak_gpu_mb": ...} last."""
    import torch

    ends: list[tuple[float, float]] = []
    gpu = args.device == "cuda"

    def tick(*_a, **_k):
        if gpu:
            torch.cuda.synchronize()
        ends.append((time.perf_counter(), time.process_time()))

    (run_charter if args.worker == "charter" else run_trl)(args, tick)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if gpu else None
    print(json.dumps({"step_ends": ends, "peak_rss_mb": rss, "peak_gpu_mb": peak_gpu}))


# ----------------------------------------------------------------------------- the comparison


def run_one(name: str, args, model_dir: Path, data: Path, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--kind", args.kind, "--model", str(model_dir),
           "--data", str(data), "--out", str(root / f"out-{name}-{model_dir.name}"), "--steps", str(args.steps),
           "--batch", str(args.batch), "--device", args.device, "--precision", args.precision]
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
    flags = [f for f in ("--lora", "--gradient-checkpointing") if getattr(args, f[2:].replace("-", "_"))]
    proc = subprocess.run(cmd + flags, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rates(result: dict, toks: list[int]) -> tuple[float, float]:
    """(wall-clock tokens/s, tokens per CPU-second) over the steps after the first."""
    (w0, c0), (w1, c1) = result["step_ends"][0], result["step_ends"][-1]
    return sum(toks[1:]) / (w1 - w0), sum(toks[1:]) / (c1 - c0)


def compare(args, label: str, model_dir: Path, data: Path, root: Path) -> tuple[float, float] | None:
    """Run each trainer on one model and print its line; (speed ratio, memory ratio) if both ran."""
    toks = step_tokens(args.kind, model_dir, data, args.batch, args.steps)
    n_params, gpu = count_params(model_dir), args.device != "cpu"
    names = ["charter"] + (["trl"] if importlib.util.find_spec("trl") else [])
    res = {}
    for name in names:
        r = run_one(name, args, model_dir, data, root)
        wall, cpu = rates(r, toks)
        mem = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        res[name] = (wall if args.wall or gpu else cpu, mem)
        mfu = 6 * n_params * wall / (args.peak_tflops * 1e12)
        extra = (f"  peak GPU {r['peak_gpu_mb']:7.0f} MiB" if gpu else "") + f"  MFU {mfu:.2%}"
        print(f"{args.kind} {label:>4} {name:>7}: {wall:9.1f} tokens/s wall  {cpu:9.1f} tokens/CPU-s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MiB{extra}  ({args.steps - 1} timed steps, {sum(toks[1:])} "
              f"tokens, {n_params / 1e6:.0f}M params)", flush=True)
    if "trl" not in res:
        return None
    (c_rate, c_mem), (t_rate, t_mem) = res["charter"], res["trl"]
    clock = "wall" if args.wall or gpu else "per CPU-s"
    print(f"{args.kind} {label:>4}   ratio: tokens/s x{c_rate / t_rate:.2f} ({clock}), "
          f"peak {'GPU memory' if gpu else 'RSS'} x{c_mem / t_mem:.2f}", flush=True)
    return c_rate / t_rate, c_mem / t_mem


def parse_args(kind: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1m,50m", help=f"random-init Llamas to build: {','.join(SIZES)}")
    p.add_argument("--model", help="an HF model folder instead of --sizes")
    p.add_argument("--lora", action="store_true", help="LoRA r 16, all linear layers (else full fine-tuning)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="in both trainers (TRL's default)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200: 989)")
    p.add_argument("--wall", action="store_true", help="final ratio from wall-clock instead of CPU time")
    p.add_argument("--worker"), p.add_argument("--kind", default=kind)
    p.add_argument("--data"), p.add_argument("--out")
    return p.parse_args()


def main(kind: str = "dpo") -> None:
    args = parse_args(kind)
    if args.worker:
        return worker(args)
    ratios = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(root, args.kind, args.steps * args.batch)
        if args.model:
            models = [(Path(args.model).name, with_template(root, Path(args.model)))]
        else:
            models = [(size, build_model(root, size)) for size in args.sizes.split(",")]
        for label, model_dir in models:
            ratios = compare(args, label, model_dir, data, root)
    if ratios:
        print(f"ratio tokens_per_s={ratios[0]:.2f} peak_{'gpu' if args.device != 'cpu' else 'rss'}={ratios[1]:.2f}")


if __name__ == "__main__":
    main("dpo")
