"""Two CPU processes (gloo) == one process at the same global batch.

The processes are started by `torch.distributed.run` (what `accelerate launch` uses for
multi-process runs; its CPU path needs MPI), and `Accelerator` picks up the environment and
sets up gloo -- the training code is the same as for one process.

Every process sees the same global window and divides by its global token/pair count, and
DDP averages gradients, so the trajectories must agree to float rounding. The all-reduce sums in
a different order from one process, so gradients agree to ~1e-7, not bit for bit. Adam divides
by sqrt(v), which turns that noise into updates of up to `lr` on near-zero gradients, so weights
are compared after SGD (update = -lr * gradient, linear in it): a 1e-6 gradient difference over 3
steps at lr 5e-3 moves a weight by < 2e-8. Had the ranks stopped averaging, each would step on
its half of the window and the weights would differ by about lr * |gradient| (1e-4 or more).
"""
import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from charter.data.jsonl import write_jsonl
from charter.tiny import tiny_corpus

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    from charter.train.dpo import DPOConfig, train_dpo
    from charter.train.sft import SFTConfig, train_sft
    model, sft_data, dpo_data, out, bs = sys.argv[1:6]
    for optimizer in ("adamw", "sgd"):
        common = dict(model=model, lr=5e-3, max_steps=3, batch_size=int(bs), grad_accum=2, warmup_ratio=0.0,
                      resume=False, save_steps=0, optimizer=optimizer, max_grad_norm=None)
        train_sft(SFTConfig(data=sft_data, output_dir=f"{out}/{optimizer}/sft", **common))
        train_dpo(DPOConfig(data=dpo_data, output_dir=f"{out}/{optimizer}/dpo", reference="precomputed", **common))
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
        for optimizer in ("adamw", "sgd"):
            run_one, run_two = tmp_path / "one" / optimizer / kind, tmp_path / "two" / optimizer / kind
            one, two = _metrics(run_one / "metrics.jsonl"), _metrics(run_two / "metrics.jsonl")
            assert len(one) == len(two) == 3
            assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-6), (kind, optimizer)
            for a, b in zip(one, two):
                for k in keys:
                    assert b[k] == pytest.approx(a[k], abs=1e-5), (kind, optimizer, k)
            assert one[-1]["num_tokens"] == two[-1]["num_tokens"]  # all-reduced over both processes
        wa = load_file(str(tmp_path / "one" / "sgd" / kind / "model.safetensors"))
        wb = load_file(str(tmp_path / "two" / "sgd" / kind / "model.safetensors"))
        worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        assert worst < 1e-7, (kind, worst)


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
