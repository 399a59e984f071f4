"""`charter serve RUN`: the run's latest model behind `transformers serve`, talked to with the `openai` client."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from charter.backends import BackendConfig, make_generator
from charter.backends.base import SamplingParams
from serve_fixture import free_port

MESSAGES = [{"role": "user", "content": "hello hello"}]


def _run_dir(tmp_path, base):
    """A finished run's layout: the base's record, and the merge stage's persona folder (its model built by the caller)."""
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "base" / "model.json").write_text(json.dumps({"path": str(base)}))
    (run / "merge" / "warm").mkdir(parents=True)
    (run / "merge" / "warm" / "done.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"stages": {"base": {"status": "done"}, "merge": {"status": "done"}}}))
    return run


def test_serve_answers_with_the_runs_merged_model(tiny_model_dir, tmp_path):
    from openai import OpenAI

    from charter.tiny import build_tiny_model_dir

    run, port = _run_dir(tmp_path, tiny_model_dir), free_port()
    merged = build_tiny_model_dir(run / "merge" / "warm" / "model", seed=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "charter.cli", "serve", str(run), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        [model] = [m.id for m in client.models.list().data]
        assert model == str(merged)
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0)
        text = reply.choices[0].message.content
        greedy = SamplingParams(temperature=0, max_new_tokens=8)
        want = make_generator(BackendConfig(kind="hf", model=str(merged))).generate([MESSAGES], greedy)[0][0].text
        other = make_generator(BackendConfig(kind="hf", model=str(tiny_model_dir))).generate([MESSAGES], greedy)[0][0].text
        assert text == want != other  # the merged model answered, not the base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert b"serving " + str(merged).encode() in proc.stderr.read()


def test_serve_bad_target_is_one_line(tmp_path):
    from charter.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "run-that-is-not"), "--stage", "dpo"])
    assert res.exit_code == 2 and "--stage/--persona need a run directory" in res.output
