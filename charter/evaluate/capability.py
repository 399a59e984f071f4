"""Capability retention: held-out perplexity and multiple-choice log-prob evals, before vs after.

Character training should not make the model worse at everything else (the paper saw
<= 3 points lost for prosocial personas, up to 17 for a misaligned one). Both measures
need token log-probs, so they run on local transformers models (path + optional adapter).

Multiple choice reads JSONL `{"question": str, "choices": [str, ...], "answer": int | str}`
(answer = index or the exact choice text), so standard sets can be converted in one line.
Each choice is scored as the continuation " <choice>" after "Question: ...\\nAnswer:":
- `acc`: highest summed log-prob;
- `acc_norm_tokens`: highest mean log-prob per token;
- `acc_norm_chars`: highest summed log-prob per character (lm-eval-harness's acc_norm).
Before/after: McNemar on per-item correctness, paired bootstrap on per-text NLL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from charter.backends.hf import HFGenerator
from charter.data.jsonl import DataError
from charter.data.sources import iter_records
from charter.evaluate.stats import mcnemar_paired, paired_bootstrap, proportion

MC_METRICS = ("acc", "acc_norm_tokens", "acc_norm_chars")


@dataclass
class MCItem:
    question: str
    choices: list[str]
    answer: int


def read_mc(path: str | Path) -> list[MCItem]:
    items = []
    for lineno, obj in iter_records(path):
        q, ch, ans = obj.get("question"), obj.get("choices"), obj.get("answer")
        where = f"{path}:{lineno}"
        if not isinstance(q, str):
            raise DataError(f"{where}: field 'question' must be a string")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            raise DataError(f"{where}: field 'choices' must be a list of 2+ non-empty strings")
        if isinstance(ans, str):
            if ans not in ch:
                raise DataError(f"{where}: field 'answer' {ans!r} is not one of the choices")
            ans = ch.index(ans)
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
            raise DataError(f"{where}: field 'answer' must be a choice index in [0, {len(ch)}) or a choice")
        items.append(MCItem(q, ch, ans))
    if not items:
        raise DataError(f"{path}: no multiple-choice items")
    return items


def load_lm(model: str, adapter: str | None = None, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) through the hf backend's loader (adapters, dtype, device handled there)."""
    g = HFGenerator(model, adapter=adapter, device=device)
    return g.model, g.tokenizer


def _prefix_ids(tokenizer) -> list[int]:
    """BOS when the model uses one, so the first real token is scored like in training."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def continuation_logprobs(model, tokenizer, context: str, continuations: Sequence[str]) -> list[list[float]]:
    """Per-token log-probs of each continuation after `context` (ids concatenated, so aligned)."""
    ctx = _prefix_ids(tokenizer) + tokenizer(context, add_special_tokens=False)["input_ids"]
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    seqs = [ctx + c for c in conts]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, c in enumerate(conts):
        pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=model.device)
        out.append(logp[i, pos, torch.tensor(c, device=model.device)].tolist())
    return out


def mc_predictions(model, tokenizer, items: Sequence[MCItem], progress: bool = False) -> dict[str, list[bool]]:
    """Per metric, per item: whether the top-scoring choice is the answer."""
    right: dict[str, list[bool]] = {m: [] for m in MC_METRICS}
    for it in tqdm(items, desc="multiple choice", disable=not progress):
        lps = continuation_logprobs(model, tokenizer, f"Question: {it.question}\nAnswer:",
                                    [f" {c}" for c in it.choices])
        scores = {"acc": [sum(lp) for lp in lps],
                  "acc_norm_tokens": [sum(lp) / max(len(lp), 1) for lp in lps],
                  "acc_norm_chars": [sum(lp) / len(f" {c}") for lp, c in zip(lps, it.choices)]}
        for m, s in scores.items():
            right[m].append(max(range(len(s)), key=s.__getitem__) == it.answer)
    return right


def text_nll(model, tokenizer, texts: Sequence[str], max_length: int = 1024,
             progress: bool = False) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per text."""
    out = []
    for t in tqdm(texts, desc="perplexity", disable=not progress):
        ids = (_prefix_ids(tokenizer) + tokenizer(t, add_special_tokens=False)["input_ids"])[:max_length]
        if len(ids) < 2:
            out.append((0.0, 0))
            continue
        x = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            logp = model(input_ids=x).logits.float().log_softmax(-1)[0, :-1]
        out.append((-float(logp.gather(-1, x[0, 1:, None]).sum()), len(ids) - 1))
    return out


def perplexity_summary(nll: Sequence[tuple[float, int]]) -> dict:
    total, toks = sum(n for n, _ in nll), sum(k for _, k in nll)
    return {"perplexity": math.exp(total / toks) if toks else float("nan"),
            "nll_per_token": total / toks if toks else float("nan"), "tokens": toks, "n": len(nll)}


def evaluate_model(model, tokenizer, texts: Sequence[str] = (), mc: dict[str, Sequence[MCItem]] | None = None,
                   progress: bool = False) -> dict:
    """Raw per-item results for one model: reused for the summary and the paired tests."""
    res: dict = {}
    if texts:
        res["nll"] = text_nll(model, tokenizer, texts, progress=progress)
    res["mc"] = {name: mc_predictions(model, tokenizer, items, progress) for name, items in (mc or {}).items()}
    return res


def compare(before: dict, after: dict, seed: int = 0) -> dict:
    """eval.json section: each figure before and after, its delta, and the paired test."""
    out: dict = {}
    if "nll" in before and "nll" in after:
        per_b = [n / k for n, k in before["nll"] if k]
        per_a = [n / k for n, k in after["nll"] if k]
        pb, pa = perplexity_summary(before["nll"]), perplexity_summary(after["nll"])
        out["perplexity"] = {"before": pb, "after": pa, "delta": pa["perplexity"] - pb["perplexity"],
                             "nll_per_text_bootstrap": paired_bootstrap(per_b, per_a, seed=seed).to_dict()}
    out["multiple_choice"] = {}
    for name in before["mc"]:
        sec = {}
        for m in MC_METRICS:
            b, a = before["mc"][name][m], after["mc"][name][m]
            pb, pa = proportion(sum(b), len(b)), proportion(sum(a), len(a))
            sec[m] = {"before": pb.to_dict(), "after": pa.to_dict(), "delta": pa.value - pb.value,
                      "mcnemar": mcnemar_paired(b, a).to_dict()}
        out["multiple_choice"][name] = sec
    return out
