"""Two CPU processes (gloo) == one process at the same global batch.

The processes are started by `torch.distributed.run` (what `accelerate launch` uses for
multi-process runs; its CPU path needs MPI), and `Accelerator` picks up the environment and
sets up gloo -- the training code is the same as for one process.

Every process sees the same global window and divides by its global token/pair count, and
DDP averages gradients, so the trajectories must agree to float rounding.
"""
import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from charter.data.jsonl import write_jsonl
from charter.toy.tiny import tiny_corpus

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    from charter.train.dpo import DPOConfig, train_dpo
    from charter.train.sft import SFTConfig, train_sft
    model, sft_data, dpo_data, out, bs = sys.argv[1:6]
    common = dict(model=model, lr=5e-3, max_steps=3, batch_size=int(bs), grad_accum=2, warmup_ratio=0.0,
                  resume=False, save_steps=0)
    train_sft(SFTConfig(data=sft_data, output_dir=out + "/sft", **common))
    train_dpo(DPOConfig(data=dpo_data, output_dir=out + "/dpo", reference="precomputed", **common))
""")


def _data(tmp_path):
    lines = tiny_corpus(60, seed=9)
    say = [{"role": "user", "content": lines[i]} for i in range(16)]
    write_jsonl(tmp_path / "sft.jsonl", [{"messages": [say[i], {"role": "assistant", "content": lines[16 + i]}]}
                                         for i in range(16)])
    write_jsonl(tmp_path / "dpo.jsonl", [{"prompt": [say[i]], "chosen": lines[32 + i], "rejected": lines[44 + i % 16]}
                                         for i in range(16)])


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    _data(tmp_path)
    script = tmp_path / "train_both.py"
    script.write_text(SCRIPT)
    args = [str(tiny_model_dir), str(tmp_path / "sft.jsonl"), str(tmp_path / "dpo.jsonl")]
    # one process, micro-batch 4 x accumulation 2 = global batch 8
    _run([sys.executable, str(script), *args, str(tmp_path / "one"), "4"], tmp_path)
    # two processes, micro-batch 2 x accumulation 2 x 2 processes = global batch 8
    with socket.socket() as sock:  # a free port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
          str(script), *args, str(tmp_path / "two"), "2"], tmp_path)
    from safetensors.torch import load_file

    for kind, keys in (("sft", ("loss",)), ("dpo", ("loss", "logps/chosen", "rewards/margins"))):
        one, two = _metrics(tmp_path / "one" / kind / "metrics.jsonl"), _metrics(tmp_path / "two" / kind / "metrics.jsonl")
        assert len(one) == len(two) == 3
        for a, b in zip(one, two):
            for k in keys:
                assert b[k] == pytest.approx(a[k], abs=1e-5), (kind, k)
        assert one[-1]["num_tokens"] == two[-1]["num_tokens"]  # all-reduced over both processes
        wa = load_file(str(tmp_path / "one" / kind / "model.safetensors"))
        wb = load_file(str(tmp_path / "two" / kind / "model.safetensors"))
        assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from charter.train.sft import SFTConfig, train_sft
    model, data, out, crash_at = sys.argv[1:5]

    def crash(step, row):
        if step == int(crash_at):
            raise SystemExit(3)

    train_sft(SFTConfig(model=model, data=data, output_dir=out, lr=5e-3, max_steps=4, batch_size=2, grad_accum=2,
                        warmup_ratio=0.0, resume=True, save_steps=2), on_step=crash)
""")


def test_two_processes_kill_and_resume_is_exact(tiny_model_dir, tmp_path):
    """Each process saves and restores its own optimiser and RNG state (safetensors + JSON)."""
    from safetensors.torch import load_file

    _data(tmp_path)
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, str(script),
              str(tiny_model_dir), str(tmp_path / "sft.jsonl")]
    _run(launch + [str(tmp_path / "full"), "0"], tmp_path)
    cut = subprocess.run(launch + [str(tmp_path / "cut"), "3"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert cut.returncode != 0 and (tmp_path / "cut" / "checkpoints" / "step-2" / "rng-rank1.json").exists()
    _run(launch + [str(tmp_path / "cut"), "0"], tmp_path)
    assert [r["loss"] for r in _metrics(tmp_path / "cut" / "metrics.jsonl")] == \
        [r["loss"] for r in _metrics(tmp_path / "full" / "metrics.jsonl")]
    wa, wb = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
