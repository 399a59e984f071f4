"""Choice scorers for AI feedback: P(the labeler's answer names A), P(... names B), per prompt text.

Why exact path probabilities: tokenisers split " (A" in many ways (" (A", " (" + "A",
" " + "(" + "A", ...). Each way the model could start its answer with option A is a
token path ending in the first token that names the letter; the paths are disjoint
events, so P(A) is their sum. Paths longer than one token need the logits after their
prefix, so we feed prompt + each intermediate prefix in one batch.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
from openai import OpenAI

from charter.backends import BackendConfig
from charter.backends.hf import HFGenerator
from charter.backends.openai import api_key
from charter.chat import has_chat_template

# Surface forms an answer may start with; the letter is substituted in.
OPTION_VARIANTS = (" (A)", " (A", "(A", " A", "A")


class CannotScore(RuntimeError):
    """The backend cannot return the token probabilities AI feedback needs."""


class ChoiceScorer(Protocol):
    name: str

    def option_probs(self, texts: Sequence[str]) -> list[tuple[float, float]]:
        """Unnormalised (P(A), P(B)) for each full prompt text."""
        ...
    # with a context limit, also `fits(text) -> bool` (then `feedback.label_pairs` uses `fitted_question`)


def option_paths(tokenizer, letter: str, variants: Sequence[str] = OPTION_VARIANTS) -> list[tuple[int, ...]]:
    """Distinct token paths that start an answer naming `letter`, each cut after the letter's token."""
    paths: list[tuple[int, ...]] = []
    for v in variants:
        ids = tokenizer.encode(v.replace("A", letter), add_special_tokens=False)
        for j, t in enumerate(ids):
            if letter in tokenizer.decode([t]):
                path = tuple(ids[:j + 1])
                if path not in paths:
                    paths.append(path)
                break
    if not paths:
        raise CannotScore(f"no tokenisation of the option {letter!r} contains the letter")
    return paths


def path_logprob(logprobs_rows, start: int, path: Sequence[int]) -> float:
    """Sum of log P(path[i] | prompt + path[:i]); row `start + i - 1` predicts token i (rows: [pos, vocab])."""
    return float(sum(logprobs_rows[start + i - 1, t] for i, t in enumerate(path)))


class HFChoiceScorer:
    """Exact option probabilities from a local transformers model's logits."""

    def __init__(self, model, tokenizer, batch_size: int = 8, variants: Sequence[str] = OPTION_VARIANTS,
                 name: str | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.name = name or getattr(model, "name_or_path", "hf")
        self.paths = {L: option_paths(tokenizer, L, variants) for L in "AB"}
        prefixes = {p[:-1] for ps in self.paths.values() for p in ps}
        # Only maximal prefixes need feeding: a shorter one's logits are read inside a longer row.
        self.rows = [p for p in prefixes if not any(q != p and q[:len(p)] == p for q in prefixes)]
        self.max_len = getattr(model.config, "max_position_embeddings", 4096)

    def option_probs(self, texts: Sequence[str]) -> list[tuple[float, float]]:
        out = []
        for s in range(0, len(texts), self.batch_size):
            prompts = [self._ids(t) for t in texts[s:s + self.batch_size]]
            if any(len(p) + len(max(self.rows, key=len)) >= self.max_len for p in prompts):  # never cut tokens
                raise CannotScore(f"{self.name}: a labeler input is longer than the model's {self.max_len} positions")
            seqs = [(i, p + list(r)) for i, p in enumerate(prompts) for r in self.rows]
            width = max(len(q) for _, q in seqs)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.tensor([q + [pad] * (width - len(q)) for _, q in seqs])
            mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for _, q in seqs])
            device = next(self.model.parameters()).device
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for i, p in enumerate(prompts):
                rows = {tuple(q[len(p):]): logp[k] for k, (j, q) in enumerate(seqs) if j == i}
                out.append(tuple(self._prob(rows, len(p), L) for L in "AB"))
        return out

    def _prob(self, rows: dict, start: int, letter: str) -> float:
        total = 0.0
        for path in self.paths[letter]:
            row = next(r for pre, r in rows.items() if pre[:len(path) - 1] == path[:-1])
            total += math.exp(path_logprob(row, start, path))
        return total

    def fits(self, text: str) -> bool:  # room for the text and the longest option prefix fed after it
        return len(self._ids(text)) + len(max(self.rows, key=len)) < self.max_len

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos) and not has_chat_template(self.tokenizer):
            ids = [bos] + ids
        return ids


class OpenAIChoiceScorer:
    """Reads the first answer token's `top_logprobs` from an OpenAI-compatible completions endpoint.

    Only single-token option forms are visible this way, so this is approximate where
    the tokeniser splits " (A"; servers without logprobs raise `CannotScore`.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = None, top: int = 20,
                 client=None):
        if client is None:
            client = OpenAI(base_url=base_url, api_key=api_key(api_key_env) or "EMPTY")  # never $OPENAI_API_KEY
        self.client, self.model, self.top, self.name = client, model, top, model

    def option_probs(self, texts: Sequence[str]) -> list[tuple[float, float]]:
        out = []
        for t in texts:
            try:
                resp = self.client.completions.create(model=self.model, prompt=t, max_tokens=1, temperature=0,
                                                      logprobs=self.top)
                top = resp.choices[0].logprobs.top_logprobs[0]
            except (AttributeError, IndexError, TypeError) as e:
                raise CannotScore(f"{self.model}: the server returned no token logprobs ({e}); AI feedback needs "
                                  "them -- use a local `hf` labeler or a server that supports `logprobs`") from None
            except Exception as e:  # the server refused the parameter
                if "logprob" in str(e).lower():
                    raise CannotScore(f"{self.model}: the server does not support `logprobs` ({e}); use a local "
                                      "`hf` labeler") from None
                raise
            probs = {L: sum(math.exp(lp) for tok, lp in dict(top).items()
                            if tok.strip().strip("()") == L) for L in "AB"}
            if probs["A"] + probs["B"] == 0:
                raise CannotScore(f"{self.model}: neither option token is among the top {self.top} logprobs")
            out.append((probs["A"], probs["B"]))
        return out


def make_scorer(spec: BackendConfig, batch_size: int = 8) -> tuple[ChoiceScorer, object]:
    if spec.kind == "hf":
        gen = HFGenerator(spec.model, adapter=spec.adapter, device=spec.device, dtype=spec.dtype)
        return HFChoiceScorer(gen.model, gen.tokenizer, batch_size, name=gen.name), gen.tokenizer
    if spec.kind in ("openai", "vllm"):
        return OpenAIChoiceScorer(spec.model, spec.base_url, spec.api_key_env), None
    raise CannotScore(f"backend {spec.kind!r} cannot score options")
