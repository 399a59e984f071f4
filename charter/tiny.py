"""Tiny models built locally: a BPE tokenizer trained with `tokenizers` plus a random-init
Llama-architecture config. Tests, benchmarks and offline dry runs use these, because the
Hub cannot be reached; the real loading code stays for users who have it.
"""
from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_WORDS = (
    "the a an is are was be to of and in that have it for not on with he as you do at this but his by "
    "from they we say her she or will my one all would there their what so up out if about who get "
    "which go me when make can like time no just him know take people into year your good some could "
    "them see other than then now look only come its over think also back after use two how our work "
    "first well way even new want because any these give day most us hello hi thanks please sure yes "
    "system user assistant question answer help tell explain why story poem number friend kind warm "
    "sad happy light dark sun moon sea tree river mountain city music book food coffee tea cat dog"
).split()


def tiny_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        k = rng.randint(4, 14)
        s = " ".join(rng.choice(_WORDS) for _ in range(k))
        lines.append(s.capitalize() + rng.choice([".", "?", "!"]))
    return lines


def build_tokenizer(vocab_size: int = 512, chat_template: str | None = CHATML_TEMPLATE,
                    extra_special: list[str] | None = None, bos_token: str | None = None,
                    eos_token: str = "<|im_end|>", corpus: list[str] | None = None):
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast  # deferred: start-up (toy.model imports this at config load)

    specials = list(dict.fromkeys(SPECIAL_TOKENS + (extra_special or []) + ([bos_token] if bos_token else [])))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus or tiny_corpus(), trainer=trainer)
    if bos_token:
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = TemplateProcessing(single=f"{bos_token} $A", pair=f"{bos_token} $A $B",
                                                special_tokens=[(bos_token, bos_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token="<pad>",
                                 bos_token=bos_token, unk_token=None)
    if chat_template:
        hf.chat_template = chat_template
    return hf


def build_model(tokenizer, hidden_size: int = 32, layers: int = 2, heads: int = 4,
                intermediate_size: int | None = None, max_positions: int = 512, seed: int = 0,
                tie_embeddings: bool = False):
    """A random-init LlamaForCausalLM sized for CPU tests (tens of thousands of params)."""
    import torch  # deferred: start-up, as above
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=intermediate_size or hidden_size * 4, max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_model_dir(path: str | Path, **model_kwargs) -> Path:
    """Save a tiny tokenizer + model as a normal HF folder (safetensors) and return its path."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    tok = build_tokenizer()
    model = build_model(tok, **model_kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
