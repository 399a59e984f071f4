"""The toy world's tokenizer and base model: a byte-level BPE vocabulary trained on the corpus,
and a small Llama-architecture model pretrained on it (loss on assistant tokens only).

The default build ships inside the package (`charter/toy/pretrained/`, with the SHA-256 of its
weights), so a fresh clone needs no build: `build_toy_model` installs it into the cache when the
settings match. `charter toy build` rebuilds it from scratch, byte for byte on the same CPU
(one thread, fixed seed), and says whether the weights match the shipped ones.

The model is pretrained with Charter's own SFT trainer, so the toy world exercises the same
training code as real models. `build_toy_model` caches the result under a folder keyed by the
hash of its settings and writes it atomically (a temp folder renamed into place), so an
interrupted build never leaves a half-written model that later runs would trust.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock
from huggingface_hub.utils.sha import sha_fileobj
from safetensors import safe_open

from charter.config import Config
from charter.data.jsonl import atomic_write_json, write_jsonl
from charter.tiny import build_model, build_tokenizer
from charter.toy.corpus import generate_corpus

# One role token per role and an end-of-turn token that doubles as EOS, so the model learns to
# stop and the template needs no newlines or role words that the BPE would have to spell out.
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
END_OF_TURN = "<|end|>"
TOY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BUILD_VERSION = 2  # bump when the corpus or grammar changes, so cached models are rebuilt


class ToyBuildConfig(Config):
    """Everything that determines the toy base model (its hash names the cache folder)."""

    seed: int = 0
    n_conversations: int = 60000
    persona_share: float = 0.6
    attack_share: float = 0.3  # conversations with a style-dropping instruction (charter.toy.attacks)
    keep_going_share: float = 0.5  # later turns that say "keep going" instead of asking anew
    vocab_size: int = 1024
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 320
    context: int = 256
    lr: float = 3e-3
    batch_size: int = 32  # sequences per optimiser step
    micro_batch: int = 4  # sequences per forward: packing many sequences makes CPU attention quadratic
    steps: int = 450
    warmup_ratio: float = 0.05
    version: int = BUILD_VERSION


def default_cache_root() -> Path:
    """`$CHARTER_CACHE/toy`, else `~/.cache/charter/toy`."""
    root = os.environ.get("CHARTER_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "charter") / "toy"


def build_toy_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Byte-level BPE over the corpus texts, with role tokens, `<|end|>` as EOS and the toy template."""
    return build_tokenizer(vocab_size=vocab_size, chat_template=TOY_TEMPLATE,
                           extra_special=ROLE_TOKENS + [END_OF_TURN], eos_token=END_OF_TURN, corpus=texts)


def corpus_texts(rows: list[dict]) -> list[str]:
    """The strings the BPE is trained on: every message's content."""
    return [m["content"] for r in rows for m in r["messages"]]


def build_toy_base(cfg: ToyBuildConfig, rows: list[dict]):
    """Tokenizer + random-init model (0.9M parameters at the defaults, tied embeddings)."""
    tok = build_toy_tokenizer(corpus_texts(rows), cfg.vocab_size)
    model = build_model(tok, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                        intermediate_size=cfg.intermediate_size, max_positions=cfg.context,
                        seed=cfg.seed, tie_embeddings=True)
    return tok, model


BUILD_RECORD = "toy_build.json"
PACKAGED_DIR = Path(__file__).parent / "pretrained"
WEIGHTS = "model.safetensors"


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 of a model folder's weights file: what `charter toy build` must reproduce."""
    with open(Path(model_dir) / WEIGHTS, "rb") as f:
        return sha_fileobj(f).hex()


def packaged_model(cfg: ToyBuildConfig) -> Path | None:
    """The shipped model folder when it was built with exactly these settings, else None."""
    record = PACKAGED_DIR / BUILD_RECORD
    if not record.exists() or json.loads(record.read_text())["hash"] != cfg.hash():
        return None
    return PACKAGED_DIR


