"""Direct Preference Optimisation (SPEC §4): sigmoid/ipo/hinge/robust, NLL on chosen, squared KL;
and the reference-free preference losses on the same pairs, ORPO and SimPO (`loss_type`).

Chosen and rejected completions of a micro-batch go through the model in ONE packed forward.
The reference is, by `reference`:
- `auto`: the adapter-disabled base under LoRA, else `precomputed`;
- `adapter`: LoRA only, the base with the adapter disabled (computed live);
- `copy`: a frozen copy of the starting model (computed live);
- `precomputed`: log-probs of the starting model computed once before training and cached on
  disk, keyed by a hash of the data, the model weights and the encoding settings.
"""
from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Literal, Sequence

from pydantic import Field, model_validator

from charter.data.jsonl import file_hash, stable_id
from charter.data.sources import data_hash
from charter.models import resolve_model
from charter.train.batching import Packed, check_packing, pack, packed_token_logps, supports_head_hook
from charter.train.data import Pair, load_pairs
from charter.train.loop import TrainConfig, run
from charter.train.losses import LOSS_TYPES, DPOLossOutput, dpo_loss, nll_loss, orpo_loss, simpo_loss, squared_kl

REFERENCE_FREE = ("orpo", "simpo")  # preference losses on mean log-probs with no reference model


class DPOConfig(TrainConfig):
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "orpo", "simpo"] = "sigmoid"  # orpo: beta is lambda
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    nll_coef: float = Field(0.0, ge=0)        # the paper: 0.1
    kl_coef: float = Field(0.0, ge=0)         # squared-KL regulariser; the paper: 0.001
    reference: Literal["auto", "adapter", "copy", "precomputed"] = "auto"
    ref_cache_dir: str | None = None          # default: <output_dir>/ref_cache
    # SimPO's target margin; left out of dumps while unset, so DPO configs hash as before it existed
    simpo_gamma: float | None = Field(None, ge=0, exclude_if=lambda v: v is None)  # None = 0.5 (TRL's default)

    @model_validator(mode="after")
    def _check_dpo(self):
        assert self.loss_type in LOSS_TYPES + REFERENCE_FREE
        if self.loss_type in REFERENCE_FREE and self.kl_coef:
            raise ValueError(f"kl_coef: loss_type {self.loss_type!r} has no reference model to stay close to")
        if self.simpo_gamma is not None and self.loss_type != "simpo":
            raise ValueError("simpo_gamma: only meaningful with loss_type 'simpo'")
        if self.reference == "adapter" and self.lora is None:
            raise ValueError("reference: 'adapter' needs lora (full fine-tuning has no adapter to disable)")
        return self

    def resolved_reference(self) -> str:
        if self.loss_type in REFERENCE_FREE:
            return "none"
        if self.reference != "auto":
            return self.reference
        return "adapter" if self.lora is not None else "precomputed"


# ----------------------------------------------------------------------------- reference log-probs


def _ref_cache_key(cfg: DPOConfig, tokenizer) -> str:
    ref = resolve_model(cfg.model)
    weights = sorted(p for d in [ref.base, *ref.adapters] for p in d.glob("*.safetensors"))
    return stable_id(data_hash(cfg.data), [file_hash(w) for w in weights], cfg.max_length, cfg.precision,
                     cfg.kl_coef > 0, tokenizer.chat_template, cfg.chat, len(tokenizer))


