"""On-policy rollouts score the token ids that were sampled, and on-policy runs resume bit-exactly.

Decoding sampled ids and re-encoding the text is not an identity (a BPE tokenizer merges tokens
the model sampled apart), so these tests catch the ids a random tiny model really sampled from
`model.generate` itself and check that the trainers score those, token for token.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from charter.backends.base import GenerationRequest, SamplingParams
from charter.data.jsonl import write_jsonl
from charter.train.rewards import RewardConfig

NO_GUARD = RewardConfig(truncated_reward=None)  # a random model rarely stops: keep every score


class LengthMod7:
    """A reward that varies from reply to reply."""

    counts: dict = {}

    def rewards(self, prompts, replies):
        return [float(len(r) % 7) for r in replies]


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _capture_generate(model, eos_ids):
    """Record every row `model.generate` samples, cut after its first end token."""
    rows, generate = [], model.generate

    def recording(*args, **kwargs):
        out = generate(*args, **kwargs)
        width = kwargs["input_ids"].shape[1]
        for row in out[:, width:].tolist():
            end = next((j for j, t in enumerate(row) if t in eos_ids), None)
            rows.append(tuple(row if end is None else row[:end + 1]))
        return out

    model.generate = recording
    return rows


def _prompt_ids(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def _plain_logps(model, prompt_ids, reply_ids):
    """Log-probs of `reply_ids` after `prompt_ids`: one unpacked forward with full logits."""
    logits = model(torch.tensor([prompt_ids + reply_ids])).logits[0, len(prompt_ids) - 1:-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(reply_ids)[:, None])[:, 0]


# ----------------------------------------------------------------------------- the hf backend


def test_hf_completions_carry_the_sampled_ids_through_the_stop(tiny_model_dir):
    from charter.backends.hf import HFGenerator

    model, tok = _model(tiny_model_dir)
    req = ["The cat is on the"]
    prompt = torch.tensor([HFGenerator(model, tok).prompt_ids(GenerationRequest(prompt=req[0]))])
    greedy = model.generate(prompt, do_sample=False, max_new_tokens=16)[0, prompt.shape[1]:].tolist()
    full = HFGenerator(model, tok).generate(req, SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    assert full.finish_reason == "length" and full.token_ids == greedy
    # a stop string: the ids through the token that completed it, no further
    stop = full.text[5:8]
    cut = HFGenerator(model, tok).generate(req, SamplingParams(temperature=0, max_new_tokens=16, stop=[stop]))[0][0]
    assert cut.token_ids == greedy[:len(cut.token_ids)]
    assert stop in tok.decode(cut.token_ids) and stop not in tok.decode(cut.token_ids[:-1])
    # an end-of-sequence token: the ids through it, the EOS included
    j = next(j for j in range(2, 16) if greedy[j] not in greedy[:j])
    model.generation_config.eos_token_id = greedy[j]
    eos = HFGenerator(model, tok).generate(req, SamplingParams(temperature=0, max_new_tokens=16))[0][0]
    assert eos.finish_reason == "stop" and eos.token_ids == greedy[:j + 1]


# ----------------------------------------------------------------------------- exact ids in training


def test_grpo_trains_the_sampled_ids_where_re_encoding_differs(tiny_model_dir, tmp_path):
    """The rollouts' reply ids are the rows `generate` sampled (through EOS), at least one of them
    re-encodes differently from its text, and the GRPO gradient is the policy gradient of the
    sampled ids' log-probs after the template's generation prompt, from a plain forward."""
    from charter.chat import IGNORE_INDEX, encode_chat
    from charter.train.grpo import GRPOConfig, GRPOTask
    from charter.train.rl_losses import group_advantages

    model, tok = _model(tiny_model_dir)
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    sampled = _capture_generate(model, eos)
    cfg = GRPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", group_size=4, kl_coef=0.0,
                     max_new_tokens=12, reward=NO_GUARD)
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(2)]
    task = GRPOTask(prompts, cfg, tok, LengthMod7(), None, False)
    loss, _ = task.micro_loss(model, prompts, {"replies": 8.0}, 1)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    task.calls -= 1  # the same seed: the same rollouts
    rolls, rewards = task.rollouts(model, prompts)
    assert Counter(tuple(r.reply_ids) for r in rolls) == Counter(sampled[:8])
    re_encoded = []
    for r in rolls:
        prompt = _prompt_ids(tok, r.messages)
        assert r.seq.input_ids == prompt + r.reply_ids
        assert r.seq.labels == [IGNORE_INDEX] * len(prompt) + r.reply_ids
        enc = encode_chat(tok, r.messages + [{"role": "assistant", "content": r.reply}])
        re_encoded.append([t for t in enc.labels if t != IGNORE_INDEX])
    assert any(e != r.reply_ids for e, r in zip(re_encoded, rolls)), "no reply re-encodes differently"
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4).float()
    assert adv.abs().sum() > 0
    mean_lp = torch.stack([_plain_logps(model, _prompt_ids(tok, r.messages), r.reply_ids).mean() for r in rolls])
    want = torch.autograd.grad(-(adv * mean_lp).sum() / 8, list(model.parameters()))
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, atol=1e-6)


def test_guided_replies_keep_their_sampled_ids_after_the_plain_prompt(tiny_model_dir, tmp_path):
    from charter.train.grpo import GRPOConfig, GRPOTask

    model, tok = _model(tiny_model_dir)
    sampled = _capture_generate(model, [tok.convert_tokens_to_ids("<|im_end|>")])
    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")
    cfg = GRPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", group_size=4, guided_share=0.5,
                     constitution=str(tmp_path / "c.yaml"), max_new_tokens=8, reward=NO_GUARD)
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(2)]
    rolls, _ = GRPOTask(prompts, cfg, tok, LengthMod7(), None, False, "You are kind.").rollouts(model, prompts)
    guided = [r for i, r in enumerate(rolls) if i % 4 >= 2]
    assert Counter(tuple(r.reply_ids) for r in guided) == Counter(sampled[4:8])  # the second generate call
    for r in guided:
        assert r.seq.input_ids == _prompt_ids(tok, r.messages) + r.reply_ids


def test_ppo_old_logps_are_a_fresh_forward_on_the_sampled_ids_and_the_ratio_is_one(tiny_model_dir):
    from transformers import AutoModelForTokenClassification

    from charter.train.ppo import PolicyWithValue, PPOConfig, PPOTask

    policy, tok = _model(tiny_model_dir)
    sampled = _capture_generate(policy, [tok.convert_tokens_to_ids("<|im_end|>")])
    value = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1)
    cfg = PPOConfig(model=str(tiny_model_dir), data="d", output_dir="o", max_new_tokens=10, reward=NO_GUARD)
    prompts = [[{"role": "user", "content": f"Tell me a story {i}?"}] for i in range(3)]
    task = PPOTask(prompts, cfg, tok, LengthMod7(), policy)  # the reference: the policy itself
    _, sums = task.micro_loss(PolicyWithValue(policy, value), prompts, {"replies": 3.0}, 1)
    ro = task.rollout
    old = ro.old_logps[ro.batch.input_order()]
    with torch.no_grad():
        fresh = torch.cat([_plain_logps(policy, _prompt_ids(tok, p), list(ids)) for p, ids in zip(prompts, sampled)])
    # the prompts have equal lengths, so generate's rows come in prompt order
    assert [len(ids) for ids in sampled] == ro.batch.tokens_per_seq().tolist()
    assert torch.allclose(old, fresh, atol=1e-5)
    assert sums["policy/approxkl_avg"] == 0.0 and sums["policy/clipfrac_avg"] == 0.0  # ratio exactly 1


# ----------------------------------------------------------------------------- resume


def _killed_then_resumed(train, make_cfg, tmp_path, kill_at: int):
    """(uninterrupted output, its metrics, resumed output, its metrics): the second run is killed
    after step `kill_at` (the checkpoint before it written) and run again to the end."""
    full = train(make_cfg(tmp_path / "full"))

    class Killed(Exception):
        pass

    def crash(step, row):
        if step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        train(make_cfg(tmp_path / "cut"), on_step=crash)
    resumed = train(make_cfg(tmp_path / "cut"))
    return full, _metrics(full), resumed, _metrics(resumed)


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # wall clock differs


def _same_weights(a, b, name="model.safetensors"):
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _prompts(tmp_path, n=8):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me a story {i}?"} for i in range(n)])
    return str(tmp_path / "p.jsonl")


def test_grpo_killed_between_steps_resumes_bit_exactly(tiny_model_dir, tmp_path):
    from charter.train.grpo import GRPOConfig, train_grpo

    def cfg(out):
        return GRPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(out), group_size=2,
                          batch_size=2, grad_accum=2, max_new_tokens=6, max_steps=3, save_steps=2, lr=1e-2,
                          kl_coef=0.1, reward=NO_GUARD)

    full, mf, resumed, mr = _killed_then_resumed(lambda c, **k: train_grpo(c, LengthMod7(), **k), cfg, tmp_path, 3)
    assert (tmp_path / "cut" / "checkpoints" / "step-2").exists()
    assert mr == mf and [r["step"] for r in mr] == [1, 2, 3]
    assert _same_weights(full, resumed)


def test_sdft_with_an_ema_teacher_resumes_bit_exactly(tiny_model_dir, tmp_path):
    from charter.train.sdft import SDFTConfig, train_sdft

    (tmp_path / "c.yaml").write_text("name: t\ntraits:\n  - text: Be kind to everyone.\n")

    def cfg(out):
        return SDFTConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(out),
                          constitution=str(tmp_path / "c.yaml"), teacher="ema", ema_decay=0.5, batch_size=2,
                          max_new_tokens=6, max_steps=3, save_steps=2, lr=1e-2)

    full, mf, resumed, mr = _killed_then_resumed(train_sdft, cfg, tmp_path, 3)
    assert mr == mf and _same_weights(full, resumed)


def test_ppo_killed_inside_a_rollout_resumes_bit_exactly(tiny_model_dir, tmp_path):
    """Killed after step 3 of 4 with ppo_epochs 2: the resumed step reuses the checkpointed
    rollout (and the adaptive beta) instead of sampling a new one."""
    from charter.train.ppo import VALUE_DIR, PPOConfig, train_ppo

    def cfg(out):
        return PPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(out), batch_size=2,
                         max_new_tokens=6, max_steps=4, ppo_epochs=2, save_steps=3, lr=1e-2, kl_coef=0.1,
                         kl_target=0.01, kl_horizon=10, reward=NO_GUARD)

    full, mf, resumed, mr = _killed_then_resumed(lambda c, **k: train_ppo(c, LengthMod7(), **k), cfg, tmp_path, 3)
    assert mr == mf and mf[3]["objective/scores"] == mf[2]["objective/scores"]
    assert mf[2]["objective/beta"] != mf[0]["objective/beta"]  # the adaptive beta moved and was restored
    assert _same_weights(full, resumed) and _same_weights(full / VALUE_DIR, resumed / VALUE_DIR)


def test_a_checkpoint_without_the_task_state_is_refused_in_one_line(tiny_model_dir, tmp_path):
    from charter.config import ConfigError
    from charter.train.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig(model=str(tiny_model_dir), data=_prompts(tmp_path), output_dir=str(tmp_path / "o"), group_size=2,
                     batch_size=2, max_new_tokens=4, max_steps=2, save_steps=1, reward=NO_GUARD)

    def crash(step, row):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_grpo(cfg, LengthMod7(), on_step=crash)
    for f in (tmp_path / "o" / "checkpoints" / "step-1").glob("task-rank0.*"):
        f.unlink()  # as an older Charter wrote it
    with pytest.raises(ConfigError, match=r"step-1: holds no training-task state .* set resume: false"):
        train_grpo(cfg, LengthMod7())
