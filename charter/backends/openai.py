"""Any OpenAI-compatible endpoint: vLLM serve, `transformers serve`, OpenRouter, Together, OpenAI.

Async httpx with a concurrency limit. Each of a request's `n` samples is its own call
with its own seed (derived from the request and sample index), so samples do not depend
on which other requests shared a batch, and servers that ignore `n` still work.
Failures that a retry can fix (429, 5xx, timeouts, refused connections) are retried with
exponential backoff; other 4xx errors fail at once with the server's message.

Chat requests use the chat API; raw prompts and base models (`chat=False`) use the
completions API. Servers differ in the extras they accept (`dialect`):
- `vllm`: top_k / repetition_penalty as top-level fields; prefill via `continue_final_message`.
- `transformers`: extras inside a `generation_config` JSON string (the server rejects unknown fields).
- `openai`: strict OpenAI schema; extras are dropped (with a warning).
Where chat prefill is unsupported, a local `tokenizer` lets us render the chat ourselves
and send it to the completions API.

The API key is read from the environment variable named in the config; it is kept only in
the request headers and never appears in logs, errors, reprs or provenance.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from typing import Any, Literal

import httpx
from tqdm.auto import tqdm

from charter.backends.base import (Completion, GenerationRequest, RequestLike, SamplingParams, as_request,
                                   with_frame_stops)
from charter.chat import render_prompt
from charter.chat_render import frame_reply
from charter.config import ConfigError
from charter.data.jsonl import stable_id
from charter.faults import RunError, command_line
from charter.models import load_tokenizer

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(RunError):
    """A request the server refused, or that kept failing after all retries (the CLI prints one line)."""


def api_key(api_key_env: str | None) -> str | None:
    """The key named by `api_key_env`, or None when none is named: a key is only ever sent to a
    server the user tied it to, never picked up from `$OPENAI_API_KEY` by default."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(f"backend: environment variable {api_key_env} (api_key_env) is not set")
    return key


