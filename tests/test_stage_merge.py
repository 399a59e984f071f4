"""The merge stage: base + w_dpo * (DPO delta) + w_sft * (SFT delta), exactly, whether each stage
is a LoRA adapter or full weights, in either order. Expected weights come from PEFT's own merge."""
from pathlib import Path

import pytest

from charter.data.jsonl import write_jsonl
from charter.train.dpo import DPOConfig, train_dpo
from charter.train.lora import LoraSettings
from charter.train.sft import SFTConfig, train_sft
from charter.train.stage_merge import merge_stages

LINES = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]
LORA = LoraSettings(r=4, alpha=8)


def _state(model_or_dir):
    """{parameter: float64 tensor} of a model, or of the model folder at a path."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_or_dir) if isinstance(model_or_dir, (str, Path)) \
        else model_or_dir
    return {k: v.detach().double() for k, v in model.named_parameters()}


def _with_adapter(model_or_dir, adapter):
    """The model PEFT builds from a base and an adapter (merge_and_unload): independent of Charter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_or_dir) if isinstance(model_or_dir, (str, Path)) \
        else model_or_dir
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "pairs.jsonl", [{"prompt": [{"role": "user", "content": a}],
                                     "chosen": [{"role": "assistant", "content": b}],
                                     "rejected": [{"role": "assistant", "content": a}]}
                                    for a, b in zip(LINES, LINES[1:] + LINES[:1])])
    write_jsonl(d / "sft.jsonl", [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
                                  for a, b in zip(LINES, reversed(LINES))])
    return d


def _train(tiny_model_dir, data, tmp_path, dpo_lora: bool, sft_lora: bool):
    common = dict(lr=3e-2, max_steps=2, batch_size=4, warmup_ratio=0.0, resume=False)
    dpo = train_dpo(DPOConfig(model=str(tiny_model_dir), data=str(data / "pairs.jsonl"),
                              output_dir=str(tmp_path / "dpo"), lora=LORA if dpo_lora else None, **common))
    sft = train_sft(SFTConfig(model=str(dpo), data=str(data / "sft.jsonl"), output_dir=str(tmp_path / "sft"),
                              lora=LORA if sft_lora else None, **common))
    return dpo, sft


@pytest.mark.parametrize("dpo_lora,sft_lora", [(True, False), (False, True), (True, True)],
                         ids=["lora-dpo+full-sft", "full-dpo+lora-sft", "lora-dpo+lora-sft"])
def test_mixed_lora_and_full_merge_exactly(tiny_model_dir, data, tmp_path, dpo_lora, sft_lora):
    dpo, sft = _train(tiny_model_dir, data, tmp_path, dpo_lora, sft_lora)
    base = _state(tiny_model_dir)
    dpo_model = _with_adapter(tiny_model_dir, dpo) if dpo_lora else dpo  # a model, or the full-weights folder
    dpo_state = _state(dpo_model)
    if sft_lora:  # its own delta (stage_adapter/ when the folder's adapter folds the chain), on its start
        own = sft / "stage_adapter" if dpo_lora else sft
        after = _state(_with_adapter(dpo_model, own))  # (merges into dpo_model in place: read last)
        sft_delta = {k: after[k] - dpo_state[k] for k in base}
    else:
        sft_delta = {k: v - dpo_state[k] for k, v in _state(sft).items()}
    for w_dpo, w_sft in ((1.0, 0.25), (0.5, 2.0)):
        out = merge_stages(tiny_model_dir, [(dpo, w_dpo), (sft, w_sft)], tmp_path / f"m{w_dpo}")
        got = _state(out)
        for k, b in base.items():
            want = b + w_dpo * (dpo_state[k] - b) + w_sft * sft_delta[k]
            assert (got[k] - want).abs().max() <= 1e-6 * max(1.0, want.abs().max().item()), (k, w_dpo)
    # weights 1, 1 reproduce the SFT model itself
    one = _state(merge_stages(tiny_model_dir, [(dpo, 1.0), (sft, 1.0)], tmp_path / "one"))
    final = _state(sft) if not sft_lora else {k: dpo_state[k] + sft_delta[k] for k in base}
    assert max((one[k] - final[k]).abs().max().item() for k in base) <= 1e-6
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (sft_delta[q].abs().max() > 1e-4) and ((dpo_state[q] - base[q]).abs().max() > 1e-4)  # both moved


def test_merging_a_chained_adapter_next_to_its_chain_is_refused(tiny_model_dir, data, tmp_path):
    """`charter merge BASE dpo:1 sft:0.25` with an SFT adapter that already folds DPO would count
    DPO twice: refused with the path of SFT's own delta."""
    from charter.train.lora import merge_adapters

    dpo, sft = _train(tiny_model_dir, data, tmp_path, True, True)
    with pytest.raises(ValueError, match="stage_adapter"):
        merge_adapters(tiny_model_dir, [(dpo, 1.0), (sft, 0.25)], tmp_path / "x")
    got = _state(merge_adapters(tiny_model_dir, [(dpo, 1.0), (sft / "stage_adapter", 0.25)], tmp_path / "a"))
    want = _state(merge_stages(tiny_model_dir, [(dpo, 1.0), (sft, 0.25)], tmp_path / "b"))
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-6
