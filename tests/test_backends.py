"""hf backend: batched left-padded generation equals per-prompt generation; stop, length, n, seeds."""
from __future__ import annotations

import pytest

from charter.backends import BackendConfig, make_generator
from charter.backends.base import GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0, max_new_tokens=10)


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    return make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir), batch_size=4))


def _requests():
    # different lengths so the batch really is left-padded
    chats = [[{"role": "user", "content": "hello " * (i + 1)}] for i in range(5)]
    return chats + ["The cat is on the", "Tell me a story about the sea and the"]


def test_batched_greedy_equals_per_prompt_greedy(gen):
    reqs = _requests()
    batched = gen.generate(reqs, GREEDY)
    for r, b in zip(reqs, batched):
        single = gen.generate([r], GREEDY)[0][0]
        assert b[0].text == single.text
        assert b[0].completion_tokens == single.completion_tokens == 10
        assert b[0].finish_reason == "length"
    # prompt token counts are the unpadded lengths
    assert [b[0].prompt_tokens for b in batched] == [len(gen.prompt_ids(GenerationRequest(messages=r) if isinstance(r, list)
                                                                       else GenerationRequest(prompt=r))) for r in reqs]
    assert len({b[0].prompt_tokens for b in batched}) > 3


def test_prefill_is_appended_to_the_rendered_prompt(gen):
    msgs = [{"role": "user", "content": "hello"}]
    plain = gen.prompt_ids(GenerationRequest(messages=msgs))
    pre = gen.prompt_ids(GenerationRequest(messages=msgs, prefill="Sure"))
    assert pre[:len(plain)] == plain and len(pre) > len(plain)
    assert gen.tokenizer.decode(plain).endswith("<|im_start|>assistant\n")


def test_stop_string_trims_and_reports_stop(gen):
    req = ["The cat is on the"]
    full = gen.generate(req, SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    assert full.finish_reason == "length"
    stop = full.text[5:8]  # a substring from the middle of the greedy output
    assert stop.strip(), full.text
    cut = gen.generate(req, SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.completion_tokens < 16


def test_eos_token_gives_stop(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.backends.hf import HFGenerator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = HFGenerator(model, tok)
    first = g.generate(["Tell me"], GREEDY)[0][0]
    prompt = torch.tensor([g.prompt_ids(GenerationRequest(prompt="Tell me"))])
    ids = model.generate(prompt, do_sample=False, max_new_tokens=10)[0, prompt.shape[1]:].tolist()
    model.generation_config.eos_token_id = ids[3]  # make the 4th greedy token an end-of-sequence token
    g2 = HFGenerator(model, tok)
    c = g2.generate(["Tell me"], GREEDY)[0][0]
    assert c.finish_reason == "stop" and c.completion_tokens <= 4 and first.text.startswith(c.text)


def test_n_samples_and_seed(gen):
    p = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=8, n=3, seed=7)
    a = gen.generate(["Hello", "The sea"], p)
    b = gen.generate(["Hello", "The sea"], p)
    assert [len(x) for x in a] == [3, 3]
    assert [[c.text for c in x] for x in a] == [[c.text for c in x] for x in b]  # same seed, same samples
    assert len({c.text for c in a[0]}) > 1  # the n samples differ
    assert all(c.finish_reason == "length" and c.completion_tokens == 8 for x in a for c in x)


def test_make_generator_requires_model():
    from charter.config import ConfigError

    with pytest.raises(ConfigError, match="model"):
        make_generator(BackendConfig(kind="hf"))


def test_lora_adapter_is_applied(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.backends.hf import HFGenerator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    reqs = ["The cat is on the", [{"role": "user", "content": "hello"}]]
    base = make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir))).generate(reqs, GREEDY)
    merged = make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir), adapter=str(tmp_path / "adapter")))
    assert merged.name.endswith("adapter")
    with_adapter = merged.generate(reqs, GREEDY)
    unmerged = HFGenerator(peft_model, tok).generate(reqs, GREEDY)  # the PeftModel itself, adapter active
    assert [c[0].text for c in with_adapter] == [c[0].text for c in unmerged]
    assert [c[0].text for c in with_adapter] != [c[0].text for c in base]


def test_sft_adapter_trained_on_dpo_brings_its_dpo_chain(tiny_model_dir, tmp_path):
    """A Charter SFT LoRA trained on a DPO LoRA model, loaded on the plain base with `adapter=`,
    equals the fully merged base+DPO+SFT model (logits and greedy text); SFT alone on the base does not."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from charter.backends.hf import HFGenerator
    from charter.data.jsonl import write_jsonl
    from charter.train.dpo import DPOConfig, train_dpo
    from charter.train.lora import LoraSettings
    from charter.train.sft import SFTConfig, train_sft

    lines = ["the sea is blue.", "cats sleep all day.", "rain falls on the hill.", "bread is warm."]
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": [{"role": "user", "content": a}],
                                            "chosen": [{"role": "assistant", "content": b}],
                                            "rejected": [{"role": "assistant", "content": a}]}
                                           for a, b in zip(lines, lines[1:] + lines[:1])])
    write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": a},
                                                       {"role": "assistant", "content": b}]}
                                         for a, b in zip(lines, reversed(lines))])
    common = dict(lr=3e-2, max_steps=2, batch_size=4, warmup_ratio=0.0, resume=False, lora=LoraSettings(r=4, alpha=8))
    dpo = train_dpo(DPOConfig(model=str(tiny_model_dir), data=str(tmp_path / "pairs.jsonl"),
                              output_dir=str(tmp_path / "dpo"), **common))
    sft = train_sft(SFTConfig(model=str(dpo), data=str(tmp_path / "sft.jsonl"), output_dir=str(tmp_path / "sft"),
                              merge=True, **common))

    chained = HFGenerator(str(tiny_model_dir), adapter=str(sft))
    merged = HFGenerator(str(sft / "merged"))
    sft_only = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         str(sft / "stage_adapter")).merge_and_unload()
    ids = torch.tensor([merged.prompt_ids(GenerationRequest(messages=[{"role": "user", "content": lines[0]}]))])
    with torch.no_grad():
        want = merged.model(ids).logits
        assert torch.allclose(chained.model(ids).logits, want, atol=1e-5)
        assert not torch.allclose(sft_only(ids).logits, want, atol=1e-3)  # the bug: DPO silently dropped
    reqs = [[{"role": "user", "content": x}] for x in lines]
    assert [c[0].text for c in chained.generate(reqs, GREEDY)] == [c[0].text for c in merged.generate(reqs, GREEDY)]
    # the adapter folder alone (as `charter chat` loads it) resolves the same chain
    from charter.backends.hf import load_causal_lm

    alone, _ = load_causal_lm(str(sft))
    with torch.no_grad():
        assert torch.allclose(alone(ids).logits, want, atol=1e-5)


def test_vllm_refuses_an_adapter_trained_on_other_adapters(tmp_path):
    """vLLM's LoRARequest stacks nothing: a chained SFT adapter must be merged first, not silently cut."""
    import json

    from charter.backends.vllm import VLLMGenerator
    from charter.config import ConfigError
    from charter.train.loop import TRAIN_RECORD

    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / TRAIN_RECORD).write_text(json.dumps({"kind": "sft", "base_model": "base", "base_adapters": ["dpo"]}))
    with pytest.raises(ConfigError, match="trained on top of dpo"):
        VLLMGenerator("base", adapter=str(sft))