def precompute_reference(model, pairs: list[Pair], cfg: DPOConfig, tokenizer, accelerator, keep_only: bool):
    """{"chosen": [n], "rejected": [n]} and, with the squared KL, "tokens": every trained token's
    log-prob in input order (chosen 0..n-1, then rejected 0..n-1) with "offsets" [2n+1] into it.
    Computed by the starting model (adapter disabled under LoRA) in eval mode; cached as safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cfg.ref_cache_dir or Path(cfg.output_dir) / "ref_cache")
    path = cache_dir / f"ref-logps-{_ref_cache_key(cfg, tokenizer)}.safetensors"
    if not path.exists() and accelerator.is_main_process:
        from tqdm.auto import tqdm

        n = len(pairs)
        seqs: list[torch.Tensor] = []
        toks: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": []}
        lora_off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
        was_training = model.training
        model.eval()
        with torch.no_grad(), lora_off, accelerator.autocast():
            for i in tqdm(range(0, n, cfg.batch_size), desc="reference log-probs"):
                chunk = pairs[i:i + cfg.batch_size]
                batch = pack([p.chosen for p in chunk] + [p.rejected for p in chunk]).to(accelerator.device)
                tok = packed_token_logps(model, batch, keep_only).double()
                seqs.append(batch.per_seq(tok).cpu())
                parts = torch.split(tok[batch.input_order()].cpu(), batch.tokens_per_seq().tolist())
                toks["chosen"] += parts[:len(chunk)]
                toks["rejected"] += parts[len(chunk):]
        model.train(was_training)
        seq = torch.cat([s.view(2, -1) for s in seqs], dim=1)
        out = {"chosen": seq[0].contiguous(), "rejected": seq[1].contiguous()}
        if cfg.kl_coef > 0:
            every = toks["chosen"] + toks["rejected"]
            out["tokens"] = torch.cat(every)
            out["offsets"] = torch.tensor([0] + [len(t) for t in every]).cumsum(0)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(out, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))


# ----------------------------------------------------------------------------- the task


def reference_free_loss(cfg: DPOConfig, mean_logps, b: int) -> DPOLossOutput:
    """ORPO or SimPO from the mean token log-probs of chosen ([:b]) and rejected ([b:]); the
    rewards are beta x mean log-prob, as TRL's ORPO and CPO trainers log them."""
    c, r = mean_logps[:b], mean_logps[b:]
    if cfg.loss_type == "orpo":
        losses, _ = orpo_loss(c, r, lam=cfg.beta)
    else:
        losses = simpo_loss(c, r, beta=cfg.beta, gamma=0.5 if cfg.simpo_gamma is None else cfg.simpo_gamma)
    return DPOLossOutput(losses, (cfg.beta * c).detach(), (cfg.beta * r).detach())


