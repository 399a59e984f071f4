"""A toy *base* model for bootstrapping: plain next-token pretraining, no chat template, no roles.

The toy world's own model is chat-tuned (role tokens, assistant-only loss), so it cannot
stand in for a base model. This one sees only running text -- the toy corpus's sentences
plus a sprinkle of Q/A and list-shaped documents, as a web crawl would hold -- and its
tokenizer has no chat template and no role tokens at all.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from charter.config import Config

EOS = "<|endoftext|>"


class BaseLMConfig(Config):
    seed: int = 0
    documents: int = 4000
    vocab_size: int = 768
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    context: int = 256  # max positions
    block: int = 128  # pretraining sequence length (RoPE carries on past it)
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3


def base_documents(n: int, seed: int = 0) -> list[str]:
    """Plain-text documents from the toy corpus; a few shaped like Q/A pages and lists."""
    from charter.cai.verifiable import TOPICS
    from charter.toy.corpus import generate_corpus

    rng = random.Random(seed)
    docs = []
    for row in generate_corpus(n, seed=seed, persona_share=0.3):
        texts = [m["content"] for m in row["messages"] if m["role"] != "system"]
        shape = rng.random()
        if shape < 0.15 and len(texts) >= 2:
            docs.append(f"Q: {texts[0]}\nA: {texts[1]}")
        elif shape < 0.25:
            docs.append(f"Things about the {rng.choice(TOPICS)}:\n" + "\n".join(f"- {t}" for t in texts[:3]))
        else:
            docs.append(" ".join(texts))
    return docs


def build_base_lm(cfg: BaseLMConfig, out_dir: str | Path) -> Path:
    """Train tokenizer + model from scratch on `base_documents`, save as an HF folder (safetensors)."""
    import torch

    from charter.data.jsonl import atomic_write_json
    from charter.tiny import build_model, build_tokenizer

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "base_lm.json").exists():
        return out
    docs = base_documents(cfg.documents, cfg.seed)
    tok = build_tokenizer(vocab_size=cfg.vocab_size, chat_template=None, eos_token=EOS, corpus=docs)
    model = build_model(tok, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                        max_positions=cfg.context, seed=cfg.seed, tie_embeddings=True)
    stream = [t for d in docs for t in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]]
    n_blocks = len(stream) // cfg.block
    blocks = torch.tensor(stream[:n_blocks * cfg.block]).view(n_blocks, cfg.block)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses = []
    from tqdm.auto import tqdm

    for step in tqdm(range(cfg.steps), desc="pretrain base LM"):
        lr = cfg.lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = blocks[torch.randint(0, n_blocks, (cfg.batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_json(out / "base_lm.json", {"config": cfg.to_dict(), "tokens": len(stream),
                                             "final_loss": sum(losses[-20:]) / min(20, len(losses))})
    return out
