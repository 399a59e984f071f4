"""Reward model (Bradley-Terry, SPEC §4/§8): a scalar head on any causal LM, trained on preference pairs.

The model is `AutoModelForSequenceClassification` with `num_labels=1`: the head reads the last
non-padding token, exactly as it will for anyone who loads the saved folder with transformers
(the pooling at training time is the pooling at use time). Chosen and rejected sequences are the
full conversations (prompt + reply), right-padded, in one forward. With LoRA the adapters and
the head train together and the export is merged, so the folder is a plain reward model.
Held-out pairs (`eval_data`) give the pairwise accuracy in `rm_eval.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from peft import LoraConfig, get_peft_model
from pydantic import Field
from transformers import AutoModelForSequenceClassification

from charter.chat import EncodedChat
from charter.data.jsonl import atomic_write_json
from charter.models import load_tokenizer, merged_state, resolve_model
from charter.train.data import Pair, load_pairs
from charter.train.lora import linear_module_names
from charter.train.losses import bradley_terry_loss
from charter.train.loop import TrainConfig, run

RM_EVAL = "rm_eval.json"


class RMConfig(TrainConfig):
    margin: float = 0.0                        # subtracted from r_c - r_r
    center_coef: float = Field(0.0, ge=0)      # reward centring, eta (r_c + r_r)^2; ~0.01
    eval_data: str | None = None               # held-out pairs: pairwise accuracy after training


def load_reward_model(cfg: TrainConfig):
    """`load` hook of the loop: the causal LM folder (earlier adapters folded in) with a fresh
    scalar head, and LoRA on its linear layers with the head fully trained."""
    ref = resolve_model(cfg.model)
    tokenizer = load_tokenizer(ref.tokenizer, cfg.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        ref.base, num_labels=1, dtype=torch.float32, use_safetensors=True,
        attn_implementation=cfg.attn_implementation)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head finds the last token by it
    if ref.adapters:
        merged_state(model, [(a, 1.0) for a in ref.adapters])
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = _lora_with_head(model, cfg)
    return model, tokenizer, ref.base_name, list(ref.adapters)


def _lora_with_head(model, cfg: TrainConfig):
    head = [n for n, m in model.named_modules() if m is model.score][0].rsplit(".", 1)[-1]
    targets = ([n for n in linear_module_names(model) if n != head] if cfg.lora.target_modules == "all-linear"
               else list(cfg.lora.target_modules))
    peft_cfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=targets, use_rslora=cfg.lora.use_rslora, bias="none",
                          modules_to_save=[head], task_type="SEQ_CLS")
    return get_peft_model(model, peft_cfg)


def export_reward_model(model, tokenizer, out: Path, cfg: TrainConfig, base: str, folded: list) -> dict:
    """`export` hook of the loop: full weights (LoRA merged in), loadable with
    `AutoModelForSequenceClassification.from_pretrained(out)`."""
    if cfg.lora is not None:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"base_adapters": [str(a) for a in folded], "merged_lora": cfg.lora is not None}


def pad_right(seqs: Sequence[EncodedChat], pad_id: int, device):
    """(input_ids, attention_mask), right-padded (the head reads the last non-padding token)."""
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s.input_ids)] = torch.tensor(s.input_ids)
        mask[i, :len(s.input_ids)] = 1
    return ids.to(device), mask.to(device)


def sequence_rewards(model, seqs: Sequence[EncodedChat], pad_id: int):
    """One scalar reward per sequence, shape [n]."""
    device = next(model.parameters()).device
    ids, mask = pad_right(seqs, pad_id, device)
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()


class RMTask:
    def __init__(self, items: list[Pair], cfg: RMConfig, pad_id: int):
        self.items, self.cfg, self.pad_id = items, cfg, pad_id

    def window_norm(self, window: Sequence[Pair]) -> dict[str, float]:
        return {"pairs": float(len(window))}

    def micro_loss(self, model, items: Sequence[Pair], norm: dict[str, float], world: int):
        b = len(items)
        rewards = sequence_rewards(model, [p.chosen for p in items] + [p.rejected for p in items], self.pad_id)
        rc, rr = rewards[:b], rewards[b:]
        label_prob = None
        if any(p.label_prob is not None for p in items):
            label_prob = torch.tensor([1.0 if p.label_prob is None else p.label_prob for p in items],
                                      device=rewards.device)
        losses = bradley_terry_loss(rc, rr, self.cfg.margin, self.cfg.center_coef, label_prob)
        d = (rc - rr).detach()
        sums = {"loss_sum": losses.detach().sum().item(), "pairs": float(b), "acc_sum": (d > 0).sum().item(),
                "margin_sum": d.sum().item(), "reward_sum": rewards.detach().sum().item(),
                "tokens": float(sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in items))}
        return losses.sum() / norm["pairs"] * world, sums

    def metrics(self, s: dict[str, float]) -> dict[str, float]:
        n = max(1.0, s["pairs"])
        return {"loss": s["loss_sum"] / n, "accuracy": s["acc_sum"] / n, "margin": s["margin_sum"] / n,
                "mean_reward": s["reward_sum"] / (2 * n), "num_tokens": s["tokens"]}


def build_rm_task(cfg: RMConfig) -> Callable:
    def factory(model, tokenizer, accelerator):
        items, dropped = load_pairs(cfg.data, tokenizer, cfg.max_length, cfg.chat)
        if dropped and accelerator.is_main_process:
            print(f"rm: dropped {dropped} pairs with no trainable token left (max_length={cfg.max_length})")
        return RMTask(items, cfg, tokenizer.pad_token_id)

    return factory


def pairwise_accuracy(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> dict[str, float]:
    """Share of pairs with r_c > r_r (strict: ties are wrong), and the mean margin."""
    correct, margin = 0, 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            r = sequence_rewards(model, [p.chosen for p in chunk] + [p.rejected for p in chunk], tokenizer.pad_token_id)
            d = r[:len(chunk)] - r[len(chunk):]
            correct += int((d > 0).sum())
            margin += float(d.sum())
    return {"n": len(pairs), "accuracy": correct / len(pairs), "margin": margin / len(pairs)}


def train_rm(cfg: RMConfig, on_step: Callable | None = None) -> Path:
    """Train; with `eval_data`, score held-out pairs with the SAVED model (what users will load)."""
    out = run(cfg, build_rm_task(cfg), "rm", on_step, load=load_reward_model, export=export_reward_model)
    if cfg.eval_data:
        model = AutoModelForSequenceClassification.from_pretrained(out)
        tokenizer = load_tokenizer(out)
        pairs, _ = load_pairs(cfg.eval_data, tokenizer, cfg.max_length, cfg.chat)
        atomic_write_json(out / RM_EVAL, {"eval_data": cfg.eval_data, **pairwise_accuracy(model, tokenizer, pairs)})
    return out
