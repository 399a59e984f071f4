"""Where the toy base build's time goes: the SFT step on the toy model, timed outside the trainer.

Times one optimiser step (32 sequences = `micro_batch` x accumulation, forward + backward + AdamW)
of the default toy model on real corpus rows, and reports both token rates: all tokens processed
and trained (assistant) tokens, which is what `metrics.jsonl`'s `tokens_per_s` counts. Also times
a bare matmul of the model's shapes, the single-core ceiling the step is bound by.

    python benchmarks/toy_build_throughput.py --threads 1 --micro-batch 4 8 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, nargs="+", default=[4, 8, 32])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--sort", action="store_true", help="order each window by length before splitting")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from charter.data.jsonl import write_jsonl
    from charter.toy.corpus import generate_corpus
    from charter.toy.model import ToyBuildConfig, build_toy_base
    from charter.train.batching import pack, packed_token_logps
    from charter.train.data import read_sft

    cfg = ToyBuildConfig()
    rows = generate_corpus(400, seed=0, persona_share=cfg.persona_share)
    tok, model = build_toy_base(cfg, rows)
    data = Path(tempfile.mkdtemp()) / "corpus.jsonl"
    write_jsonl(data, ({"messages": r["messages"]} for r in rows))
    items, _ = read_sft(str(data), tok, cfg.context)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(i: int, mb: int) -> tuple[int, int]:
        w = items[(i * 32) % 320:(i * 32) % 320 + 32]
        if a.sort:
            w = sorted(w, key=len, reverse=True)
        for k in range(0, 32, mb):
            lp = packed_token_logps(model, pack(w[k:k + mb]), True)
            (-lp.sum() / 1000).backward()
        opt.step()
        opt.zero_grad()
        return sum(len(s) for s in w), sum(s.n_trainable for s in w)

    print(f"threads={a.threads} mean seq len={sum(map(len, items)) / len(items):.0f} "
          f"trained share={sum(s.n_trainable for s in items) / sum(map(len, items)):.2f}")
    for mb in a.micro_batch:
        step(0, mb)
        t, all_tok, trained = time.time(), 0, 0
        for i in range(a.steps):
            n, m = step(i, mb)
            all_tok, trained = all_tok + n, trained + m
        dt = time.time() - t
        print(f"micro_batch={mb}: {dt / a.steps * 1000:.0f} ms/step, all tokens/s {all_tok / dt:.0f}, "
              f"trained tokens/s {trained / dt:.0f}")
    x, w = torch.randn(5000, 128), torch.randn(128, 320)
    t = time.time()
    for _ in range(20):
        x @ w
    print(f"matmul 5000x128 @ 128x320: {2 * 5000 * 128 * 320 * 20 / (time.time() - t) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