class OpenAIGenerator:
    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, chat: bool | None = None,
                 concurrency: int = 8, timeout: float = 120.0, max_retries: int = 5,
                 dialect: Literal["vllm", "transformers", "openai"] = "vllm", tokenizer: Any = None,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        self.name = model
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.chat = chat
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.dialect = dialect
        self.backoff, self.max_backoff = backoff, max_backoff
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self._headers = {"Content-Type": "application/json"}
        key = api_key(api_key_env)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._warned: set[str] = set()
        self.stats = {"calls": 0, "retries": 0}

    @classmethod
    def from_config(cls, cfg) -> "OpenAIGenerator":
        if not cfg.base_url:
            raise ConfigError("backend (openai): 'base_url' is required, e.g. http://127.0.0.1:8000/v1")
        return cls(cfg.model, cfg.base_url, cfg.api_key_env, cfg.chat, cfg.concurrency, cfg.timeout,
                   cfg.max_retries, cfg.dialect, cfg.tokenizer, cfg.retry_backoff, cfg.retry_max_wait)

    def __repr__(self) -> str:  # no headers: they hold the key
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r}, dialect={self.dialect!r})"

    # ------------------------------------------------------------------ request bodies

    def _sampling(self, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_new_tokens,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        extras = {k: v for k, v in (("top_k", params.top_k), ("repetition_penalty", params.repetition_penalty))
                  if v not in (0, 1.0)}
        if extras and self.dialect == "vllm":
            body.update(extras)
        elif self.dialect == "transformers":  # the server only turns sampling on through generation_config
            body["generation_config"] = json.dumps({**extras, "do_sample": params.temperature > 0})
        elif extras and "extras" not in self._warned:
            self._warned.add("extras")
            log.warning("openai dialect: dropping unsupported sampling params %s", sorted(extras))
        return body

    def _endpoint_and_body(self, req: GenerationRequest, params: SamplingParams, seed: int | None) -> tuple[str, dict]:
        body = self._sampling(params, seed)
        if req.prompt is not None:
            return "/completions", {**body, "prompt": req.prompt + req.prefill}
        if self.chat is False or (req.prefill and self.dialect != "vllm"):
            return "/completions", {**body, "prompt": self._render(req) + req.prefill}
        messages = list(req.messages)
        if req.prefill:  # vLLM: continue the assistant turn we started
            messages.append({"role": "assistant", "content": req.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return "/chat/completions", {**body, "messages": messages}

    def _render(self, req: GenerationRequest) -> str:
        """Chat -> text for the completions API: local template, or the base-model fallback
        (`chat=False`; without a tokenizer it has no BOS/EOS strings)."""
        if self.chat is not False and self.tokenizer is None:
            raise BackendError(f"{self.dialect} dialect has no chat prefill; set the backend's `tokenizer` so the "
                               "chat can be rendered locally and sent to the completions API")
        return render_prompt(self.tokenizer, req.messages, chat=self.chat)

    # ------------------------------------------------------------------ calls

    async def _call(self, client, path: str, body: dict) -> dict:
        for attempt in range(self.max_retries + 1):
            self.stats["calls"] += 1
            retry_after = None
            try:
                r = await client.post(self.base_url + path, json=body)
                if r.status_code < 400:
                    return r.json()
                if r.status_code not in RETRY_STATUS:
                    raise BackendError(f"{self.base_url}{path}: HTTP {r.status_code}: {r.text[:500]}")
                problem = f"HTTP {r.status_code}: {r.text[:200]}"
                retry_after = _retry_after(r.headers.get("retry-after"))
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                raise BackendError(f"{self.base_url}{path}: failed after {self.max_retries + 1} attempts ({problem}); "
                                   f"finished records are kept: once the server answers, resume with: {command_line()}")
            self.stats["retries"] += 1
            delay = retry_after or min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random())
            log.warning("%s%s: %s; retry %d/%d in %.1fs", self.base_url, path, problem, attempt + 1,
                        self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _one(self, client, sem, req: GenerationRequest, params: SamplingParams, k: int) -> Completion:
        seed = None if params.seed is None else int(stable_id(params.seed, req.messages, req.prompt, req.prefill, k)[:8], 16) % (2 ** 31)
        framed = self.chat is False and req.messages is not None  # a base model in the plain frame
        if framed:
            params = with_frame_stops(params)
        path, body = self._endpoint_and_body(req, params, seed)
        async with sem:
            data = await self._call(client, path, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if path == "/chat/completions" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}{path}: unexpected response {str(data)[:300]}") from None
        text = text or ""
        cut = min((i for i in (text.find(s) for s in params.stop if s) if i >= 0), default=-1)
        if cut >= 0:  # some servers return the stop string itself
            text = text[:cut]
        if framed and not req.prefill:
            text = frame_reply(text)
        usage = data.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" and cut < 0 else "stop"
        return Completion(text, finish, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                          {"seed": seed} if seed is not None else {})

    async def agenerate(self, requests: list[RequestLike], params: SamplingParams,
                        progress: bool = False) -> list[list[Completion]]:
        reqs = [as_request(r) for r in requests]
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        bar = tqdm(total=len(reqs) * params.n, desc=f"generate {self.name}", disable=not progress)

        async def tracked(req, k):
            c = await self._one(client, sem, req, params, k)
            bar.update(1)
            return c

        async with httpx.AsyncClient(headers=self._headers, timeout=self.timeout, limits=limits) as client:
            flat = await asyncio.gather(*(tracked(r, k) for r in reqs for k in range(params.n)))
        bar.close()
        return [list(flat[i * params.n:(i + 1) * params.n]) for i in range(len(reqs))]

    def generate(self, requests: list[RequestLike], params: SamplingParams,
                 progress: bool = False) -> list[list[Completion]]:
        coro = self.agenerate(requests, params, progress)
        try:
            in_loop = asyncio.get_running_loop() is not None
        except RuntimeError:
            in_loop = False
        # inside a running event loop (e.g. a notebook) asyncio.run is not allowed: use a thread
        return _run_in_thread(coro) if in_loop else asyncio.run(coro)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, float(value)) if value else None
    except ValueError:
        return None


def _run_in_thread(coro):
    box: dict[str, Any] = {}

    def target():
        try:
            box["out"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]
