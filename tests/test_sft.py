"""SFT trainer: objective equivalences, masking vs a plain forward, exact resume, chaining, export."""
import json
import random

import pytest
import torch

from charter.data.jsonl import DataError, write_jsonl
from charter.tiny import tiny_corpus
from charter.train.losses import sequence_logps
from charter.train.lora import LoraSettings
from charter.train.sft import SFTConfig, train_sft


def _rows(n=16, seed=0):
    lines, rng = tiny_corpus(100, seed=3), random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": rng.choice(lines)}, {"role": "assistant", "content": rng.choice(lines)}]
        if i % 3 == 0:  # multi-turn: every assistant turn is trained
            msgs += [{"role": "user", "content": rng.choice(lines)}, {"role": "assistant", "content": rng.choice(lines)}]
        rows.append({"messages": msgs})
    return rows


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    write_jsonl(path, _rows())
    return path


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), lr=1e-3, max_steps=4, batch_size=8,
                warmup_ratio=0.0, resume=False)
    base.update(kw)
    return SFTConfig(**base)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_batch_times_accum_is_the_same_objective(tiny_model_dir, sft_data, tmp_path):
    a = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "a", batch_size=8, grad_accum=1))
    b = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "b", batch_size=2, grad_accum=4))
    la, lb = [r["loss"] for r in _metrics(a)], [r["loss"] for r in _metrics(b)]
    assert len(la) == 4 and la[0] != la[-1]
    assert la == pytest.approx(lb, abs=1e-5)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_step1_loss_is_assistant_token_mean_of_plain_forward(tiny_model_dir, sft_data, tmp_path):
    """Packed, LM-head-on-targets-only loss == HF forward of each row, masked by encode_chat."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.chat import encode_chat

    out = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "o", max_steps=1, shuffle=False, batch_size=16))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in _rows():
            enc = encode_chat(tok, row["messages"])
            s, n = sequence_logps(model(torch.tensor([enc.input_ids])).logits, torch.tensor([enc.labels]))
            total, count = total - s.item(), count + n.item()
    assert _metrics(out)[0]["loss"] == pytest.approx(total / count, abs=1e-5)
    assert _metrics(out)[0]["num_tokens"] == count


def test_kill_and_resume_equals_uninterrupted(tiny_model_dir, sft_data, tmp_path):
    full = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "full", max_steps=5, batch_size=4, save_steps=2))

    class Killed(Exception):
        pass

    def crash(step, row):
        if step == 3:  # after the step-2 checkpoint, mid-epoch
            raise Killed

    cfg = _cfg(tiny_model_dir, sft_data, tmp_path / "cut", max_steps=5, batch_size=4, save_steps=2, resume=True)
    with pytest.raises(Killed):
        train_sft(cfg, on_step=crash)
    assert (tmp_path / "cut" / "checkpoints" / "step-2").exists()
    resumed = train_sft(cfg)
    wf, wr = _weights(full), _weights(resumed)
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [r["step"] for r in _metrics(resumed)] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in _metrics(resumed)] == [r["loss"] for r in _metrics(full)]


def _crash_at(n):
    class Killed(Exception):
        pass

    def crash(step, row):
        if step == n:
            raise Killed
    return Killed, crash


def test_checkpoints_hold_no_pickle_and_lora_dropout_resumes_exactly(tiny_model_dir, sft_data, tmp_path):
    """Checkpoints are safetensors + JSON only (nothing torch.load could unpickle), and they carry
    the RNG: a LoRA run with dropout killed and resumed equals the uninterrupted one bit for bit."""
    from safetensors.torch import load_file

    lora = LoraSettings(r=4, alpha=8, dropout=0.3)
    kw = dict(max_steps=4, batch_size=4, save_steps=2, lora=lora, lr=1e-2)
    full = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "full", **kw))
    killed, crash = _crash_at(3)
    cfg = _cfg(tiny_model_dir, sft_data, tmp_path / "cut", resume=True, **kw)
    with pytest.raises(killed):
        train_sft(cfg, on_step=crash)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-2"
    files = sorted(f.name for f in ckpt.iterdir())
    assert files and all(f.endswith((".safetensors", ".json")) for f in files), files
    for f in ckpt.glob("*.safetensors"):
        load_file(str(f))
    for f in ckpt.glob("*.json"):
        json.loads(f.read_text())
    resumed = train_sft(cfg)
    wf, wr = load_file(str(full / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [r["loss"] for r in _metrics(resumed)] == [r["loss"] for r in _metrics(full)]


@pytest.mark.parametrize("change", ["data", "config"])
def test_resume_with_changed_data_or_config_is_refused(tiny_model_dir, sft_data, tmp_path, change):
    import subprocess
    import sys

    killed, crash = _crash_at(3)
    data = tmp_path / "data.jsonl"
    write_jsonl(data, _rows())
    cfg = _cfg(tiny_model_dir, data, tmp_path / "cut", max_steps=4, batch_size=4, save_steps=2, resume=True)
    with pytest.raises(killed):
        train_sft(cfg, on_step=crash)
    if change == "data":
        write_jsonl(data, _rows(seed=1))
    else:
        cfg = cfg.model_copy(update={"lr": 2e-3})
    cfg.save(tmp_path / "sft.yaml")
    res = subprocess.run([sys.executable, "-m", "charter.cli", "train", "sft", str(tmp_path / "sft.yaml")],
                         capture_output=True, text=True, timeout=300)
    said = [line for line in (res.stdout + res.stderr).splitlines() if "error" in line.lower() or "Trace" in line]
    assert res.returncode == 2 and len(said) == 1, res.stderr[-2000:]
    assert said[0].startswith("error: ") and "step-2: saved with a different config or data file" in said[0]
    assert not (tmp_path / "cut" / "model.safetensors").exists()


def test_full_ft_output_loads_with_transformers(tiny_model_dir, sft_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "o", max_steps=1))
    assert (out / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_sft_from_dpo_adapter_chains_and_merges(tiny_model_dir, sft_data, tmp_path):
    """SFT starting from a LoRA output folds that adapter in first; the merged export equals
    base + delta(first) + delta(second), and the base weights on disk are untouched."""
    from safetensors.torch import load_file

    from charter.train.lora import merge_adapters

    before = load_file(str(tiny_model_dir / "model.safetensors"))
    lora = LoraSettings(r=4, alpha=8)
    first = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "first", max_steps=2, lora=lora, lr=1e-2))
    second = train_sft(_cfg(first, sft_data, tmp_path / "second", max_steps=2, lora=lora, lr=1e-2, merge=True))
    rec = json.loads((second / "charter_train.json").read_text())
    assert rec["base_model"] == str(tiny_model_dir) and rec["trained_on"] == [str(first)]
    ref = merge_adapters(tiny_model_dir, [(first, 1.0), (second / rec["stage_adapter"], 1.0)], tmp_path / "ref")
    got, want = load_file(str(second / "merged" / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], before[q])
    after = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_chained_lora_export_loads_whole_chain_with_plain_peft(tiny_model_dir, sft_data, tmp_path):
    """An adapter trained on another adapter is exported self-contained: plain PEFT on the raw
    base (what Hub / vLLM-LoRA users do) gives the same logits as Charter's chain loading and as
    applying the chain step by step; its own delta alone (stage_adapter/) names its real base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from charter.backends.hf import load_causal_lm

    lora = LoraSettings(r=4, alpha=8)
    first = train_sft(_cfg(tiny_model_dir, sft_data, tmp_path / "first", max_steps=2, lora=lora, lr=1e-2))
    second = train_sft(_cfg(first, sft_data, tmp_path / "second", max_steps=2, lora=LoraSettings(r=2, alpha=8),
                            lr=1e-2))
    raw = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # noqa: E731
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        plain = PeftModel.from_pretrained(raw(), str(second)).merge_and_unload()(ids).logits
        charter, _ = load_causal_lm(str(second))
        torch.testing.assert_close(plain, charter(ids).logits, rtol=0, atol=1e-5)
        step = PeftModel.from_pretrained(raw(), str(first)).merge_and_unload()
        step = PeftModel.from_pretrained(step, str(second / "stage_adapter")).merge_and_unload()
        torch.testing.assert_close(plain, step(ids).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(plain, PeftModel.from_pretrained(raw(), str(first))(ids).logits, atol=1e-4)
    config = lambda d: json.loads((d / "adapter_config.json").read_text())  # noqa: E731
    assert config(second)["base_model_name_or_path"] == str(tiny_model_dir)
    assert config(second / "stage_adapter")["base_model_name_or_path"] == str(first)


def test_bad_row_names_file_line_and_field(tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = _rows(3)
    rows[1] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*messages\[1\]\.content"):
        train_sft(_cfg(tiny_model_dir, path, tmp_path / "o", max_steps=1))


def test_sft_row_formats_and_dropped_rows(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from charter.data.rows import sft_messages
    from charter.train.data import read_sft

    want = [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert sft_messages({"instruction": "Add.", "input": "2 and 3", "output": "5"}) == want
    assert sft_messages({"prompt": "Add.\n\n2 and 3", "completion": "5"}) == want
    assert sft_messages({"text": "\n\nHuman: Add.\n\n2 and 3\n\nAssistant: 5"}) == want
    rows = [{"messages": want}, {"messages": [{"role": "user", "content": "only a question?"}]},
            {"instruction": "Add.", "input": "2 and 3", "output": "5"}]
    write_jsonl(tmp_path / "mixed.jsonl", rows)
    seqs, stats = read_sft(tmp_path / "mixed.jsonl", AutoTokenizer.from_pretrained(tiny_model_dir), 64)
    assert stats.dropped_no_trainable == 1 and len(seqs) == 2 and seqs[0] == seqs[1]
    # read_sft also reports truncation: a long answer is cut to max_length, still trained
    write_jsonl(tmp_path / "long.jsonl", rows + [{"prompt": "Count.", "completion": "one two three " * 40}])
    seqs, stats = read_sft(tmp_path / "long.jsonl", AutoTokenizer.from_pretrained(tiny_model_dir), 64)
    assert stats.dropped_no_trainable == 1 and stats.kept == len(seqs) == 3 and stats.truncated == 1
    assert len(seqs[2]) == 64 and seqs[2].truncated and stats.tokens == sum(len(s) for s in seqs)
