"""A tiny chat model that always gives the same well-formed reply: real generation that passes the
pipeline's filters without training a model first (for end-to-end runs that must be fast)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]

REPLY = "Thanks, that is a good question."


def build_talker(path: Path) -> Path:
    """A tiny chat model that answers every chat with REPLY and then ends its turn, whatever the
    sampling: attention and MLP outputs are zeroed, so each next token depends only on the current
    one, and the LM head maps the generation prompt's last token -> REPLY's tokens -> <|im_end|>.
    Real generated text that passes the pipeline's filters, without training a model first."""
    from charter.tiny import build_model, build_tokenizer

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


def charter(*args: str, **kw) -> subprocess.Popen:
    """`charter ARGS` in a fresh process, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "charter.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def tiny_run(talker: Path, run_dir: Path) -> list[str]:
    """`charter run` arguments: the toy preset's stages and judge on the talker, at counts small
    enough for a test (about 5 s of pipeline on a CPU)."""
    return ["run", "--preset", "toy", f"student.model={talker}", "eval.prompts_file=toy", "eval.n_prompts=4",
            "constitutions=[toy:sarcastic]", "prompts.prompts_per_trait=1", "prompts.expansion_rounds=1",
            "distill.sampling.max_new_tokens=16", "reflection.samples_per_prompt=1",
            "reflection.sampling.max_new_tokens=16", "interaction.free=1", "interaction.leading=1",
            "interaction.turns=2", "interaction.sampling.max_new_tokens=16", "eval.max_new_tokens=16",
            "--run-dir", str(run_dir)]
