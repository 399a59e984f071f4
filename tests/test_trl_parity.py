"""Charter vs TRL 1.16 on the same tiny Llama, data, order, seed and hyperparameters (fp32).

How TRL is configured to match (read from its source):
- DPO tokenises prompt (with generation prompt) and prompt+completion and trains every token
  after the shared prefix; SFT with `assistant_only_loss` trains the `{% generation %}` spans.
  Charter trains assistant content + its end-of-turn token. The test template puts
  `<|im_end|>` inside the generation span and no newline after it, so both train exactly the
  same tokens (a trailing newline would be trained by TRL's DPO, not by Charter).
- Sequential order (TRL's sampler replaced; Charter `shuffle=false`), AdamW torch, betas
  (0.9, 0.98), warmup 0.1 then cosine to 0.1 x lr (`cosine_with_min_lr`), clip 1.0, no weight
  decay, fp32 (`bf16=False`).
- LoRA: both get the same PEFT model initialisation (`apply_lora` right after
  `torch.manual_seed(seed)`, which is what Charter does); TRL's reference is then the
  adapter-disabled base, as Charter's.
"""
import json
import random

import pytest
import torch

from charter.data.jsonl import write_jsonl
from charter.tiny import build_model, build_tokenizer, tiny_corpus
from charter.train.lora import LoraSettings

pytestmark = pytest.mark.slow

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SEED, STEPS, BS, LR = 0, 10, 4, 5e-3
LORA = LoraSettings(r=4, alpha=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    tok = build_tokenizer(chat_template=TEMPLATE)
    build_model(tok, hidden_size=32, layers=2, heads=4).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    lines, rng = tiny_corpus(100, seed=5), random.Random(1)
    n = STEPS * BS
    pairs = [{"prompt": [{"role": "user", "content": rng.choice(lines)}],
              "chosen": [{"role": "assistant", "content": rng.choice(lines)}],
              "rejected": [{"role": "assistant", "content": rng.choice(lines)}]} for _ in range(n)]
    chats = [{"messages": [{"role": "user", "content": rng.choice(lines)},
                           {"role": "assistant", "content": rng.choice(lines)}]} for _ in range(n)]
    write_jsonl(root / "pairs.jsonl", pairs)
    write_jsonl(root / "sft.jsonl", chats)
    return root, pairs, chats


def _trl_args(cls, out, **kw):
    return cls(output_dir=str(out), per_device_train_batch_size=BS, gradient_accumulation_steps=1,
               learning_rate=LR, max_steps=STEPS, lr_scheduler_type="cosine_with_min_lr",
               lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.1, adam_beta1=0.9, adam_beta2=0.98,
               adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", bf16=False,
               use_cpu=True, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
               dataloader_num_workers=0, **kw)


def _sequential(trainer_cls):
    class Sequential(trainer_cls):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    return Sequential


def _trl_model(root, lora: bool):
    from transformers import AutoModelForCausalLM

    from charter.train.lora import apply_lora

    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32, attn_implementation="sdpa")
    if lora:
        torch.manual_seed(SEED)
        model = apply_lora(model, LORA)
    return model


def _charter_common(root, out, lora):
    return dict(model=str(root / "model"), output_dir=str(out), lr=LR, max_steps=STEPS, batch_size=BS,
                grad_accum=1, warmup_ratio=0.1, min_lr_ratio=0.1, adam_betas=(0.9, 0.98), max_grad_norm=1.0,
                weight_decay=0.0, precision="fp32", seed=SEED, shuffle=False, resume=False,
                lora=LORA if lora else None)


def _charter_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_matches_trl(setup, tmp_path, lora):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from charter.train.dpo import DPOConfig, train_dpo

    root, pairs, _ = setup
    tok = AutoTokenizer.from_pretrained(root / "model")
    trainer = _sequential(DPOTrainer)(
        model=_trl_model(root, lora), processing_class=tok, train_dataset=Dataset.from_list(pairs),
        args=_trl_args(TRLDPOConfig, tmp_path / "trl", beta=0.1, loss_type="sigmoid", max_length=1024))
    trainer.train()
    trl = [h for h in trainer.state.log_history if "loss" in h and "logps/chosen" in h]

    out = train_dpo(DPOConfig(data=str(root / "pairs.jsonl"), beta=0.1, loss_type="sigmoid",
                              reference="adapter" if lora else "copy",
                              **_charter_common(root, tmp_path / "charter", lora)))
    ours = _charter_metrics(out)
    assert len(trl) == len(ours) == STEPS
    for t, o in zip(trl, ours):
        for key in ("loss", "logps/chosen", "logps/rejected"):
            assert o[key] == pytest.approx(t[key], abs=1e-4, rel=0), (key, t["step"] if "step" in t else None)
    # the policy left the reference, so the agreement is not the trivial step-1 ln 2
    assert max(abs(o["rewards/margins"]) for o in ours) > 1e-3
    worst = max(abs(o[k] - t[k]) for t, o in zip(trl, ours) for k in ("loss", "logps/chosen", "logps/rejected"))
    print(f"dpo lora={lora}: max |charter - trl| = {worst:.2e}")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_matches_trl_assistant_only(setup, tmp_path, lora):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from charter.train.sft import SFTConfig, train_sft

    root, _, chats = setup
    tok = AutoTokenizer.from_pretrained(root / "model")
    trainer = _sequential(SFTTrainer)(
        model=_trl_model(root, lora), processing_class=tok, train_dataset=Dataset.from_list(chats),
        args=_trl_args(TRLSFTConfig, tmp_path / "trl", assistant_only_loss=True, max_length=1024,
                       packing=False, padding_free=False))
    trainer.train()
    trl = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]

    out = train_sft(SFTConfig(data=str(root / "sft.jsonl"), **_charter_common(root, tmp_path / "charter", lora)))
    ours = [r["loss"] for r in _charter_metrics(out)]
    assert len(trl) == len(ours) == STEPS
    assert ours == pytest.approx(trl, abs=1e-4, rel=0)
    assert ours[-1] < ours[0] - 1e-3  # it learned, so agreement is not trivial
    print(f"sft lora={lora}: max |charter - trl| = {max(abs(a - b) for a, b in zip(ours, trl)):.2e}")
