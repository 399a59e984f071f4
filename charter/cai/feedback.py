"""AI feedback (RL-CAI labels): which of two responses better fits a principle, as a probability.

The labeler model sees a multiple-choice question -- the conversation, a principle's
comparison question, "Options: (A) ... (B) ...", then "The answer is:" -- and we read
the probability it puts on answering (A) versus (B) from one batched forward pass.

Why exact path probabilities: tokenisers split " (A" in many ways (" (A", " (" + "A",
" " + "(" + "A", ...). Each way the model could start its answer with option A is a
token path ending in the first token that names the letter; the paths are disjoint
events, so P(A) is their sum. Paths longer than one token need the logits after their
prefix, so we feed prompt + each intermediate prefix in one batch.

Position bias: every comparison is asked in both orders. Modelled as an additive
bias b on the log-odds of answering "A", the mean of the two orders' log-odds for the
same response cancels b exactly, and their half-sum estimates b (reported).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal, Protocol, Sequence

from pydantic import Field, field_validator

from charter.backends import BackendConfig, make_generator
from charter.backends.base import SamplingParams
from charter.backends.hf import HFGenerator
from charter.backends.openai import api_key
from charter.cai.principles import Principle, PrincipleSet, load_principles
from charter.cai.revise import load_prompts
from charter.chat import drop_first_exchange, fallback_render, has_chat_template, render_prompt
from charter.config import Config
from charter.data.jsonl import DataError, RecordStore, atomic_write_json, stable_id, write_jsonl
from charter.data.sources import iter_records

ANSWER_LEAD = "The answer is:"
# Surface forms an answer may start with; the letter is substituted in.
OPTION_VARIANTS = (" (A)", " (A", "(A", " A", "A")
EPS = 1e-12


class CannotScore(RuntimeError):
    """The backend cannot return the token probabilities AI feedback needs."""


# ---------------------------------------------------------------------------------------------
# the prompt


def conversation_text(messages: list[dict]) -> str:
    return fallback_render(messages, add_generation_prompt=False).strip()


def comparison_question(messages: list[dict], principle: Principle, a: str, b: str) -> str:
    """Our wording of the paper's multiple-choice layout (SPEC §5)."""
    return (f"Consider this conversation between a person and an AI assistant.\n\n{conversation_text(messages)}\n\n"
            f"{principle.comparison}\nOptions:\n(A) {a.strip()}\n(B) {b.strip()}")


def fitted_question(conv: list[dict], principle: Principle, a: str, b: str, render, fits) -> str:
    """The labeler's input, shortened as training truncates: whole early exchanges go (after the
    system prompt) until `fits(text)`; BOS, the question, the last exchange and the options stay."""
    text = render(comparison_question(conv, principle, a, b))
    while fits is not None and not fits(text):
        if (conv := drop_first_exchange(conv)) is None:
            raise CannotScore("a comparison does not fit the labeler's context even with only the last exchange; "
                              "use a longer-context labeler or shorter responses")
        text = render(comparison_question(conv, principle, a, b))
    return text


def labeler_text(question: str, tokenizer=None, style: Literal["chat", "completion"] = "chat") -> str:
    """The full text the labeler scores: question in a user turn, answer lead as the assistant's prefix."""
    msgs = [{"role": "user", "content": question}]
    if style == "chat" and tokenizer is not None and has_chat_template(tokenizer):
        return render_prompt(tokenizer, msgs) + ANSWER_LEAD
    return fallback_render(msgs, add_generation_prompt=True) + " " + ANSWER_LEAD


# ---------------------------------------------------------------------------------------------
# scorers: P(first answer token path names A), P(... names B)


class ChoiceScorer(Protocol):
    name: str

    def option_probs(self, texts: Sequence[str]) -> list[tuple[float, float]]:
        """Unnormalised (P(A), P(B)) for each full prompt text."""
        ...
    # with a context limit, also `fits(text) -> bool` (then `label_pairs` uses `fitted_question`)


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
        import torch

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
            from openai import OpenAI


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


# ---------------------------------------------------------------------------------------------
# combining orders and principles


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def normalise(pa: float, pb: float) -> float:
    """P(A | the answer names A or B)."""
    if pa + pb <= 0:
        return 0.5
    return pa / (pa + pb)


