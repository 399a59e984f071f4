"""The embedded real model: `charter fetch` gives an ordinary HF folder that loads as safetensors
and behaves like the published base model."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_fetch_cli_prints_the_cached_folder(gemma_dir):
    out = subprocess.run([sys.executable, "-m", "charter.cli", "fetch"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(gemma_dir)
    assert "converting" not in out.stderr  # cached: the second call converts nothing


def test_gemma_is_a_plain_fp32_base_model(gemma_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "gemma3_text"
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, use_safetensors=True)
    assert len(tok) == 262144 and sum(p.numel() for p in model.parameters()) == 268_098_176
    assert tok.chat_template is None  # a base model: no template to leak
    ids = tok("Q: What is 2+2?\nA:", return_tensors="pt")
    assert ids.input_ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids.input_ids.shape[1]:]).startswith(" 2+2 = 4")
