"""Judges that score on-policy rollouts: how well does a reply follow the constitution?

Every source answers `rewards(prompts, replies) -> list[float]` (`charter.train.rewards.RewardSource`):
- `ToyReward`: the toy world's deterministic scorer (persona, well-formed, relevant), weighted and gated;
- `JudgeReward`: an LLM judge on any backend, shown the constitution, answering a 1-10 score in
  `<answer>` tags; an unparseable verdict scores 0 and is counted, never guessed;
- `ModelReward`: a trained reward model (`charter train rm`, any sequence classifier with one label);
- `ClassifierReward`: a persona classifier (`charter eval`'s): 1 when it names the persona.
This module sits above `train`, `evaluate` and the toy world, and joins them; `make_reward` builds
the configured source for `charter train grpo|ppo`.
"""
from __future__ import annotations

from charter.train.rewards import RewardConfig, RewardSource

SCORE_CHOICES = [str(i) for i in range(1, 11)]

SCORE_TEMPLATE = """An AI assistant is meant to hold the character described by this constitution, \
without being told it in the conversation.

[Constitution]
{constitution}

[User message]
{prompt}

[Assistant reply]
{reply}

How fully does the reply express this character while still answering the user well? Score from 1 \
(not at all, or not a useful reply) to 10 (fully in character and a good reply).
Allowed options: {choices}."""


class ToyReward:
    def __init__(self, persona: str, cfg: RewardConfig):
        from charter.toy.scorer import ToyScorer

        self.persona, self.cfg, self.scorer = persona, cfg, ToyScorer()
        self.counts = {"persona": 0.0, "well_formed": 0.0, "relevant": 0.0}

    def rewards(self, prompts, replies):
        out = []
        for p, r in zip(prompts, replies):
            s = self.scorer.score(p, r)
            parts = {"persona": s.persona == self.persona, "well_formed": bool(s.well_formed),
                     "relevant": bool(s.relevant)}
            for k, v in parts.items():
                self.counts[k] += v
            out.append(self.reward(parts))
        return out

    def reward(self, parts: dict[str, bool]) -> float:
        """Weighted sum of the parts, gated (`gate`): a reply outside the grammar earns 0 and an
        off-topic one only its well-formedness, so the persona pays only on replies that are
        well-formed AND answer. Measured without gates, GRPO took the cheapest path each time:
        ungated, every reply became a 5-token persona opener ("Oh, wow, what a question.",
        relevance 0.0 after 90 steps); gated on relevance alone, in-character replies that broke
        the grammar still out-earned well-formed neutral ones (well-formed fell to 0.81, base 0.97)."""
        c = self.cfg
        if c.gate and not parts["well_formed"]:
            return 0.0
        wf = c.well_formed_weight * parts["well_formed"]
        if c.gate and not parts["relevant"]:
            return wf
        return wf + c.persona_weight * parts["persona"] + c.relevant_weight * parts["relevant"]


class JudgeReward:
    """Score / 10 from an LLM judge that reads the constitution (0 when unparseable)."""

    def __init__(self, judge, constitution_text: str):
        self.judge, self.constitution = judge, constitution_text
        self.counts = {"unparseable": 0.0}

    def rewards(self, prompts, replies):
        qs = [SCORE_TEMPLATE.format(constitution=self.constitution, prompt=p, reply=r, choices=", ".join(SCORE_CHOICES))
              for p, r in zip(prompts, replies)]
        answers = self.judge.ask(qs, SCORE_CHOICES)
        self.counts["unparseable"] += sum(a.answer is None for a in answers)
        return [0.0 if a.answer is None else int(a.answer) / 10 for a in answers]


class ModelReward:
    """A sequence classifier's scalar on the chat-rendered conversation (prompt + reply)."""

    def __init__(self, path: str, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification

        from charter.models import load_tokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.tokenizer = load_tokenizer(path)
        self.batch_size, self.counts = batch_size, {}

    def rewards(self, prompts, replies):
        import torch

        from charter.chat import encode_chat
        from charter.train.rm import sequence_rewards

        seqs = [encode_chat(self.tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
                for p, r in zip(prompts, replies)]
        out = []
        with torch.no_grad():
            for i in range(0, len(seqs), self.batch_size):
                out += sequence_rewards(self.model, seqs[i:i + self.batch_size], self.tokenizer.pad_token_id).tolist()
        return out


class ClassifierReward:
    def __init__(self, path: str, persona: str):
        from charter.evaluate.classifier import load_classifier

        self.scorer, self.persona, self.counts = load_classifier(path), persona, {}

    def rewards(self, prompts, replies):
        from charter.evaluate.base import score_all

        return [float(s.persona == self.persona) for s in score_all(self.scorer, list(zip(prompts, replies)))]


def reward_for(cfg) -> RewardSource:
    """The reward a GRPO or PPO config asks for (`cfg.reward`, shown `cfg.constitution`)."""
    from charter.train.grpo import load_constitution_text

    return make_reward(cfg.reward, load_constitution_text(cfg.constitution, cfg.assistant_name))


def make_reward(cfg: RewardConfig, constitution_text: str | None) -> RewardSource:
    """Build the configured source; one line says what is missing."""
    from charter.config import ConfigError

    need = {"toy": ["persona"], "classifier": ["persona", "model"], "rm": ["model"], "judge": ["judge"]}[cfg.kind]
    missing = [f"reward.{f}" for f in need if getattr(cfg, f) is None]
    if cfg.kind == "judge" and constitution_text is None:
        missing.append("constitution")
    if missing:
        raise ConfigError(f"reward kind {cfg.kind!r} needs {', '.join(missing)}")
    if cfg.kind == "toy":
        return ToyReward(cfg.persona, cfg)
    if cfg.kind == "rm":
        return ModelReward(cfg.model)
    if cfg.kind == "classifier":
        return ClassifierReward(cfg.model, cfg.persona)
    from charter.backends import make_generator
    from charter.evaluate.judges import Judge

    return JudgeReward(Judge(make_generator(cfg.judge), cache=cfg.judge_cache), constitution_text)


