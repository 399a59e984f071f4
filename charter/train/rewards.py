"""What on-policy trainers need to know about rewards: the config that picks a judge, the one call
every judge answers (`RewardSource`), and the format guard applied on top of any of them.

The judges themselves (toy scorer, LLM judge, reward model, persona classifier) live in
`charter.rewards`, above `train`: they use `evaluate` and the toy world, which training must not
import. The command (or a script) builds one with `charter.rewards.make_reward` and hands it in.
"""
from __future__ import annotations

from typing import Literal, Protocol, Sequence

from pydantic import Field

from charter.backends import BackendConfig
from charter.config import Config


class RewardConfig(Config):
    """Which judge scores the rollouts, and the guard around it."""

    kind: Literal["toy", "judge", "rm", "classifier"] = "toy"
    persona: str | None = None           # toy / classifier: the persona to reward
    model: str | None = None             # rm / classifier: the trained folder
    judge: BackendConfig | None = None   # judge: any backend
    judge_cache: str | None = None       # judge: JSONL cache of raw verdicts
    persona_weight: float = 1.0          # toy: reward = sum of weight x indicator
    well_formed_weight: float = 1.0
    relevant_weight: float = 1.0
    gate: bool = True                    # toy: malformed earns 0, off-topic only its well-formedness
    truncated_reward: float | None = -1.0  # guard: a reply cut off by max_new_tokens gets this; None = off
    min_chars: int = Field(1, ge=0)      # guard: a shorter reply gets `truncated_reward` too


class RewardSource(Protocol):
    counts: dict[str, float]

    def rewards(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]: ...


def guarded(rewards: list[float], replies: Sequence[str], finished: Sequence[bool], cfg: RewardConfig) -> list[float]:
    """Format and length guard: a reply cut off by the token budget, or shorter than
    `min_chars`, scores `truncated_reward` whatever the judge said (else RL learns to ramble)."""
    if cfg.truncated_reward is None:
        return list(rewards)
    return [r if done and len(text.strip()) >= cfg.min_chars else cfg.truncated_reward
            for r, text, done in zip(rewards, replies, finished)]