def combine_orders(q_fwd: float, q_rev: float, mode: Literal["logit", "prob"] = "logit") -> tuple[float, float]:
    """(P(first response better), position bias) from P(A) asked in both orders.

    q_fwd: P(A) with the first response as (A); q_rev: P(A) with it as (B).
    `logit` mode cancels an additive log-odds bias exactly and returns it as the bias;
    `prob` mode averages probabilities (exact only at ties) and returns mean P(A) - 0.5.
    """
    if mode == "logit":
        return sigmoid((logit(q_fwd) - logit(q_rev)) / 2), (logit(q_fwd) + logit(q_rev)) / 2
    return (q_fwd + 1 - q_rev) / 2, (q_fwd + q_rev) / 2 - 0.5


def label_pairs(scorer: ChoiceScorer, items: Sequence[tuple[list[dict], str, str]], principles: PrincipleSet,
                render, k: int = 1, seed: int = 0, mode: Literal["logit", "prob"] = "logit",
                clamp: tuple[float, float] | None = None) -> list[dict]:
    """Label (conversation, response1, response2) items: P(response1 better), ensembled over k principles.

    `render(question) -> text` turns a question into the labeler's input, shortened to the
    scorer's context by `fitted_question`. All 2*k prompts per item go through the scorer in one batch.
    """
    texts, plan = [], []
    fits = getattr(scorer, "fits", None)
    for conv, r1, r2 in items:
        picks = principles.sample(random.Random(stable_id("cai-label", seed, conv, r1, r2)), k)
        plan.append(picks)
        for p in picks:
            texts += [fitted_question(conv, p, r1, r2, render, fits), fitted_question(conv, p, r2, r1, render, fits)]
    probs = scorer.option_probs(texts)
    out, i = [], 0
    for picks in plan:
        per = []
        for p in picks:
            (fa, fb), (ra, rb) = probs[i], probs[i + 1]
            i += 2
            q_fwd, q_rev = normalise(fa, fb), normalise(ra, rb)
            p1, bias = combine_orders(q_fwd, q_rev, mode)
            per.append({"principle": p.id, "q_forward": q_fwd, "q_swapped": q_rev, "p_first": p1, "position_bias": bias,
                        "option_mass": (fa + fb + ra + rb) / 2})
        p1 = (sigmoid(sum(logit(x["p_first"]) for x in per) / len(per)) if mode == "logit"
              else sum(x["p_first"] for x in per) / len(per))
        if clamp:
            p1 = min(max(p1, clamp[0]), clamp[1])
        out.append({"p_first": p1, "position_bias": sum(x["position_bias"] for x in per) / len(per),
                    "per_principle": per})
    return out


# ---------------------------------------------------------------------------------------------
# the `charter cai label` stage


class LabelConfig(Config):
    labeler: BackendConfig  # kind hf (exact) or openai (top_logprobs)
    style: Literal["chat", "completion"] = "chat"
    pairs_file: str | None = None  # rows {prompt, chosen, rejected} (relabel) or {prompt, responses: [a, b]}
    prompts: list[str] = []  # or: prompts answered twice by `policy`
    prompts_file: str | None = None
    policy: BackendConfig | None = None
    policy_sampling: SamplingParams = SamplingParams(temperature=1.0, max_new_tokens=64)
    limit: int | None = None
    principles: str | None = None
    fewshot: str | None = None  # worked examples put before every question (text file, or JSON list of strings)
    ensemble: int = Field(1, ge=1)  # principles per label
    combine: Literal["logit", "prob"] = "logit"
    clamp: tuple[float, float] | None = None  # e.g. [0.4, 0.6] for chain-of-thought labels
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    out_dir: str = "runs/cai-label"

    @field_validator("clamp")
    @classmethod
    def _clamp_ok(cls, v):
        if v is not None and not 0 <= v[0] <= 0.5 <= v[1] <= 1:
            raise ValueError("clamp must be [lo, hi] with 0 <= lo <= 0.5 <= hi <= 1")
        return v


def _content(x, path, lineno, field) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict) and x[-1].get("role") == "assistant":
        return x[-1]["content"]
    raise DataError(f"{path}:{lineno}: field {field!r} must be a string or a list ending on an assistant message")


