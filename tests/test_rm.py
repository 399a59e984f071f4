"""Reward model: Bradley-Terry on a scalar head, saved for AutoModelForSequenceClassification; TRL parity."""
import json
import random

import pytest
import torch

from charter.data.jsonl import write_jsonl
from charter.tiny import tiny_corpus
from charter.train.lora import LoraSettings
from charter.train.rm import RM_EVAL, RMConfig, pairwise_accuracy, sequence_rewards, train_rm


def _pairs(n, seed):
    """Chosen replies end in "!", rejected in "?" (a feature a tiny model can learn)."""
    lines, rng = tiny_corpus(200, seed=seed), random.Random(seed)
    out = []
    for _ in range(n):
        body = rng.choice(lines)[:-1]
        out.append({"prompt": [{"role": "user", "content": rng.choice(lines)}],
                    "chosen": [{"role": "assistant", "content": body + " happy happy!"}],
                    "rejected": [{"role": "assistant", "content": body + " sad sad?"}]})
    return out


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rm_trains_saves_loadable_and_reports_heldout_accuracy(tiny_model_dir, tmp_path, lora):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from charter.train.data import load_pairs

    write_jsonl(tmp_path / "train.jsonl", _pairs(32, 0))
    write_jsonl(tmp_path / "eval.jsonl", _pairs(16, 1))
    seen = {}

    cfg = RMConfig(model=str(tiny_model_dir), data=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "rm"),
                   eval_data=str(tmp_path / "eval.jsonl"), lr=3e-3 if lora else 1e-3, max_steps=12, batch_size=8,
                   center_coef=0.01, resume=False, lora=LoraSettings(r=4, alpha=8) if lora else None)
    out = train_rm(cfg, on_step=lambda step, row: seen.setdefault(step, row))
    rows = _metrics(out)
    # the loaded folder is a plain sequence classifier with one label
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1 and not (out / "adapter_config.json").exists()
    pairs, _ = load_pairs(tmp_path / "eval.jsonl", tok, 1024)
    acc = pairwise_accuracy(model, tok, pairs)
    assert json.loads((out / RM_EVAL).read_text())["accuracy"] == pytest.approx(acc["accuracy"])
    assert acc["accuracy"] >= 0.9, acc  # learned the feature, on pairs it never saw
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.05
    assert set(rows[0]) >= {"loss", "accuracy", "margin", "mean_reward", "grad_norm", "learning_rate"}


def test_rm_loss_is_bradley_terry_of_the_model_rewards(tiny_model_dir, tmp_path):
    """Step-1 loss logged by the trainer = the closed-form loss of the starting model's rewards."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from charter.train.data import load_pairs

    rows = _pairs(8, 3)
    write_jsonl(tmp_path / "d.jsonl", rows)
    torch.manual_seed(0)
    init = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    init.config.pad_token_id = tok.pad_token_id
    init.save_pretrained(tmp_path / "init")
    tok.save_pretrained(tmp_path / "init")
    pairs, _ = load_pairs(tmp_path / "d.jsonl", tok, 1024)
    with torch.no_grad():
        r = sequence_rewards(init.eval(), [p.chosen for p in pairs] + [p.rejected for p in pairs], tok.pad_token_id)
    rc, rr = r[:8].double(), r[8:].double()
    want = (-torch.nn.functional.logsigmoid(rc - rr - 0.5) + 0.1 * (rc + rr) ** 2).mean().item()
    out = train_rm(RMConfig(model=str(tmp_path / "init"), data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path / "o"),
                            max_steps=1, batch_size=8, margin=0.5, center_coef=0.1, shuffle=False, resume=False))
    row = _metrics(out)[0]
    assert row["loss"] == pytest.approx(want, abs=1e-5)
    assert row["accuracy"] == pytest.approx(((rc - rr) > 0).double().mean().item())


@pytest.mark.slow
def test_rm_matches_trl_reward_trainer(tiny_model_dir, tmp_path):
    """Same sequence-classification init, data, order and optimiser as TRL's RewardTrainer: the
    logged loss, accuracy and margin agree step by step. Tolerance: AdamW's first steps move each
    weight by ~lr whatever the gradient's size, so fp32 summation-order noise in the gradient can
    flip tiny components; 1e-4 on an O(1) loss after 8 steps at lr 1e-3 leaves room for that only."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    rows = _pairs(32, 4)
    write_jsonl(tmp_path / "d.jsonl", rows)
    torch.manual_seed(0)
    init = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    init.config.pad_token_id = tok.pad_token_id
    init.save_pretrained(tmp_path / "init")
    tok.save_pretrained(tmp_path / "init")

    class Sequential(RewardTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    args = RewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, learning_rate=1e-3,
                        max_steps=8, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
                        warmup_steps=0.1, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-8, weight_decay=0.0,
                        max_grad_norm=1.0, optim="adamw_torch", bf16=False, use_cpu=True, seed=0, logging_steps=1,
                        save_strategy="no", report_to="none", center_rewards_coefficient=0.01, max_length=1024,
                        dataloader_num_workers=0)
    trainer = Sequential(model=AutoModelForSequenceClassification.from_pretrained(tmp_path / "init"),
                         processing_class=AutoTokenizer.from_pretrained(tmp_path / "init"),
                         train_dataset=Dataset.from_list(rows), args=args)
    trainer.train()
    trl = [h for h in trainer.state.log_history if "loss" in h and "accuracy" in h]
    out = train_rm(RMConfig(model=str(tmp_path / "init"), data=str(tmp_path / "d.jsonl"), output_dir=str(tmp_path / "c"),
                            lr=1e-3, max_steps=8, batch_size=4, warmup_ratio=0.1, min_lr_ratio=0.1,
                            adam_betas=(0.9, 0.98), center_coef=0.01, shuffle=False, resume=False))
    ours = _metrics(out)
    assert len(trl) == len(ours) == 8
    for t, o in zip(trl, ours):
        for key in ("loss", "accuracy", "margin"):
            assert o[key] == pytest.approx(t[key], abs=1e-4), (key, t, o)
    assert ours[-1]["loss"] < ours[0]["loss"] - 1e-3  # it moved, so agreement is not trivial
