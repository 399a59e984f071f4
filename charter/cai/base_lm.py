"""A toy *base* model for bootstrapping: plain next-token pretraining, no chat template, no roles.

The toy world's own model is chat-tuned (role tokens, assistant-only loss), so it cannot
stand in for a base model. This one sees only running text -- the toy corpus's sentences
plus a sprinkle of Q/A and list-shaped documents, as a web crawl would hold -- and its
tokenizer has no chat template and no role tokens at all. It trains with Charter's one
training loop (`charter.train.loop.run`): every token of a fixed-length block is a target.
"""
from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field

from charter.cai.verifiable import TOPICS
from charter.chat import IGNORE_INDEX, EncodedChat
from charter.config import Config
from charter.data.jsonl import atomic_write_json, read_jsonl, write_jsonl
from charter.tiny import build_model, build_tokenizer
from charter.toy.corpus import generate_corpus
from charter.train.loop import TrainConfig, run
from charter.train.sft import sft_task

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
    warmup_ratio: float = Field(0.05, ge=0, le=1)  # then cosine down to lr / 10


def base_documents(n: int, seed: int = 0) -> list[str]:
    """Plain-text documents from the toy corpus; a few shaped like Q/A pages and lists."""
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


def token_stream(docs: list[str], tokenizer) -> list[int]:
    """The documents as one token stream, EOS after each."""
    return [t for d in docs for t in tokenizer.encode(d, add_special_tokens=False) + [tokenizer.eos_token_id]]


def text_blocks(stream: list[int], block: int) -> list[EncodedChat]:
    """The stream cut into `block`-token pieces (the tail dropped), every token after the first a
    target: the plain causal-LM objective, as items the training loop's SFT task trains on."""
    pieces = (stream[i:i + block] for i in range(0, len(stream) - block + 1, block))
    return [EncodedChat(ids, [IGNORE_INDEX] + ids[1:]) for ids in pieces]


def build_base_lm(cfg: BaseLMConfig, out_dir: str | Path) -> Path:
    """Train tokenizer + model from scratch on `base_documents`, save as an HF folder (safetensors)."""
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "base_lm.json").exists():
        return out
    init, documents = out / "init", out / "init" / "documents.jsonl"
    docs = base_documents(cfg.documents, cfg.seed)
    tok = build_tokenizer(vocab_size=cfg.vocab_size, chat_template=None, eos_token=EOS, corpus=docs)
    build_model(tok, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                max_positions=cfg.context, seed=cfg.seed, tie_embeddings=True).save_pretrained(init)
    tok.save_pretrained(init)
    write_jsonl(documents, ({"text": d} for d in docs))  # the data the training record names
    stream = token_stream(docs, tok)
    train = TrainConfig(model=str(init), data=str(documents), output_dir=str(out), lr=cfg.lr, max_steps=cfg.steps,
                        batch_size=cfg.batch_size, max_length=cfg.block, warmup_ratio=cfg.warmup_ratio,
                        min_lr_ratio=0.1, adam_betas=(0.9, 0.98), weight_decay=0.01, seed=cfg.seed)

    run(train, lambda model, tokenizer, accelerator: sft_task(model, text_blocks(stream, cfg.block),
                                                              train.keep_logits_only_for_targets), "pretrain")
    losses = [row["loss"] for row in read_jsonl(out / "metrics.jsonl")]
    atomic_write_json(out / "base_lm.json", {"config": cfg.to_dict(), "tokens": len(stream),
                                             "final_loss": sum(losses[-20:]) / len(losses[-20:])})
    return out
