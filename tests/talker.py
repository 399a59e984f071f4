"""A tiny chat model that always gives the same well-formed reply: real generation that passes the
pipeline's filters without training a model first (for end-to-end runs that must be fast)."""
from __future__ import annotations

from pathlib import Path

import torch

REPLY = "Thanks, that is a good question."


def build_talker(path: Path) -> Path:
    """A tiny chat model that answers every chat with REPLY and then ends its turn, whatever the
    sampling: attention and MLP outputs are zeroed, so each next token depends only on the current
    one, and the LM head maps the generation prompt's last token -> REPLY's tokens -> <|im_end|>.
    Real generated text that passes the pipeline's filters, without training a model first."""
    from charter.toy.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, max_positions=8192)  # long system prompts fit
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    chain = [tok(prompt, add_special_tokens=False)["input_ids"][-1], *tok(REPLY, add_special_tokens=False)["input_ids"],
             tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), "a repeated token would make the next token ambiguous"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for i, (cur, nxt) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[cur] = 0.0
            model.model.embed_tokens.weight[cur, i] = 1.0
            model.lm_head.weight[nxt, i] = 30.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
