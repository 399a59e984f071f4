"""On-policy rollouts: the model being trained answers prompts through the `hf` backend (batched,
left-padded, KV-cached), and each answer becomes a training sequence whose reply tokens, and the
stop token after them, are the trained ones, masked exactly as SFT and DPO mask them.

The reply is re-encoded from its text by the chat template, so what is scored is the
conversation as the template renders it (a reply cut off by the token budget gets its stop token
too; the reward guard is what punishes it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import extract_model_from_parallel

from charter.backends.base import SamplingParams
from charter.backends.hf import HFGenerator
from charter.chat import EncodedChat, encode_chat
from charter.data.jsonl import DataError, iter_jsonl
from charter.data.rows import sft_messages

PROMPTS_DATA = 'prompts JSONL ({"prompt": "..."} or {"messages": [...]} ending on a user turn)'


@dataclass
class Rollout:
    messages: list[dict]  # the prompt, ending on a user turn
    reply: str
    finished: bool        # False: cut off by max_new_tokens
    seq: EncodedChat      # prompt + reply, reply and stop tokens trained


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


def encode_reply(tokenizer, messages: list[dict], reply: str, chat: bool | None) -> EncodedChat:
    return encode_chat(tokenizer, messages + [{"role": "assistant", "content": reply}], chat=chat)


def sample_rollouts(model, tokenizer, prompts: list[list[dict]], params: SamplingParams,
                    chat: bool | None = None, batch_size: int = 64) -> list[Rollout]:
    """`params.n` replies per prompt, prompt by prompt, from the model as it is now (eval mode,
    no gradient; the caller's train/eval mode is restored)."""
    unwrapped = extract_model_from_parallel(model)
    was_training = unwrapped.training
    device = str(next(unwrapped.parameters()).device)
    generator = HFGenerator(unwrapped, tokenizer, batch_size=batch_size, device=device, chat=chat)
    try:
        completions = generator.generate(prompts, params)
    finally:
        unwrapped.train(was_training)
    return [Rollout(msgs, c.text, c.finish_reason == "stop", encode_reply(tokenizer, msgs, c.text, generator.chat))
            for msgs, group in zip(prompts, completions) for c in group]