def install_packaged(src: Path, final: Path) -> Path:
    """Copy the shipped model into `final` (atomic rename), after checking its weights' SHA-256."""
    expected = json.loads((src / BUILD_RECORD).read_text())["weights_sha256"]
    if weights_sha256(src) != expected:
        raise RuntimeError(f"{src / WEIGHTS}: SHA-256 differs from {src / BUILD_RECORD}; reinstall Charter "
                           "or rebuild with `charter toy build`")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent))
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(("__", ".")):
            shutil.copy2(f, tmp / f.name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def toy_model_dir(cfg: ToyBuildConfig | None = None, root: str | Path | None = None) -> Path:
    """Where the model for these settings lives: `<root or cache root>/<settings hash>`."""
    cfg = cfg or ToyBuildConfig()
    return Path(root or default_cache_root()) / cfg.hash()


def is_built(path: str | Path) -> bool:
    return (Path(path) / BUILD_RECORD).exists()


def build_toy_model(cfg: ToyBuildConfig | None = None, out: str | Path | None = None,
                    threads: int | None = 1, packaged: bool = True) -> Path:
    """Generate the corpus, train the tokenizer, pretrain the base model with `train_sft`, and
    return its folder (an ordinary HF model folder). Cached: an existing finished build is
    returned as is. `out` is the exact folder to build (default: `toy_model_dir(cfg)`). With
    `packaged` (the default), settings that match the shipped model install it instead of training.

    Work happens in `<out>.partial/` and is renamed into place at the end; the SFT run there
    checkpoints, so a killed build resumes where it stopped.

    `threads` caps torch's CPU threads during the build (restored after): a 0.9M-parameter
    model gains little from a second thread, and on a busy machine two threads fighting for
    the cores made steps 20x slower than one.

    Two processes asking for the same model at once (two runs in different folders): the second
    waits for the first's build, then uses it."""
    cfg = cfg or ToyBuildConfig()
    final = Path(out) if out else toy_model_dir(cfg)
    if is_built(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.build.lock", thread_local=False):
        if is_built(final):
            return final
        if packaged and (src := packaged_model(cfg)) is not None:
            return install_packaged(src, final)
        return _build(cfg, final, threads)


def _build(cfg: ToyBuildConfig, final: Path, threads: int | None) -> Path:
    import torch  # deferred: start-up (configs import this module); torch loads only when a build runs

    from charter.train.sft import SFTConfig, train_sft  # deferred: start-up (torch and transformers)

    work = final.parent / f"{final.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    init, data = work / "init", work / "corpus.jsonl"
    if not (init / "config.json").exists():
        rows = generate_corpus(cfg.n_conversations, seed=cfg.seed, persona_share=cfg.persona_share,
                               attack_share=cfg.attack_share, keep_going_share=cfg.keep_going_share)
        write_jsonl(data, ({"messages": r["messages"]} for r in rows))
        tok, model = build_toy_base(cfg, rows)
        tmp = Path(tempfile.mkdtemp(dir=work))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, init)
    sft = SFTConfig(model=str(init), data=str(data), output_dir=str(work / "model"), lr=cfg.lr,
                    max_steps=cfg.steps, batch_size=cfg.micro_batch,
                    grad_accum=max(1, cfg.batch_size // cfg.micro_batch), max_length=cfg.context,
                    warmup_ratio=cfg.warmup_ratio, adam_betas=(0.9, 0.95), seed=cfg.seed,
                    save_steps=max(1, cfg.steps // 5), save_total_limit=1, logging_steps=10)

    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model_dir = train_sft(sft)
    finally:
        torch.set_num_threads(saved_threads)
    shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)
    n_params = _count_params(model_dir)
    atomic_write_json(model_dir / BUILD_RECORD, {"settings": cfg.to_dict(), "hash": cfg.hash(), "params": n_params,
                                                 "weights_sha256": weights_sha256(model_dir),
                                                 "seconds": round(time.time() - t0, 1)})
    if final.exists():  # an unfinished folder from elsewhere: never trusted, replaced
        shutil.rmtree(final)
    os.replace(model_dir, final)
    shutil.rmtree(work, ignore_errors=True)
    return final


def _count_params(model_dir: Path) -> int:
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
