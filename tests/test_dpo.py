"""DPO trainer: ln 2 at step 1 for every reference, log-probs vs a plain forward, reference
equivalences and cache reuse, LoRA reference = base, accumulation, resume, data forms."""
import json
import math
import random

import pytest
import torch

from charter.data.jsonl import DataError, write_jsonl
from charter.tiny import tiny_corpus
from charter.train.dpo import DPOConfig, train_dpo
from charter.train.lora import LoraSettings


def _pairs(n=16, seed=0):
    lines, rng = tiny_corpus(100, seed=4), random.Random(seed)
    return [{"prompt": [{"role": "user", "content": rng.choice(lines)}],
             "chosen": [{"role": "assistant", "content": rng.choice(lines)}],
             "rejected": [{"role": "assistant", "content": rng.choice(lines)}]} for _ in range(n)]


@pytest.fixture(scope="module")
def dpo_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    write_jsonl(path, _pairs())
    return path


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), lr=5e-3, max_steps=3, batch_size=4,
                warmup_ratio=0.0, resume=False)
    base.update(kw)
    return DPOConfig(**base)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _plain_chosen_nll(model_dir, rows) -> float:
    """Mean over pairs of the chosen completion's per-token NLL, from a plain unpacked forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.data.rows import pair_messages
    from charter.train.data import encode_pair
    from charter.train.losses import sequence_logps

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    nll = []
    with torch.no_grad():
        for row in rows:
            seq = encode_pair(tok, *pair_messages(row), max_length=None).chosen
            s, n = sequence_logps(model(torch.tensor([seq.input_ids])).logits, torch.tensor([seq.labels]))
            nll.append(-s.item() / n.item())
    return sum(nll) / len(nll)


LORA = LoraSettings(r=4, alpha=8)
REFERENCES = {"precomputed": {"reference": "precomputed"}, "copy": {"reference": "copy"},
              "lora-adapter": {"lora": LORA, "reference": "adapter"},
              "lora-precomputed": {"lora": LORA, "reference": "precomputed"}}


@pytest.mark.parametrize("kw", list(REFERENCES.values()), ids=list(REFERENCES))
def test_step1_loss_is_ln2_with_every_regulariser(tiny_model_dir, dpo_data, tmp_path, kw):
    """At step 1 policy == reference token for token, so the squared KL is 0 and the loss is
    ln 2 + nll_coef * NLL(chosen). The shuffled window differs from the precomputation's batches,
    and pairs of different lengths make packing reorder sequences."""
    from charter.train.loop import window_order

    m = _metrics(train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "o", max_steps=2, batch_size=4,
                                grad_accum=2, kl_coef=1.0, nll_coef=0.5, **kw)))
    step1 = window_order(16, 8, seed=0, shuffle=True, world=1)(0)  # the shuffled window of step 1
    nll = _plain_chosen_nll(tiny_model_dir, [_pairs()[i] for i in step1])
    assert m[0]["sq_kl"] == pytest.approx(0.0, abs=1e-9)
    assert m[0]["nll"] == pytest.approx(nll, abs=1e-5)
    assert m[0]["loss"] == pytest.approx(math.log(2) + 0.5 * nll, abs=1e-5)
    assert m[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert m[1]["sq_kl"] > 0  # it did learn, and the regulariser sees it


def test_logps_are_summed_completion_logps_of_plain_forward(tiny_model_dir, dpo_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from charter.data.rows import pair_messages
    from charter.train.data import encode_pair
    from charter.train.losses import sequence_logps

    m = _metrics(train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "o", max_steps=1, shuffle=False,
                                batch_size=16)))[0]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sums = {"c": [], "r": []}
    with torch.no_grad():
        for row in _pairs():
            pair = encode_pair(tok, *pair_messages(row), max_length=None)
            for key, seq in (("c", pair.chosen), ("r", pair.rejected)):
                s, _ = sequence_logps(model(torch.tensor([seq.input_ids])).logits, torch.tensor([seq.labels]))
                sums[key].append(s.item())
            # only the final completion (+ its end-of-turn token) is trained
            n_content = len(tok(row["chosen"][0]["content"], add_special_tokens=False)["input_ids"])
            assert pair.chosen.n_trainable == n_content + 1
    assert m["logps/chosen"] == pytest.approx(sum(sums["c"]) / 16, abs=1e-4)
    assert m["logps/rejected"] == pytest.approx(sum(sums["r"]) / 16, abs=1e-4)


def test_precomputed_matches_frozen_copy_and_cache_is_reused(tiny_model_dir, dpo_data, tmp_path):
    cache = tmp_path / "cache"
    pre = train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "pre", ref_cache_dir=str(cache)))
    files = list(cache.glob("ref-logps-*.safetensors"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    cp = train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "copy", reference="copy"))
    for a, b in zip(_metrics(pre), _metrics(cp)):
        for k in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert a[k] == pytest.approx(b[k], abs=1e-5)
    train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "pre2", ref_cache_dir=str(cache)))
    assert list(cache.glob("ref-logps-*.safetensors")) == files and files[0].stat().st_mtime_ns == mtime
    # different data -> different key
    other = tmp_path / "other.jsonl"
    write_jsonl(other, _pairs(seed=1))
    train_dpo(_cfg(tiny_model_dir, other, tmp_path / "pre3", ref_cache_dir=str(cache), max_steps=1))
    assert len(list(cache.glob("ref-logps-*.safetensors"))) == 2


def test_lora_reference_is_the_base(tiny_model_dir, dpo_data, tmp_path):
    """The LoRA run's log-probs at step 1 equal the full-FT ones (adapter B=0). Later its rewards
    are non-zero: the reference (adapter disabled) stays the base while the policy moves; a
    reference that kept the adapter on would give rewards identically 0."""
    lora = _metrics(train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "l", lora=LoraSettings(r=4, alpha=8),
                                   max_steps=3)))
    full = _metrics(train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "f", max_steps=1)))
    assert lora[0]["logps/chosen"] == pytest.approx(full[0]["logps/chosen"], abs=1e-5)
    for r in lora:
        assert r["rewards/margins"] == pytest.approx(r["rewards/chosen"] - r["rewards/rejected"], abs=1e-9)
    assert lora[-1]["rewards/chosen"] != pytest.approx(0.0, abs=1e-7)


def test_accumulation_equivalence_and_resume(tiny_model_dir, dpo_data, tmp_path):
    from safetensors.torch import load_file

    a = train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "a", batch_size=8, grad_accum=1, max_steps=4))
    b = train_dpo(_cfg(tiny_model_dir, dpo_data, tmp_path / "b", batch_size=2, grad_accum=4, max_steps=4))
    assert [r["loss"] for r in _metrics(a)] == pytest.approx([r["loss"] for r in _metrics(b)], abs=1e-5)

    class Killed(Exception):
        pass

    def crash(step, row):
        if step == 3:
            raise Killed

    cfg = _cfg(tiny_model_dir, dpo_data, tmp_path / "cut", batch_size=8, max_steps=4, save_steps=2, resume=True)
    with pytest.raises(Killed):
        train_dpo(cfg, on_step=crash)
    c = train_dpo(cfg)
    wa, wc = load_file(str(a / "model.safetensors")), load_file(str(c / "model.safetensors"))
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_pair_forms_encode_identically(tiny_model_dir):
    from transformers import AutoTokenizer

    from charter.data.rows import pair_messages
    from charter.train.data import encode_pair

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    u, c, r = "Hello there?", "Warm tea.", "Cold sea."
    explicit = {"prompt": [{"role": "user", "content": u}], "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}]}
    strings = {"prompt": u, "chosen": c, "rejected": r}
    implicit = {"chosen": [{"role": "user", "content": u}, {"role": "assistant", "content": c}],
                "rejected": [{"role": "user", "content": u}, {"role": "assistant", "content": r}]}
    hh = {"chosen": f"\n\nHuman: {u}\n\nAssistant: {c}", "rejected": f"\n\nHuman: {u}\n\nAssistant: {r}"}
    want = encode_pair(tok, *pair_messages(explicit), None)
    for row in (strings, implicit, hh):
        got = encode_pair(tok, *pair_messages(row), None)
        assert got.chosen == want.chosen and got.rejected == want.rejected


def test_bad_pair_and_soft_label_errors(tiny_model_dir, tmp_path):
    rows = _pairs(4)
    del rows[2]["rejected"]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:3: rejected: missing"):
        train_dpo(_cfg(tiny_model_dir, tmp_path / "bad.jsonl", tmp_path / "o", max_steps=1))
    rows = _pairs(4)
    rows[1]["label_prob"] = 1.5
    write_jsonl(tmp_path / "soft.jsonl", rows)
    with pytest.raises(DataError, match=r"soft\.jsonl:2: label_prob"):
        train_dpo(_cfg(tiny_model_dir, tmp_path / "soft.jsonl", tmp_path / "o", max_steps=1))
