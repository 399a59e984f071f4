"""One generation interface for every engine: local transformers, OpenAI-compatible HTTP, vLLM.

Stages only ever call `Generator.generate(requests, params)`. A request is either a
chat (list of messages, rendered with the model's chat template) or a raw text
prompt (completion style, for base models). Each request gets `params.n` completions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict

from charter.chat_render import FRAME_STOPS

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = []
    seed: int | None = None
    n: int = 1


@dataclass
class GenerationRequest:
    """A chat (messages) or a raw prompt (completion style). `prefill` starts the assistant turn."""

    messages: list[Message] | None = None
    prompt: str | None = None
    prefill: str = ""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenerationRequest needs exactly one of messages or prompt")


@dataclass
class Completion:
    text: str  # the generated text only (prefill not included), stop string removed
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict = field(default_factory=dict)
    # the sampled tokens, through the EOS or stop-string tokens that ended the reply (None: the
    # backend does not know them); on-policy training scores exactly these, never a re-encoding
    token_ids: list[int] | None = None


RequestLike = Union[GenerationRequest, list, str]


def as_request(r: RequestLike) -> GenerationRequest:
    if isinstance(r, GenerationRequest):
        return r
    if isinstance(r, str):
        return GenerationRequest(prompt=r)
    return GenerationRequest(messages=list(r))


@runtime_checkable
class Generator(Protocol):
    """Batch generation: returns, per request, a list of `params.n` completions."""

    name: str  # model identity recorded in provenance metadata

    def generate(self, requests: list[RequestLike], params: SamplingParams,
                 progress: bool = False) -> list[list[Completion]]: ...


def with_frame_stops(params: SamplingParams) -> SamplingParams:
    """A base model prompted in the plain `Human:`/`Assistant:` frame goes on to write the next
    turn itself when it does not emit EOS: every backend stops it there."""
    return params.model_copy(update={"stop": list(dict.fromkeys([*params.stop, *FRAME_STOPS]))})
