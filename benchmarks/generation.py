"""Generation throughput: Charter's hf backend (batched, left-padded) vs a per-prompt
`model.generate` loop vs `transformers serve` through Charter's openai backend.

Same locally built tiny model, same prompts, greedy, same max_new_tokens for all three.
Reports completion tokens per second and the ratios. Run:

    OMP_NUM_THREADS=1 python benchmarks/generation.py [--prompts 32] [--new-tokens 64] [--hidden-size 32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prompts(n: int) -> list[list[dict]]:
    topics = ["the sea", "coffee", "a city at night", "music", "a tree", "the moon", "a friend", "books"]
    return [[{"role": "user", "content": f"Tell me something about {topics[i % len(topics)]} " + "please " * (i % 5)}]
            for i in range(n)]


def bench_hf_batched(model_dir: Path, reqs, new_tokens: int, batch_size: int) -> tuple[int, float]:
    from charter.backends.base import SamplingParams
    from charter.backends.hf import HFGenerator

    g = HFGenerator(str(model_dir), batch_size=batch_size, device="cpu")
    p = SamplingParams(temperature=0, max_new_tokens=new_tokens)
    g.generate(reqs[:2], p)  # warm-up
    t = time.perf_counter()
    out = g.generate(reqs, p)
    return sum(c[0].completion_tokens for c in out), time.perf_counter() - t


def bench_loop(model_dir: Path, reqs, new_tokens: int) -> tuple[int, float]:
    """What many scripts do: one `model.generate` call per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in reqs]
    tokens = 0
    with torch.no_grad():
        ids = tok(texts[0], return_tensors="pt", add_special_tokens=False)
        model.generate(**ids, max_new_tokens=4, do_sample=False)  # warm-up
        t = time.perf_counter()
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - t


def bench_serve(model_dir: Path, reqs, new_tokens: int, concurrency: int) -> tuple[int, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serve_fixture import ServeProcess

    from charter.backends.base import SamplingParams
    from charter.backends.openai import OpenAIGenerator

    server = ServeProcess(model_dir).start()
    try:
        g = OpenAIGenerator(server.model, server.base_url, concurrency=concurrency, dialect="transformers")
        p = SamplingParams(temperature=0, max_new_tokens=new_tokens)
        g.generate(reqs[:2], p)  # warm-up (first request loads nothing, but primes the server)
        t = time.perf_counter()
        out = g.generate(reqs, p)
        return sum(c[0].completion_tokens for c in out), time.perf_counter() - t
    finally:
        server.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--hidden-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--no-serve", action="store_true")
    args = ap.parse_args()

    from charter.tiny import build_tiny_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    model_dir = build_tiny_model_dir(tmp / "model", hidden_size=args.hidden_size, layers=args.layers)
    reqs = prompts(args.prompts)
    rows = {"hf batched": bench_hf_batched(model_dir, reqs, args.new_tokens, args.batch_size),
            "generate loop": bench_loop(model_dir, reqs, args.new_tokens)}
    if not args.no_serve:
        rows[f"transformers serve (openai backend, concurrency {args.concurrency})"] = bench_serve(
            model_dir, reqs, args.new_tokens, args.concurrency)
    loop_tps = rows["generate loop"][0] / rows["generate loop"][1]
    print(f"{args.prompts} prompts, greedy, {args.new_tokens} new tokens, hidden {args.hidden_size}, "
          f"layers {args.layers}, batch {args.batch_size}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"| method | tokens | seconds | tokens/s | vs loop |\n|---|---|---|---|---|")
    result = {}
    for name, (tokens, secs) in rows.items():
        tps = tokens / secs
        result[name] = {"tokens": tokens, "seconds": round(secs, 3), "tokens_per_s": round(tps, 1)}
        print(f"| {name} | {tokens} | {secs:.2f} | {tps:.0f} | {tps / loop_tps:.1f}x |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
