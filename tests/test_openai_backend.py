"""openai backend against a REAL `transformers serve` on loopback (tiny local model).

Recovery from a server that dies and comes back is tested end to end in test_distill.py.
"""
from __future__ import annotations

import logging

import pytest

from charter.backends import BackendConfig, make_generator
from charter.backends.base import GenerationRequest, SamplingParams
from charter.backends.openai import BackendError, OpenAIGenerator
from serve_fixture import free_port, serve  # noqa: F401  (fixture)

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
CHATS = [[{"role": "user", "content": "hello " * (i + 1)}] for i in range(6)]


def _gen(serve, **kw) -> OpenAIGenerator:
    cfg = BackendConfig(kind="openai", model=serve.model, base_url=serve.base_url, dialect="transformers", **kw)
    return make_generator(cfg)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir)))


def test_chat_and_completions_match_local_greedy(serve, hf):
    g = _gen(serve)
    reqs = CHATS[:3] + ["The cat is on the"]
    remote, local = g.generate(reqs, GREEDY), hf.generate(reqs, GREEDY)
    for r, l in zip(remote, local):
        assert r[0].text == l[0].text
        assert r[0].finish_reason == "length" and r[0].completion_tokens == 12
        assert r[0].prompt_tokens == l[0].prompt_tokens


def test_base_model_mode_uses_completions_with_the_plain_transcript(serve, tiny_model_dir):
    g = _gen(serve, chat=False)
    path, body = g._endpoint_and_body(GenerationRequest(messages=CHATS[0]), GREEDY, None)
    assert path == "/completions" and body["prompt"].endswith("Human: hello \n\nAssistant:")
    base_hf = make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir), chat=False))
    assert g.generate(CHATS[:2], GREEDY)[0][0].text == base_hf.generate(CHATS[:2], GREEDY)[0][0].text


def test_concurrency_limit_and_order(serve):
    g = _gen(serve, concurrency=3)
    inflight, peak = 0, 0
    real_call = g._call

    async def counting_call(client, path, body):
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        try:
            return await real_call(client, path, body)
        finally:
            inflight -= 1

    g._call = counting_call
    batched = g.generate(CHATS, GREEDY)
    assert peak == 3
    one_by_one = [g.generate([c], GREEDY)[0][0].text for c in CHATS]
    assert [b[0].text for b in batched] == one_by_one  # results come back in request order


def test_stop_string_is_trimmed(serve):
    g = _gen(serve)
    full = g.generate(["The cat is on the"], SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    stop = full.text[5:8]
    cut = g.generate(["The cat is on the"], SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.completion_tokens < 16


def test_n_samples_are_separate_seeded_calls(serve):
    g = _gen(serve)
    p = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=1)
    out = g.generate(["Hello"], p)[0]
    assert len(out) == 3 and len({c.meta["seed"] for c in out}) == 3
    assert len({c.text for c in out}) > 1


def test_prefill_via_local_render_equals_hf(serve, hf, tiny_model_dir):
    g = _gen(serve, tokenizer=str(tiny_model_dir))
    req = GenerationRequest(messages=CHATS[0], prefill="Sure, the")
    assert g.generate([req], GREEDY)[0][0].text == hf.generate([req], GREEDY)[0][0].text
    with pytest.raises(BackendError, match="prefill"):
        _gen(serve).generate([req], GREEDY)  # no tokenizer: refuse instead of silently dropping the prefill


def test_error_status_fails_fast_without_leaking_the_key(serve, monkeypatch, caplog):
    monkeypatch.setenv("CHARTER_TEST_KEY", "sk-secret-123")
    g = OpenAIGenerator("no-such-model", serve.base_url, api_key_env="CHARTER_TEST_KEY", dialect="transformers")
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError, match="HTTP 400") as e:
        g.generate(["hi"], GREEDY)
    assert g.stats["retries"] == 0  # a 4xx is not retried
    assert "sk-secret-123" not in str(e.value) + repr(g) + caplog.text


def test_missing_key_env_is_a_config_error():
    from charter.config import ConfigError

    with pytest.raises(ConfigError, match="CHARTER_NO_SUCH_VAR"):
        OpenAIGenerator("m", "http://127.0.0.1:1/v1", api_key_env="CHARTER_NO_SUCH_VAR")


def test_retries_give_up_on_a_dead_server():
    g = OpenAIGenerator("m", f"http://127.0.0.1:{free_port()}/v1", max_retries=3, backoff=0.01)
    with pytest.raises(BackendError, match="after 4 attempts"):
        g.generate(["hi"], GREEDY)
    assert g.stats == {"calls": 4, "retries": 3}


def test_429_and_5xx_are_retried_then_succeed():
    """A scripted loopback endpoint: 429 (with Retry-After), then 503, then a normal completion."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    replies = [(429, {"error": "slow down"}), (503, {"error": "busy"}),
               (200, {"choices": [{"text": "Fine. STOP more", "finish_reason": "length"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 5}})]
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body = replies[min(len(seen) - 1, 2)]
            data = json.dumps(body).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0.05")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        g = OpenAIGenerator("m", f"http://127.0.0.1:{httpd.server_port}/v1", max_retries=3, backoff=0.01)
        c = g.generate(["hi"], SamplingParams(temperature=0, max_new_tokens=5, stop=[" STOP"], top_k=5))[0][0]
    finally:
        httpd.shutdown()
    assert g.stats == {"calls": 3, "retries": 2}
    assert c.text == "Fine." and c.finish_reason == "stop"  # stop string found: not a length cut-off
    assert (c.prompt_tokens, c.completion_tokens) == (3, 5)
    assert seen[0]["top_k"] == 5 and seen[0]["stop"] == [" STOP"] and seen[0]["max_tokens"] == 5  # vllm dialect
