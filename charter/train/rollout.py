"""On-policy rollouts: the model being trained answers prompts through the `hf` backend (batched,
left-padded, KV-cached), and each answer becomes a training sequence of exactly the tokens that
were sampled: the prompt's ids as rendered for generation, then the reply's sampled ids through
the EOS or stop-string tokens that ended it, all of them trained. The reply is never re-encoded
from its text (decoding and re-encoding is not an identity: a BPE tokenizer merges what the model
sampled as separate tokens), so the log-probs trained are those of the sampled tokens. A reply cut
off by `max_new_tokens` has no stop token to train (the reward guard is what punishes it). The
reply text is kept for the judges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel

from charter.backends.base import GenerationRequest, SamplingParams
from charter.backends.hf import HFGenerator, prompt_token_ids
from charter.chat import IGNORE_INDEX, EncodedChat
from charter.chat_render import uses_template
from charter.data.jsonl import DataError, iter_jsonl
from charter.data.rows import sft_messages

PROMPTS_DATA = 'prompts JSONL ({"prompt": "..."} or {"messages": [...]} ending on a user turn)'


@dataclass
class Rollout:
    messages: list[dict]  # the prompt, ending on a user turn
    reply: str
    finished: bool        # False: cut off by max_new_tokens
    reply_ids: list[int]  # the sampled tokens, through the EOS or stop string that ended the reply
    seq: EncodedChat      # prompt ids + reply_ids, reply_ids trained


def read_prompts(path: str | Path) -> list[list[dict]]:
    """Prompt conversations; a row's trailing assistant turn, if any, is dropped."""
    out = []
    for lineno, row in iter_jsonl(path, PROMPTS_DATA, allow_empty=False):
        try:
            msgs = [{"role": "user", "content": row["prompt"]}] if isinstance(row.get("prompt"), str) \
                else row.get("prompt") or sft_messages(row)
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        while msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1].get("role") != "user":
            raise DataError(f"{path}:{lineno}: prompt: expected a conversation ending on a user turn")
        out.append(msgs)
    return out


def user_text(messages: list[dict]) -> str:
    """The last user turn: what judges are shown as the prompt."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def with_system(messages: list[dict], system: str) -> list[dict]:
    """The same conversation with `system` as its system prompt (replacing any)."""
    return [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]


def scored_sequence(prompt_ids: list[int], reply_ids: list[int]) -> EncodedChat:
    return EncodedChat(prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + reply_ids)


def reply_sequence(tokenizer, messages: list[dict], reply_ids: list[int], chat: bool | None) -> EncodedChat:
    """`messages`' generation prompt ids followed by `reply_ids`, only the reply trained: the
    sequence a sampled reply is scored as, after the prompt it was sampled for or another one
    (a guided reply trained after the plain prompt, the teacher's constitution-prompted context)."""
    prompt = prompt_token_ids(tokenizer, GenerationRequest(messages=messages), uses_template(tokenizer, chat))
    return scored_sequence(prompt, reply_ids)


def sample_rollouts(model, tokenizer, prompts: list[list[dict]], params: SamplingParams,
                    chat: bool | None = None, batch_size: int = 64,
                    trained_after: list[list[dict]] | None = None) -> list[Rollout]:
    """`params.n` replies per prompt, prompt by prompt, from the model as it is now (eval mode,
    no gradient; the caller's train/eval mode is restored). Each reply is trained after
    `trained_after[i]` (default: the prompt it was sampled for)."""
    unwrapped = extract_model_from_parallel(model)
    was_training = unwrapped.training
    device = str(next(unwrapped.parameters()).device)
    generator = HFGenerator(unwrapped, tokenizer, batch_size=batch_size, device=device, chat=chat)
    try:
        completions = generator.generate(prompts, params)
    finally:
        unwrapped.train(was_training)
    out = []
    for msgs, group in zip(trained_after or prompts, completions):
        prompt = generator.prompt_ids(GenerationRequest(messages=msgs))
        out += [Rollout(msgs, c.text, c.finish_reason == "stop", c.token_ids, scored_sequence(prompt, c.token_ids))
                for c in group]
    return out


class SamplingTask:
    """What an on-policy task carries from step to step, so that a run killed between steps and
    resumed from its checkpoint samples exactly what the uninterrupted run would: `calls`, the
    count of micro-batches so far, from which each sampling seed follows. Tasks with more state
    (an EMA teacher, a rollout reused for several steps) extend both methods; the training loop
    saves and restores them with each checkpoint."""

    calls: int = 0

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {"calls": self.calls}

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.calls = int(meta["calls"])
