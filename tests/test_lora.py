"""LoRA: base weights stay bit-identical, and merging is the exact closed-form sum of deltas."""
from __future__ import annotations

import json
import math

import pytest
import torch

from charter.train.lora import LoraSettings, apply_lora, export, linear_module_names, merge_adapters

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def make_adapter(base_dir, out_dir, settings: LoraSettings, seed: int):
    """A PEFT adapter with random non-zero A and B (PEFT inits B = 0, which would hide bugs)."""
    model = apply_lora(load(base_dir), settings)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(out_dir)
    return model.eval()


def lora_pairs(peft_model) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{base weight name: (A, B, scale)} read straight from the live PEFT modules."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            out[key] = (mod.lora_A["default"].weight.detach().double(),
                        mod.lora_B["default"].weight.detach().double(), mod.scaling["default"])
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    a = make_adapter(tiny_model_dir, root / "dpo", LoraSettings(r=4, alpha=8), seed=1)
    b = make_adapter(tiny_model_dir, root / "sft", LoraSettings(r=8, alpha=4, use_rslora=True), seed=2)
    return {"root": root, "dpo": (root / "dpo", lora_pairs(a), a), "sft": (root / "sft", lora_pairs(b), b)}


def test_all_linear_is_every_linear_but_the_lm_head(tiny_model_dir):
    model = load(tiny_model_dir)
    assert linear_module_names(model) == LLAMA_LINEARS
    peft = apply_lora(model, LoraSettings(r=2, alpha=4))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(LLAMA_LINEARS)
    n_linear = sum(isinstance(m, torch.nn.Linear) for n, m in load(tiny_model_dir).named_modules()) - 1
    assert sum(hasattr(m, "lora_A") for m in peft.modules()) == n_linear
    assert not hasattr(peft.base_model.model.lm_head, "lora_A")
    assert LoraSettings(r=64, alpha=128).scale == 2.0 and LoraSettings(r=4, alpha=8, use_rslora=True).scale == 4.0


def test_lora_training_leaves_every_base_weight_bit_identical(tiny_model_dir):
    model = load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))
    peft.train()
    # weight decay on every parameter handed to the optimiser: frozen ones must still not move
    opt = torch.optim.AdamW(peft.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randint(4, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        peft(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    after = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
             for k, v in peft.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    trained = [p for n, p in peft.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained)  # the adapter did learn


def test_weighted_merge_equals_closed_form_sum(tiny_model_dir, adapters, tmp_path):
    (dpo_dir, dpo, _), (sft_dir, sft, _) = adapters["dpo"], adapters["sft"]
    assert math.isclose(next(iter(sft.values()))[2], 4 / math.sqrt(8))  # rsLoRA scale was used
    out = merge_adapters(tiny_model_dir, [(dpo_dir, 1.0), (sft_dir, 0.25)], tmp_path / "merged")
    base, merged = load(tiny_model_dir).state_dict(), load(out).state_dict()
    assert set(dpo) == set(sft) and len(dpo) == 2 * len(LLAMA_LINEARS)
    for key, w in base.items():
        if key in dpo:
            a1, b1, s1 = dpo[key]
            a2, b2, s2 = sft[key]
            expected = w.double() + 1.0 * s1 * (b1 @ a1) + 0.25 * s2 * (b2 @ a2)
            assert (merged[key].double() - expected).abs().max() <= 1e-7 * max(1.0, expected.abs().max()), key
            assert not torch.equal(merged[key], w)
        else:  # embeddings, norms, lm_head: untouched, bit for bit
            assert torch.equal(merged[key], w), key


def test_merged_logits_equal_peft_logits(tiny_model_dir, adapters, tmp_path):
    dpo_dir, _, peft_model = adapters["dpo"]
    out = export(dpo_dir, tmp_path / "exported")  # base read from adapter_config.json
    x = torch.randint(4, 500, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = peft_model(input_ids=x).logits
        got = load(out)(input_ids=x).logits
        base = load(tiny_model_dir)(input_ids=x).logits
    assert (want - base).abs().max() > 1e-3  # the adapter matters...
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # ...and the merge reproduces it


def test_chain_sft_on_dpo_merged_equals_one_shot_merge(tiny_model_dir, adapters, tmp_path):
    """SFT's base is the DPO-merged model; merging is linear, so both routes give the same weights."""
    dpo_dir, sft_dir = adapters["dpo"][0], adapters["sft"][0]
    one_shot = merge_adapters(tiny_model_dir, [(dpo_dir, 1.0), (sft_dir, 0.25)], tmp_path / "one")
    dpo_merged = merge_adapters(tiny_model_dir, [(dpo_dir, 1.0)], tmp_path / "dpo_merged")
    chained = merge_adapters(dpo_merged, [(sft_dir, 0.25)], tmp_path / "chained")
    a, b = load(one_shot).state_dict(), load(chained).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_merged_folder_loads_with_plain_transformers(tiny_model_dir, adapters, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_adapters(tiny_model_dir, [(adapters["dpo"][0], 1.0)], tmp_path / "plain")
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    assert not any(n.endswith(".bin") for n in names)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello there", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3 or tok.eos_token_id in gen[0].tolist()
    record = json.loads((out / "charter_merge.json").read_text())
    assert record["adapters"][0]["weight"] == 1.0 and record["adapters"][0]["scale"] == 2.0


def test_gpt2_conv1d_layers_are_targeted_and_merge_exactly(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    base = load(tmp_path / "gpt2")
    assert linear_module_names(base) == ["c_attn", "c_fc", "c_proj"]
    peft = make_adapter(tmp_path / "gpt2", tmp_path / "ad", LoraSettings(r=2, alpha=4), seed=5)
    out = merge_adapters(tmp_path / "gpt2", [(tmp_path / "ad", 1.0)], tmp_path / "merged")
    x = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(load(out)(input_ids=x).logits, peft(input_ids=x).logits, rtol=0, atol=1e-5)


def test_merge_refuses_what_is_not_a_sum_of_deltas(tiny_model_dir, adapters, tmp_path):
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(adapters["dpo"][0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        merge_adapters(tiny_model_dir, [(bad, 1.0)], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        merge_adapters(tiny_model_dir, [(tmp_path, 1.0)], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bf16_base_is_merged_in_float64_and_rounded_once(tiny_model_dir, adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    dpo_dir, dpo, _ = adapters["dpo"]
    out = merge_adapters(tmp_path / "bf16", [(dpo_dir, 0.5)], tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto").state_dict()
    for key, (a, b, s) in dpo.items():
        assert merged[key].dtype == torch.bfloat16
        assert torch.equal(merged[key], (base[key].double() + 0.5 * s * (b @ a)).to(torch.bfloat16)), key