class DPOTask:
    def __init__(self, items: list[Pair], cfg: DPOConfig, keep_only: bool, mode: str,
                 ref_model=None, cached=None):
        self.items, self.cfg, self.keep_only, self.mode = items, cfg, keep_only, mode
        self.ref_model, self.cached = ref_model, cached

    def window_norm(self, window: Sequence[Pair]) -> dict[str, float]:
        toks = sum(p.chosen.n_trainable + p.rejected.n_trainable for p in window)
        return {"pairs": float(len(window)), "tokens": float(toks)}

    def _reference(self, model, batch: Packed, items: Sequence[Pair]):
        """(per-sequence ref log-probs [2b], per-token ref log-probs [K] or None)."""
        import torch

        if self.mode == "precomputed":
            device = batch.input_ids.device
            idx = torch.tensor([p.index for p in items])
            seq = torch.cat([self.cached["chosen"][idx], self.cached["rejected"][idx]]).to(device)
            if "tokens" not in self.cached:
                return seq, None
            n, at = len(self.cached["chosen"]), self.cached["offsets"]
            rows = idx.tolist() + [n + i for i in idx.tolist()]  # the batch's sequences, input order
            flat = torch.cat([self.cached["tokens"][at[r]:at[r + 1]] for r in rows]).to(device)
            tok = torch.empty_like(flat)
            tok[batch.input_order()] = flat  # back into this batch's packed order
            return seq, tok
        with torch.no_grad():
            if self.mode == "adapter":
                from accelerate.utils import extract_model_from_parallel

                with extract_model_from_parallel(model).disable_adapter():
                    tok = packed_token_logps(model, batch, self.keep_only)
            else:
                tok = packed_token_logps(self.ref_model, batch, self.keep_only)
        return batch.per_seq(tok.double()), tok

    def micro_loss(self, model, items: Sequence[Pair], norm: dict[str, float], world: int):
        import torch

        cfg, b = self.cfg, len(items)
        device = next(model.parameters()).device
        batch = pack([p.chosen for p in items] + [p.rejected for p in items]).to(device)
        tok = packed_token_logps(model, batch, self.keep_only)          # one forward, chosen + rejected
        seq, ntok = batch.per_seq(tok.double()), batch.tokens_per_seq()
        if self.mode == "none":
            ref_tok, out = None, reference_free_loss(cfg, seq / ntok.clamp(min=1), b)
        else:
            ref_seq, ref_tok = self._reference(model, batch, items)
            label_prob = None
            if any(p.label_prob is not None for p in items):
                label_prob = torch.tensor([1 - cfg.label_smoothing if p.label_prob is None else p.label_prob
                                           for p in items], dtype=torch.float64, device=device)
            out = dpo_loss(seq[:b], seq[b:], ref_seq[:b], ref_seq[b:], cfg.beta, cfg.loss_type,
                           cfg.label_smoothing, label_prob, ntok[:b], ntok[b:])
        per_pair = out.losses
        nll = nll_loss(seq[:b], ntok[:b])
        if cfg.nll_coef:
            per_pair = per_pair + cfg.nll_coef * nll
        loss = per_pair.sum() / norm["pairs"]
        kl = torch.zeros((), dtype=torch.float64, device=device)
        if cfg.kl_coef:
            kl = squared_kl(tok.double(), ref_tok.double(), torch.ones_like(tok), normalizer=norm["tokens"])
            loss = loss + cfg.kl_coef * kl
        c, r = out.chosen_rewards, out.rejected_rewards
        sums = {"loss_sum": per_pair.detach().sum().item() + cfg.kl_coef * kl.item() * norm["pairs"],
                "pairs": float(b), "tokens": float(tok.numel()), "kl_sum": kl.item() * norm["pairs"],
                "rc_sum": c.sum().item(), "rr_sum": r.sum().item(), "acc_sum": (c > r).double().sum().item(),
                "lpc_sum": seq[:b].detach().sum().item(), "lpr_sum": seq[b:].detach().sum().item(),
                "nll_sum": nll.detach().sum().item()}
        return (loss * world).float(), sums

    def metrics(self, s: dict[str, float]) -> dict[str, float]:
        n = max(1.0, s["pairs"])
        m = {"loss": s["loss_sum"] / n, "rewards/chosen": s["rc_sum"] / n, "rewards/rejected": s["rr_sum"] / n,
             "rewards/accuracies": s["acc_sum"] / n, "rewards/margins": (s["rc_sum"] - s["rr_sum"]) / n,
             "logps/chosen": s["lpc_sum"] / n, "logps/rejected": s["lpr_sum"] / n, "nll": s["nll_sum"] / n,
             "num_tokens": s["tokens"]}
        if self.cfg.kl_coef:
            m["sq_kl"] = s["kl_sum"] / n
        return m


def build_dpo_task(cfg: DPOConfig) -> Callable:
    def factory(model, tokenizer, accelerator):
        items, dropped = load_pairs(cfg.data, tokenizer, cfg.max_length, cfg.chat)
        if cfg.loss_type != "sigmoid" and any(p.label_prob is not None for p in items):
            raise ValueError(f"{cfg.data}: label_prob (soft labels) needs loss_type 'sigmoid'")
        if dropped and accelerator.is_main_process:
            print(f"dpo: dropped {dropped} pairs with no trainable token left (max_length={cfg.max_length})")
        keep_only = cfg.keep_logits_only_for_targets and supports_head_hook(model)
        check_packing(model, [items[0].chosen, items[0].rejected], keep_only)
        mode = cfg.resolved_reference()
        if mode == "none":
            return DPOTask(items, cfg, keep_only, mode)
        if mode == "precomputed":
            return DPOTask(items, cfg, keep_only, mode,
                           cached=precompute_reference(model, items, cfg, tokenizer, accelerator, keep_only))
        ref = None
        if mode == "copy":
            ref = copy.deepcopy(model).eval()
            ref.requires_grad_(False)
        return DPOTask(items, cfg, keep_only, mode, ref_model=ref)

    return factory


def train_dpo(cfg: DPOConfig, on_step: Callable | None = None) -> Path:
    """Train and return the output folder (full weights, or a LoRA adapter noting its base)."""
    return run(cfg, build_dpo_task(cfg), "dpo", on_step)