def load_items(cfg: LabelConfig) -> list[tuple[list[dict], str, str]]:
    """(conversation, response1, response2) from a pairs file, or sampled twice from the policy."""
    if cfg.pairs_file:
        items = []
        for lineno, row in iter_records(cfg.pairs_file, "JSONL pairs {prompt, chosen, rejected}", allow_empty=False):
            prompt = row.get("prompt")
            conv = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if not isinstance(conv, list) or not conv:
                raise DataError(f"{cfg.pairs_file}:{lineno}: field 'prompt' must be a string or a list of messages")
            if "responses" in row:
                rs = row["responses"]
                if not isinstance(rs, list) or len(rs) != 2:
                    raise DataError(f"{cfg.pairs_file}:{lineno}: field 'responses' must be a list of two")
                a, b = (_content(r, cfg.pairs_file, lineno, "responses") for r in rs)
            elif "chosen" in row and "rejected" in row:
                a = _content(row["chosen"], cfg.pairs_file, lineno, "chosen")
                b = _content(row["rejected"], cfg.pairs_file, lineno, "rejected")
            else:
                raise DataError(f"{cfg.pairs_file}:{lineno}: need 'responses' or 'chosen'+'rejected'")
            items.append((conv, a, b))
        return items[:cfg.limit] if cfg.limit else items
    if cfg.policy is None:
        raise DataError("cai label: set `pairs_file`, or `prompts`/`prompts_file` with a `policy` backend")
    convs = load_prompts(cfg.prompts, cfg.prompts_file, cfg.limit)
    with RecordStore(Path(cfg.out_dir) / "responses.jsonl") as store:  # a resumed run labels the same samples
        todo = [c for c in convs if stable_id(c) not in store]
        if todo:
            gen = make_generator(cfg.policy)
            outs = gen.generate(todo, cfg.policy_sampling.model_copy(update={"n": 2}), progress=True)
            for c, o in zip(todo, outs):
                store.add({"id": stable_id(c), "model": gen.name, "responses": [x.text.strip() for x in o]})
        return [(c, *store.records[stable_id(c)]["responses"]) for c in convs]


def make_scorer(spec: BackendConfig, batch_size: int = 8) -> tuple[ChoiceScorer, object]:
    if spec.kind == "hf":
        gen = HFGenerator(spec.model, adapter=spec.adapter, device=spec.device, dtype=spec.dtype)
        return HFChoiceScorer(gen.model, gen.tokenizer, batch_size, name=gen.name), gen.tokenizer
    if spec.kind in ("openai", "vllm"):
        return OpenAIChoiceScorer(spec.model, spec.base_url, spec.api_key_env), None
    raise CannotScore(f"backend {spec.kind!r} cannot score options")


def run_label(cfg: LabelConfig, scorer: ChoiceScorer | None = None, tokenizer=None) -> dict:
    """Label pairs -> labels.jsonl (resumable), pairs.jsonl with `label_prob`, summary.json."""
    from tqdm.auto import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    principles = load_principles(cfg.principles, cfg.fewshot)
    items = load_items(cfg)
    if scorer is None:
        scorer, tokenizer = make_scorer(cfg.labeler, cfg.batch_size)
    render = lambda q: labeler_text(principles.examples + q, tokenizer, cfg.style)  # noqa: E731
    with RecordStore(out / "labels.jsonl") as store:
        keyed = [(stable_id(c, a, b), (c, a, b)) for c, a, b in items]
        todo = [kv for kv in keyed if kv[0] not in store]
        for s in tqdm(range(0, len(todo), cfg.batch_size), desc="cai label", disable=not todo):
            chunk = todo[s:s + cfg.batch_size]
            labels = label_pairs(scorer, [it for _, it in chunk], principles, render, cfg.ensemble, cfg.seed,
                                 cfg.combine, cfg.clamp)
            for (rid, (c, a, b)), lab in zip(chunk, labels):
                store.add({"id": rid, "prompt": c, "first": a, "second": b, **lab})
        records = [store.records[rid] for rid, _ in keyed]
    rows, ties, agree = [], 0, 0
    for r in records:
        p = r["p_first"]
        first_wins = p >= 0.5
        ties += p == 0.5
        agree += first_wins
        chosen, rejected = (r["first"], r["second"]) if first_wins else (r["second"], r["first"])
        rows.append({"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "label_prob": max(p, 1 - p),
                     "meta": {"labeler": scorer.name, "source": "cai-label", "position_bias": r["position_bias"],
                              "principles": [x["principle"] for x in r["per_principle"]]}})
    write_jsonl(out / "pairs.jsonl", rows)
    n = max(len(rows), 1)
    biases = [r["position_bias"] for r in records]
    summary = {"pairs": len(rows), "ties": ties,
               "first_preferred": agree,  # with a relabelled pairs file: agreement with the original `chosen`
               "mean_label_prob": sum(r["label_prob"] for r in rows) / n,
               "mean_position_bias": sum(biases) / n, "mean_abs_position_bias": sum(map(abs, biases)) / n,
               "bias_units": "log-odds of answering A" if cfg.combine == "logit" else "P(A) - 0.5",
               "mean_option_mass": sum(x["option_mass"] for r in records for x in r["per_principle"])
               / max(sum(len(r["per_principle"]) for r in records), 1)}
    atomic_write_json(out / "summary.json", summary)
    return summary
