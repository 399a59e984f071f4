"""Memory savers and their exactness. The chunked LM-head log-probs (charter.train.head): exact
values and gradients, and no [trained tokens x vocabulary] tensor kept for the backward pass (what
made Charter use more memory than TRL on gemma-3's 262k vocabulary). Gradient checkpointing:
the same training run, step for step."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import charter.train.head as head
from charter.chat import EncodedChat
from charter.train.batching import pack, packed_token_logps
from charter.train.lora import LoraSettings
from charter.train.loop import load_model_and_tokenizer
from charter.train.sft import SFTConfig, train_sft


def log_softmax_at(h, w, b, t):
    logits = h @ w.T + (0 if b is None else b)
    return torch.log_softmax(logits, -1).gather(1, t[:, None]).squeeze(1)


@pytest.mark.parametrize("keep_chunks", [0, 3, 100])  # recompute every chunk, some, none
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_log_softmax(keep_chunks, bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    t, upstream = torch.randint(50, (37,), generator=g), torch.randn(37, dtype=torch.float64, generator=g)
    inputs = [h, w] + ([b] if bias else [])
    want = log_softmax_at(h, w, b, t)
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    got = head._HeadLogps.apply(h, w, b, t, 5, keep_chunks)  # 8 chunks of 5 positions
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, c in zip(got_grads, want_grads):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)


def random_seqs(vocab: int, n: int = 4, seed: int = 0) -> list[EncodedChat]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(30, 60))]
        cut = rng.randint(5, 20)  # a prompt, then a trained completion
        out.append(EncodedChat(ids, [-100] * cut + ids[cut:]))
    return out


@pytest.fixture
def tied_model():
    """Tied embeddings, like gemma-3: the head's weight gradient meets the input embedding's."""
    from charter.tiny import build_model, build_tokenizer

    model = build_model(build_tokenizer(), tie_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def test_chunked_head_matches_full_logits_and_saves_no_whole_logits(tied_model, monkeypatch):
    model, vocab = tied_model, tied_model.config.vocab_size
    monkeypatch.setattr(head, "CHUNK_ELEMENTS", 8 * vocab)  # chunks of 8 positions, none kept: recompute
    monkeypatch.setattr(head, "KEEP_ELEMENTS", 0)
    batch = pack(random_seqs(vocab))
    k = len(batch.keep)
    assert k > 2 * model.config.hidden_size  # so the head weight [V, H] is smaller than [K, V] logits

    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        got = packed_token_logps(model, batch, keep_only=True)
    assert max(sizes) < k * vocab  # before: log_softmax kept its [K, V] output for backward
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))

    want = packed_token_logps(model, batch, keep_only=False)  # the model's own logits
    want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, c in zip(got_grads, want_grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)])
def test_gradient_checkpointing_trains_identically(tiny_model_dir, tmp_path, lora):
    from charter.data.jsonl import write_jsonl
    from charter.tiny import tiny_corpus

    lines = tiny_corpus(40, seed=3)
    data = tmp_path / "sft.jsonl"
    write_jsonl(data, [{"messages": [{"role": "user", "content": lines[i]},
                                     {"role": "assistant", "content": lines[i + 1]}]} for i in range(0, 16, 2)])
    runs = []
    for ckpt in (False, True):
        out = tmp_path / f"ckpt-{ckpt}"
        cfg = SFTConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(out), lr=1e-3, max_steps=3,
                        batch_size=4, warmup_ratio=0.0, resume=False, lora=lora, gradient_checkpointing=ckpt)
        model = load_model_and_tokenizer(cfg)[0]
        assert [layer.gradient_checkpointing for layer in model.get_decoder().layers] == [ckpt] * 2
        train_sft(cfg)
        weights = out / ("adapter_model.safetensors" if lora else "model.safetensors")
        runs.append(([json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()],
                     load_file(str(weights))))
    (loss_a, w_a), (loss_b, w_b) = runs
    assert loss_a == pytest.approx(loss_b, abs=1e-6) and loss_a[0] != loss_a[-1]
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=0, atol=1e-6)


def test_packing_check_refuses_logits_the_model_post_processes(tied_model):
    from charter.train.batching import check_packing

    seqs = random_seqs(tied_model.config.vocab_size, n=3)
    check_packing(tied_model, seqs, keep_only=True)  # a plain head: the chunked path is the model's logits

    def double(module, args, output):  # an architecture that rescales its logits after the head
        output.logits = output.logits * 2
        return output

    tied_model.register_forward_hook(double)
    with pytest.raises(RuntimeError, match="post-processed"):
        check_packing(tied_model, seqs, keep_only=True)
    check_packing(tied_model, seqs, keep_only=False)  # the model's own full logits stay consistent
