"""The offline vLLM engine: LoRA adapters and tensor parallelism on GPU machines.

vLLM is an optional extra (`pip install charter[vllm]`); it is imported only when this
backend is built, so everything else works without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from charter.backends.base import (Completion, GenerationRequest, RequestLike, SamplingParams, as_request,
                                   with_frame_stops)
from charter.chat import has_chat_template, render_prompt
from charter.chat_render import frame_reply
from charter.config import ConfigError
from charter.models import is_adapter, recorded_base, resolve_model


def _import_vllm():
    try:
        import vllm  # deferred: optional extra (charter[vllm])
    except ImportError as e:
        raise ImportError("the 'vllm' backend needs vLLM: pip install 'charter[vllm]' (GPU machines only), "
                          "or use kind: hf / kind: openai with a running `vllm serve`") from e
    return vllm


def _refuse_chain(adapter: str) -> None:
    """A LoRARequest applies one adapter: one trained on top of others (SFT on DPO) would lose them."""
    chain = recorded_base(Path(adapter))[1] if Path(adapter).is_dir() else []
    if chain:
        raise ConfigError(f"backend.adapter {adapter}: was trained on top of {', '.join(chain)}, which vLLM "
                          f"cannot stack; merge the chain first (`charter merge --export {adapter} --out DIR`) "
                          f"and use DIR as backend.model, or use kind: hf")


def vllm_model(model: str, adapter: str | None) -> tuple[str, str | None]:
    """(model, adapter) as vLLM takes them: a model folder or Hub id as given; a Charter training
    output as its merged copy when it wrote one, else as its base plus the adapter."""

    if not is_adapter(model):
        return model, adapter
    ref = resolve_model(model)
    if ref.merged:
        return str(ref.merged), adapter
    if adapter:
        raise ConfigError(f"backend.model {model} is a LoRA adapter; vLLM cannot add backend.adapter on top of it")
    return str(ref.base), model


class VLLMGenerator:
    def __init__(self, model: str, adapter: str | None = None, tensor_parallel: int = 1, dtype: str | None = None,
                 chat: bool | None = None, max_lora_rank: int = 64):
        model, adapter = vllm_model(model, adapter)
        if adapter:
            _refuse_chain(adapter)
        vllm = _import_vllm()
        self.name = model + (f"+{adapter}" if adapter else "")
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel, dtype=dtype or "auto",
                            enable_lora=adapter is not None, max_lora_rank=max_lora_rank)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest  # deferred: optional extra (charter[vllm])

            self.lora = LoRARequest("adapter", 1, adapter)
        self.chat = has_chat_template(self.tokenizer) if chat is None else chat
        self._vllm = vllm

    @classmethod
    def from_config(cls, cfg) -> "VLLMGenerator":
        return cls(cfg.model, cfg.adapter, cfg.tensor_parallel, cfg.dtype, cfg.chat)

    def _text(self, req: GenerationRequest) -> str:
        if req.prompt is not None:
            return req.prompt + req.prefill
        return render_prompt(self.tokenizer, req.messages, chat=self.chat) + req.prefill

    def generate(self, requests: list[RequestLike], params: SamplingParams,
                 progress: bool = False) -> list[list[Completion]]:
        reqs = [as_request(r) for r in requests]
        framed = [not self.chat and r.messages is not None for r in reqs]
        if any(framed):  # a base model in the plain frame: stop where it would write the next turn
            params = with_frame_stops(params)
        sp = self._vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, seed=params.seed)
        outs: list[Any] = self.llm.generate([self._text(r) for r in reqs], sp, use_tqdm=progress,
                                            lora_request=self.lora)
        return [[Completion(frame_reply(o.text) if plain and not r.prefill else o.text,
                            "length" if o.finish_reason == "length" else "stop",
                            len(out.prompt_token_ids), len(o.token_ids)) for o in out.outputs]
                for out, plain, r in zip(outs, framed, reqs)]
