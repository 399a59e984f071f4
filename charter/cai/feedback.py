"""AI feedback (RL-CAI labels): which of two responses better fits a principle, as a probability.

The labeler model sees a multiple-choice question -- the conversation, a principle's
comparison question, "Options: (A) ... (B) ...", then "The answer is:" -- and we read
the probability it puts on answering (A) versus (B) from one batched forward pass.

The probabilities come from a `ChoiceScorer` (`charter.cai.scorers`).

Position bias: every comparison is asked in both orders. Modelled as an additive
bias b on the log-odds of answering "A", the mean of the two orders' log-odds for the
same response cancels b exactly, and their half-sum estimates b (reported).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, field_validator
from tqdm.auto import tqdm

from charter.backends import BackendConfig, make_generator
from charter.backends.base import SamplingParams
from charter.cai.principles import Principle, PrincipleSet, load_principles
from charter.cai.revise import load_prompts
from charter.cai.scorers import CannotScore, ChoiceScorer, make_scorer
from charter.chat import drop_first_exchange, fallback_render, has_chat_template, render_prompt
from charter.config import Config
from charter.data.jsonl import DataError, RecordStore, atomic_write_json, stable_id, write_jsonl
from charter.data.sources import iter_records

ANSWER_LEAD = "The answer is:"
EPS = 1e-12


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


def run_label(cfg: LabelConfig, scorer: ChoiceScorer | None = None, tokenizer=None) -> dict:
    """Label pairs -> labels.jsonl (resumable), pairs.jsonl with `label_prob`, summary.json."""
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
