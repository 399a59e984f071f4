"""Generation backends behind one `Generator` interface; `make_generator` picks one from config.

- `hf`: local transformers (the embedded default), batched with left padding.
- `openai`: any OpenAI-compatible HTTP endpoint (vLLM serve, `transformers serve`, OpenRouter, Together).
- `vllm`: the offline vLLM engine (optional extra, imported only when used).
"""
from __future__ import annotations

from typing import Literal

from charter.backends.base import Completion, GenerationRequest, Generator, SamplingParams, as_request
from charter.config import Config, ConfigError
from charter.models import ChatTemplateFile


class BackendConfig(Config):
    kind: Literal["hf", "openai", "vllm"] = "hf"
    model: str = ""  # local path / hub id (hf, vllm) or the served model name (openai)
    adapter: str | None = None  # LoRA adapter folder (hf, vllm); with openai, name the adapter as `model`
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # openai: NAME of the env var holding the key (never the key itself)
    chat: bool | None = None  # chat API/template (True) or completions/raw prompt (False); None = detect
    chat_template: ChatTemplateFile = None  # hf: a Jinja file used as the tokenizer's template (base models have none)
    concurrency: int = 8  # openai: requests in flight
    timeout: float = 120.0  # openai: seconds per request
    max_retries: int = 5  # openai: on 429 / 5xx / timeouts / connection errors
    retry_backoff: float = 0.5  # openai: first wait in seconds, doubled per retry (with jitter)
    retry_max_wait: float = 30.0  # openai: cap on one wait
    dialect: Literal["vllm", "transformers", "openai"] = "vllm"  # openai: which extras the server accepts
    tokenizer: str | None = None  # openai: local tokenizer to render chats where the server lacks prefill
    batch_size: int = 32  # hf: rows per generate call
    dtype: str | None = None  # hf/vllm: "bfloat16", "float16", "float32" or None/"auto"
    device: str | None = None  # hf: "cpu", "cuda", "cuda:1"; None = cuda if available
    tensor_parallel: int = 1  # vllm


def make_generator(cfg: BackendConfig) -> Generator:
    """Build the configured backend; heavy imports happen here, not at module import."""
    if not cfg.model:
        raise ConfigError(f"backend ({cfg.kind}): 'model' is required")
    if cfg.kind == "hf":
        from charter.backends.hf import HFGenerator  # deferred: start-up (configs import this module; torch)

        return HFGenerator(cfg.model, adapter=cfg.adapter, batch_size=cfg.batch_size, device=cfg.device,
                           dtype=cfg.dtype, chat=cfg.chat, chat_template=cfg.chat_template)
    if cfg.kind == "openai":
        from charter.backends.openai import OpenAIGenerator  # deferred: start-up (httpx)

        return OpenAIGenerator.from_config(cfg)
    from charter.backends.vllm import VLLMGenerator  # deferred: optional extra (charter[vllm])

    return VLLMGenerator.from_config(cfg)


__all__ = ["BackendConfig", "Completion", "GenerationRequest", "Generator", "SamplingParams",
           "as_request", "make_generator"]
